"""Review 2026-12-04: the registry and the monitor against model directories, cards and pointers
that another writer (a hand edit, a half copy, an older release) left behind. Each test fails on
the code before that review."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from tests.conftest import tiny_card, tiny_classifier_onnx

from auditstream.errors import ModelNotFound, ModelRefused
from auditstream.registry import LIVE_FILE, ModelCard, ModelRegistry


@pytest.mark.parametrize("name", ["tiny\n", "tiny\n\n", "\ntiny"])
def test_a_model_name_with_a_newline_is_no_name(tmp_path: Path, name: str) -> None:
    """'$' matched before a final newline: 'tiny\\n' was published, listed and given a request
    topic that Kafka and the dead-letter replay refuse."""
    registry = ModelRegistry(tmp_path / "models")
    with pytest.raises(ValueError, match="model name"):
        registry.publish(tiny_card(name=name), tiny_classifier_onnx())
    card = json.loads(tiny_card().to_json())
    with pytest.raises(ValueError, match="card field name"):
        ModelCard.from_dict({**card, "name": name})
    assert registry.versions(name) == [] and registry.live_version(name) is None


@pytest.mark.parametrize("where, value", [
    ("confidence_sample", float("inf")), ("confidence_sample", 10**400), ("confidence_sample", -float("inf")),
    ("risk_coverage", float("inf")), ("risk_coverage", 10**400),
])  # fmt: skip
def test_a_card_number_no_float_holds_is_refused(where: str, value: object) -> None:
    """The check's 'finite' was lo <= v <= hi with infinite bounds: Infinity and 10**400 passed,
    and the monitor's drift test then raised OverflowError at every tick (and every restart)."""
    card = json.loads(tiny_card().to_json())
    reference = card.setdefault("reference", {})
    if where == "confidence_sample":
        reference["confidence_sample"] = [0.5, 0.9, value]
    else:
        card["risk_coverage"] = [{"threshold": 0.5, "coverage": 0.9, "risk": value}]
    with pytest.raises(ValueError, match=where):
        ModelCard.from_dict(card)


def _publish_in_thread(registry: ModelRegistry) -> list:
    done: list = []
    thread = threading.Thread(target=lambda: done.append(registry.publish(tiny_card(), tiny_classifier_onnx())),
                              daemon=True)
    thread.start()
    thread.join(60)
    return done


@pytest.mark.parametrize("leftover", ["folder without a card", "file", "dangling link"])
def test_publish_skips_a_number_something_else_holds(tmp_path: Path, leftover: str) -> None:
    """A half-copied version folder (no card.json) made publish retry its number for ever (the
    rename failed with ENOTEMPTY, read as "another writer took it"); a file or a dangling link
    of that name ended in a bare NotADirectoryError."""
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(tiny_card(), tiny_classifier_onnx())
    taken = registry.root / "tiny" / "2"
    if leftover == "folder without a card":
        taken.mkdir()
        (taken / "model.onnx").write_bytes(b"half a copy")
    elif leftover == "file":
        taken.write_text("not a version")
    else:
        taken.symlink_to(tmp_path / "nowhere")
    done = _publish_in_thread(registry)
    assert done and done[0].card.version == "3", "publish did not return"
    assert registry.versions("tiny") == ["1", "3"]


@pytest.mark.parametrize("spoil", ["not UTF-8", "a folder"])
def test_a_live_pointer_that_cannot_be_read_is_refused_in_one_line(tmp_path: Path, spoil: str) -> None:
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(tiny_card(), tiny_classifier_onnx())
    pointer = registry.root / "tiny" / LIVE_FILE
    if spoil == "not UTF-8":
        pointer.write_bytes(b"\xff\xfe1")
    else:
        pointer.mkdir()
    with pytest.raises(ModelRefused, match="live pointer cannot be read"):
        registry.live_version("tiny")
    with pytest.raises((ModelRefused, ModelNotFound)):
        registry.load("tiny")


def test_the_monitor_tracks_a_version_whose_card_is_refused_without_a_card(tmp_path: Path, caplog) -> None:
    """A card the registry refuses (a hand edit; a card an older release wrote) raised out of the
    tracker: every prediction of that version was dead-lettered and the first verdict stopped
    the monitor's outbox thread, at every restart."""
    from prometheus_client import CollectorRegistry

    from auditstream.kafka import Record
    from auditstream.settings import Settings
    from auditstream.wire import Prediction, Route
    from monitor.service import StatsHooks, ingest_batch
    from store import open_store

    registry = ModelRegistry(tmp_path / "models")
    registry.publish(tiny_card(), tiny_classifier_onnx())
    path = registry.root / "tiny" / "1" / "card.json"
    card = json.loads(path.read_text())
    card["triage"]["threshold"] = "0.9"
    path.write_text(json.dumps(card))
    settings = Settings(models_dir=tmp_path / "models", state_dir=tmp_path / "state")
    with open_store(f"sqlite:///{tmp_path / 'audit.db'}", create=True) as store:
        stats = StatsHooks(settings, store, metrics_registry=CollectorRegistry())
        for i in range(3):
            prediction = Prediction(request_id=f"r{i}", model="tiny", model_version="1", task="classification",
                                    output="a", confidence=0.95, route=Route.AUTO, reason="", qc_inclusion_prob=0.02,
                                    created_at_s=0.0)
            record = Record(settings.topic("predictions"), 0, i, f"r{i}".encode(), prediction.to_bytes())
            assert ingest_batch(store, settings, [record], 0.0, stats.observe_prediction) == [[]]
        stats.tick(store, 1.0)
    assert caplog.text.count("tracked without a card") == 1
