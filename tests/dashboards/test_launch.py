"""Dashboard options and the server command line (no server started here; see test_browser.py)."""

from __future__ import annotations

import pytest

from auditstream.errors import ConfigError
from auditstream.settings import redact_url
from dashboards.config import DashboardConfig, config_from_argv
from dashboards.launch import check_models_dir, check_xsrf_enabled, start_dashboard, streamlit_argv
from stack.broker import free_port


def test_config_round_trips_through_the_script_argv():
    config = DashboardConfig(store_url="postgresql://app:s3/cr@t@db/audit", lease_s=60.0, blind_qc=False, refresh_s=2.0)
    assert config_from_argv(config.to_argv()) == DashboardConfig(lease_s=60.0, blind_qc=False, refresh_s=2.0)
    assert not any("s3/cr@t" in a or "postgresql" in a for a in streamlit_argv(8765, config))  # never on a command line
    argv = streamlit_argv(8765, config)
    assert "--server.enableXsrfProtection=true" in argv and "--server.port=8765" in argv
    assert argv[argv.index("--") + 1:] == config.to_argv()
    with pytest.raises(ValueError):
        DashboardConfig(lease_s=1.0)
    with pytest.raises(ValueError):
        streamlit_argv(0, config)


def test_launcher_refuses_when_a_config_file_turns_xsrf_off(tmp_path, monkeypatch):
    check_xsrf_enabled()  # default: on
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text("[server]\nenableXsrfProtection = false\n")
    monkeypatch.chdir(tmp_path)  # Streamlit reads ./.streamlit/config.toml
    try:
        with pytest.raises(ConfigError, match="XSRF"):
            check_xsrf_enabled()
    finally:
        monkeypatch.undo()
        check_xsrf_enabled()  # re-read without it, so later tests see the default again


@pytest.mark.slow
def test_auditstream_dashboard_serves_prints_its_url_and_stops_on_sigterm(tmp_path):
    """SIGTERM (a service manager) stops the command with 128 + 15 and its Streamlit server with it."""
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from stack.broker import free_port

    from store import open_store

    open_store(f"sqlite:///{tmp_path / 'audit.db'}", create=True).close()  # the dashboard never creates one
    port = free_port()
    command = [sys.executable, "-m", "auditstream.cli", "dashboard", "--port", str(port),
               "--store-url", f"sqlite:///{tmp_path / 'audit.db'}", "--models-dir", str(tmp_path / "models")]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()  # printed once the server answers
        assert f"http://127.0.0.1:{port}" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert b"<html" in response.read().lower()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 128 + signal.SIGTERM
        with pytest.raises(urllib.error.URLError):  # the server went with it
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5).close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def test_printed_store_urls_hide_passwords():
    """The dashboard prints store URLs through the one redaction of auditstream/settings.py,
    which also handles passwords with / @ # and secret query parameters."""
    assert redact_url("postgresql://app:s3cret@db:5432/audit") == "postgresql://app:***@db:5432/audit"
    assert redact_url("postgresql://app:s3/cr@t#x@db/audit?sslpassword=k") == "postgresql://app:***@db/audit?sslpassword=***"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.parametrize("where", ["option", "environment"])
def test_a_models_dir_that_is_a_file_is_refused_before_the_server_starts(tmp_path, monkeypatch, capsys, where):
    import signal

    from auditstream.cli import main

    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # run_dashboard's SIGTERM hook stays out of pytest
    argv = ["dashboard", "--port", str(free_port()), "--store-url", f"sqlite:///{tmp_path / 'audit.db'}"]
    if where == "option":
        argv += ["--models-dir", str(tmp_path / "afile")]
    else:
        monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(tmp_path / "afile"))
    assert main(argv) == 2  # before any server starts
    err = capsys.readouterr().err
    name = "--models-dir" if where == "option" else "AUDITSTREAM_MODELS_DIR"
    assert err.strip().splitlines() == [f"auditstream: error: invalid {name}={str(tmp_path / 'afile')!r}: expected a "
                                        "directory for the model registry (or a path not made yet), not a file"]
    assert check_models_dir(str(tmp_path / "not-made-yet")) and check_models_dir(str(tmp_path))
    with pytest.raises(ConfigError, match="--models-dir"):
        start_dashboard(free_port(), f"sqlite:///{tmp_path / 'audit.db'}", DashboardConfig(models_dir=str(tmp_path / "afile")))
