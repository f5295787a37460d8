"""Starting the dashboard server: ``auditstream dashboard``, the demo and the browser test all
come through :func:`start_dashboard` or :func:`streamlit_argv`, so the server always runs with
the same security options.

Security options (``SERVER_OPTIONS``): XSRF protection on (and :func:`check_xsrf_enabled`
refuses to launch when a config file or environment variable turned it off — the app checks
again when it renders), CORS protection on, no usage statistics, no tracebacks in the browser,
no uploads, a minimal toolbar, and no file watcher (a production server does not rerun on edits).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from auditstream.errors import AuditstreamError, ConfigError
from dashboards.config import DashboardConfig

APP_PATH = Path(__file__).with_name("app.py")
SERVER_OPTIONS = {
    "server.headless": "true",
    "server.enableXsrfProtection": "true",
    "server.enableCORS": "true",
    "server.fileWatcherType": "none",
    "server.runOnSave": "false",
    "server.maxUploadSize": "1",
    "browser.gatherUsageStats": "false",
    "client.showErrorDetails": "none",
    "client.toolbarMode": "minimal",
    "global.developmentMode": "false",
}


def check_xsrf_enabled() -> None:
    """Refuse to launch when a Streamlit config file (``~/.streamlit/config.toml`` or
    ``./.streamlit/config.toml``) disables XSRF protection. The launcher's own flag would win
    over the file, but a file that turns it off is a mistake worth stopping for; a
    ``STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION`` variable is overridden by the flag, and a server
    started some other way is refused by the app itself."""
    from streamlit import config

    config.get_config_options(force_reparse=True)
    if not config.get_option("server.enableXsrfProtection"):
        raise ConfigError("server.enableXsrfProtection", False,
                          "true: the audit dashboard writes verdicts and must not run without XSRF protection "
                          "(remove server.enableXsrfProtection = false from .streamlit/config.toml)")


class DashboardNotStarted(AuditstreamError, RuntimeError):
    """The dashboard server exited, or did not answer, before it served its health page."""


def check_port(port: object) -> int:
    """``port`` if it is a TCP port a server can listen on (1..65535), else :class:`ConfigError`."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError("--port", port, "a TCP port in 1..65535")
    return port


def check_address(address: object) -> str:
    """``address`` if it is an IP address or a host name this machine resolves, else
    :class:`ConfigError` (Streamlit would start and die on it with a traceback in its log)."""
    if not isinstance(address, str) or not address or len(address) > 253 or address != address.strip():
        raise ConfigError("--address", address, "an IP address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
    try:
        ipaddress.ip_address(address)
        return address
    except ValueError:
        pass
    try:
        socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise ConfigError("--address", address, f"an IP address or a host name that resolves ({e})") from None
    return address


def check_models_dir(path: object, name: str = "--models-dir") -> str:
    """``path`` if it is a directory or does not exist yet (the registry is made at the first
    publish), else :class:`ConfigError`: a file there failed in every browser tab instead."""
    if not isinstance(path, (str, os.PathLike)) or (os.path.exists(path) and not os.path.isdir(path)):
        raise ConfigError(name, path if isinstance(path, str) else str(path),
                          "a directory for the model registry (or a path not made yet), not a file")
    return os.fspath(path)


def streamlit_argv(port: int, config: DashboardConfig, address: str = "127.0.0.1") -> list[str]:
    """The command line that serves the app on ``address:port`` with ``config``."""
    port, address = check_port(port), check_address(address)
    options = {**SERVER_OPTIONS, "server.port": str(port), "server.address": address}
    flags = [f"--{k}={v}" for k, v in options.items()]
    return [sys.executable, "-m", "streamlit", "run", str(APP_PATH), *flags, "--", *config.to_argv()]


@dataclass
class DashboardProcess:
    """A running dashboard server; ``stop()`` ends it (and is safe to call twice)."""

    process: subprocess.Popen
    url: str

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "DashboardProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_dashboard(
    port: int,
    store_url: str,
    config: DashboardConfig | None = None,
    address: str = "127.0.0.1",
    wait_s: float = 60.0,
    log_path: Path | None = None,
    inherit_output: bool = False,
) -> DashboardProcess:
    """Start the dashboard on ``address:port`` against ``store_url``; returns once it answers.

    The demo calls this and prints ``.url``. ``config`` supplies the other options (its
    ``store_url`` is replaced by the argument). The server's log goes to ``log_path``, or to this
    process's stderr with ``inherit_output``, else nowhere.
    """
    check_xsrf_enabled()
    base = config or DashboardConfig()
    if base.models_dir:  # empty: the child's AUDITSTREAM_MODELS_DIR, which the CLI checked
        check_models_dir(base.models_dir)
    config = DashboardConfig(**{**base.__dict__, "store_url": store_url})
    # Inherited output goes to stderr: this process's stdout carries only what the caller prints (the URL).
    log = open(log_path, "ab") if log_path else sys.stderr if inherit_output else subprocess.DEVNULL
    try:
        # The store URL (it may hold a password) travels in the environment, never on the command line.
        env = {**os.environ, "AUDITSTREAM_STORE_URL": config.store_url} if config.store_url else None
        process = subprocess.Popen(streamlit_argv(port, config, address), stdout=log, stderr=subprocess.STDOUT, env=env)
    finally:
        if log_path:
            log.close()  # the child holds its own copy
    url = f"http://{address}:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DashboardNotStarted(f"dashboard exited with code {process.returncode} before answering on {url}"
                                      + (f"; see {log_path}" if log_path else " (its log is above)")
                                      + "; is the port free and the address one of this machine's?")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return DashboardProcess(process, url)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    DashboardProcess(process, url).stop()
    raise DashboardNotStarted(f"dashboard did not answer on {url} within {wait_s:.0f} s")
