"""The registry's LIVE pointer: which version `auditstream serve` picks when none is given."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import tiny_card, tiny_classifier_onnx

from auditstream.errors import ModelNotFound, ModelRefused
from auditstream.registry import LIVE_FILE, ModelRegistry


def registry_with_versions(tmp_path: Path, n: int) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "models")
    for seed in range(n):
        registry.publish(tiny_card(), tiny_classifier_onnx(seed=seed))
    return registry


def test_without_a_pointer_the_latest_version_is_live(tmp_path: Path) -> None:
    registry = registry_with_versions(tmp_path, 2)
    assert registry.live_version("tiny") is None and registry.default_version("tiny") == "2"
    assert registry.load("tiny").card.version == "2"


def test_the_pointer_wins_over_newer_versions_and_moves_atomically(tmp_path: Path) -> None:
    registry = registry_with_versions(tmp_path, 1)
    registry.set_live("tiny", "1")
    registry.publish(tiny_card(), tiny_classifier_onnx(seed=5))  # a candidate: published, not live
    assert registry.load("tiny").card.version == "1" and registry.card("tiny").version == "1"
    assert registry.load("tiny", "2").card.version == "2"  # an explicit version still loads
    registry.set_live("tiny", "2")
    assert registry.load("tiny").card.version == "2"
    assert (registry.root / "tiny" / LIVE_FILE).read_text() == "2\n"
    assert not [p for p in (registry.root / "tiny").iterdir() if p.name.startswith(".live-")]
    assert registry.names() == ["tiny"] and registry.versions("tiny") == ["1", "2"]


def test_pointing_at_a_missing_version_is_refused(tmp_path: Path) -> None:
    registry = registry_with_versions(tmp_path, 1)
    with pytest.raises(ModelNotFound):
        registry.set_live("tiny", "7")
    (registry.root / "tiny" / LIVE_FILE).write_text("7\n")  # edited by hand
    with pytest.raises(ModelRefused, match="live pointer names version '7'"):
        registry.load("tiny")
