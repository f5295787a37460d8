"""``serve`` says once, at start, which Kafka it joined: a real cluster's bootstrap servers, or
the embedded broker because AUDITSTREAM_BOOTSTRAP_SERVERS is empty (a misspelt variable would
otherwise serve the embedded broker unseen)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from auditstream.settings import Settings
from serving import app as app_module


@pytest.mark.parametrize("bootstrap, says", [
    ("kafka-1:9092,kafka-2:9092", "on Kafka at kafka-1:9092,kafka-2:9092 (AUDITSTREAM_BOOTSTRAP_SERVERS)"),
    ("", "on Kafka at 127.0.0.1:29092 (the embedded broker of"),
])
def test_serve_logs_the_bootstrap_servers_it_joined(monkeypatch, caplog, bootstrap, says) -> None:
    card = SimpleNamespace(name="digits", version="3")
    monkeypatch.setattr(app_module.ModelRegistry, "from_settings",
                        lambda settings: SimpleNamespace(load=lambda *a: SimpleNamespace(card=card)))
    monkeypatch.setattr(app_module, "check_servable", lambda model: None)
    monkeypatch.setattr(app_module, "load_session", lambda *a, **k: SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(app_module, "ServeMetrics", lambda *a, **k: None)
    stats = SimpleNamespace(records_in=0, batches=0, commits=0)
    fake = SimpleNamespace(bootstrap=bootstrap or "127.0.0.1:29092", request_topic="auditstream.requests.digits",
                           loop=SimpleNamespace(install_signal_handlers=lambda: None), run=lambda: stats,
                           close=lambda: None)
    monkeypatch.setattr(app_module, "ServeApp", lambda *a, **k: fake)
    with caplog.at_level(logging.INFO, logger="serving.app"):
        app_module.serve(Settings(bootstrap_servers=bootstrap, qc_salt="s"), "digits")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving digits")]
    assert len(lines) == 1 and says in lines[0], lines
