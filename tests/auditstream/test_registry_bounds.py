"""Review 2026-12-05: what a card's JSON may cost to read, the numbers publish may give, and
version directories that are symlinks. Which tests fail on the code before that review is said
in each."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest
from tests.conftest import tiny_card, tiny_classifier_onnx

from auditstream.errors import ModelRefused, PublishFailed
from auditstream.model_card import MAX_CARD_CONTAINERS, MAX_CARD_VALUES, MAX_SAMPLE, _check_text, loads_card
from auditstream.registry import CARD_FILE, ModelRegistry


def _published(tmp_path: Path) -> tuple[ModelRegistry, dict, Path]:
    registry = ModelRegistry(tmp_path / "models")
    published = registry.publish(tiny_card(), tiny_classifier_onnx())
    path = published.directory / CARD_FILE
    return registry, json.loads(path.read_text()), path


def _with_extra(card: dict, items: str, n: int) -> bytes:
    """The card with ``extra: {"x": [items, items, ...]}``, built as bytes (no list of n objects)."""
    head = json.dumps({**card, "extra": {"x": "@"}}).encode()
    before, after = head.split(b'"@"')
    return before + b"[" + b",".join([items.encode()] * n) + b"]" + after


def test_a_card_of_millions_of_empty_objects_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """Fails on the old code: 21 million "{}" under the 64 MiB cap took 4.9 GiB and 164 s. Here
    two million: refused from a byte count, in well under a second."""
    registry, card, path = _published(tmp_path)
    path.write_bytes(_with_extra(card, "{}", 2 * MAX_CARD_CONTAINERS))
    start = time.monotonic()
    with pytest.raises(ModelRefused, match=f"JSON arrays and objects, over the {MAX_CARD_CONTAINERS:,}"):
        registry.card("tiny", "1")
    assert time.monotonic() - start < 5


def test_a_card_of_too_many_values_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """Fails on the old code (which read it whole, and accepted it): six million strings in `extra`."""
    registry, card, path = _published(tmp_path)
    path.write_bytes(_with_extra(card, '"ab"', MAX_CARD_VALUES + 10))
    with pytest.raises(ModelRefused, match=f"JSON values, over the {MAX_CARD_VALUES:,}"):
        registry.card("tiny", "1")


def test_the_largest_valid_card_is_within_the_bounds() -> None:
    """A risk-coverage curve and a confidence sample both at their limits: counted, not refused."""
    raw = json.dumps({**json.loads(tiny_card().to_json()),
                      "risk_coverage": [{"threshold": 0.5, "coverage": 0.5, "risk": 0.01}] * MAX_SAMPLE,
                      "reference": {"confidence_sample": [0.5] * MAX_SAMPLE}}).encode()
    assert len(loads_card(raw)["risk_coverage"]) == MAX_SAMPLE


def test_checking_a_cards_text_builds_no_string_per_value() -> None:
    """Fails on the old code: _check_text held a path string for every value waiting on its stack
    (for 21 million values, most of the 4.9 GiB). Now what it allocates does not grow with them."""
    card = {"extra": {"x": [{"a": "b"} for _ in range(200_000)], "y": ["ab"] * 200_000}}
    tracemalloc.start()
    try:
        _check_text(card)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak:,} bytes to check 400,000 values"


@pytest.mark.parametrize(("obj", "named"), [
    ({"extra": {"x": [{}, {"a": ["ok", {"b": "\ud800"}]}]}}, r"extra\.x\[1\]\.a\[1\]\.b"),
    ({"extra": {"x": [[], ("ok", "\udfff")]}}, r"extra\.x\[1\]\[1\]"),
    ({"extra": {"\ud800": 1}}, r"extra key"),
    ({"\ud800": 1}, r"\(the whole card\) key"),
])
def test_a_refused_string_is_still_named_by_its_path(obj: dict, named: str) -> None:
    """Not a regression test (passes on the old code): the path, now spelled only on refusal."""
    with pytest.raises(ValueError, match=f"card field {named} "):
        _check_text(obj)


def test_publish_refuses_past_the_largest_version_in_one_line(tmp_path: Path) -> None:
    """Fails on the old code: a stray 999999999999999999 made publish write version 10**18 (19
    digits, which the registry neither lists nor loads), and the next publish blamed "too many
    writers" after 100 tries."""
    registry = ModelRegistry(tmp_path / "models")
    (registry.root / "tiny" / "999999999999999999").mkdir(parents=True)
    with pytest.raises(PublishFailed, match="already holds the largest version number .* if it is a stray entry, "
                                            "remove it"):
        registry.publish(tiny_card(), tiny_classifier_onnx())
    assert sorted(p.name for p in (registry.root / "tiny").iterdir()) == ["999999999999999999"]  # nothing written


def test_publish_ignores_entries_that_are_no_version(tmp_path: Path) -> None:
    """Not a regression test (passes on the old code): names of 19 digits, with a sign or not
    ASCII digits are no version, and do not move the next number."""
    registry = ModelRegistry(tmp_path / "models")
    for name in ("1000000000000000000", "+5", "٣", "12a", ".publish-x"):
        (registry.root / "tiny" / name).mkdir(parents=True)
    assert registry.publish(tiny_card(), tiny_classifier_onnx()).card.version == "1"
    (registry.root / "tiny" / "999999999999999998").mkdir()
    assert registry.publish(tiny_card(), tiny_classifier_onnx()).card.version == "999999999999999999"
    assert registry.versions("tiny")[-1] == "999999999999999999"


def test_a_symlinked_version_directory_is_followed_and_still_checked(tmp_path: Path) -> None:
    """Documents the chosen behaviour (passes on the old code): a version directory may be a link
    outside the registry (docs/serving.md, auditstream.registry), and what it leads to passes every
    check -- a link to another model's or version's directory is refused by its card."""
    registry = ModelRegistry(tmp_path / "models")
    elsewhere = ModelRegistry(tmp_path / "elsewhere")
    target = elsewhere.publish(tiny_card(), tiny_classifier_onnx()).directory
    (registry.root / "tiny").mkdir(parents=True)
    (registry.root / "tiny" / "1").symlink_to(target)
    assert registry.versions("tiny") == ["1"] and registry.load("tiny").card.version == "1"
    (registry.root / "tiny" / "2").symlink_to(target)  # version 1's directory under the name 2
    with pytest.raises(ModelRefused, match="card says tiny version 1 but lives in tiny/2"):
        registry.load("tiny", "2")



def test_a_registry_from_the_settings_holds_their_model_limits(tmp_path: Path) -> None:
    """Review 2026-12-05: certify, promote, the monitor and the benches made their registry from
    ``settings.models_dir`` alone, so AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES and
    AUDITSTREAM_MODEL_CHECK_TIMEOUT_S held in serve only."""
    from auditstream.settings import Settings

    settings = Settings(models_dir=tmp_path / "models", max_model_constant_bytes=4096, model_check_timeout_s=7.5)
    registry = ModelRegistry.from_settings(settings)
    assert (registry.root, registry.max_constant_bytes, registry.check_timeout_s) == (tmp_path / "models", 4096, 7.5)
    registry.publish(tiny_card(), tiny_classifier_onnx())
    with pytest.raises(ModelRefused, match="MAX_MODEL_CONSTANT_BYTES|max_model_constant_bytes|budget"):
        ModelRegistry.from_settings(Settings(models_dir=tmp_path / "models", max_model_constant_bytes=64)).load("tiny")


def test_every_registry_made_from_settings_is_made_with_their_limits() -> None:
    """The class, not the case: a registry of ``settings.models_dir`` built by hand drops the limits."""
    import re

    root = Path(__file__).resolve().parents[2]
    pattern = re.compile(r"ModelRegistry\(\s*[\w.()]*settings[\w.()]*\.models_dir", re.IGNORECASE)
    offenders = [f"{path.relative_to(root)}:{text.count(chr(10), 0, m.start()) + 1}"
                 for package in ("auditstream", "dashboards", "monitor", "qc", "serving", "stack", "store", "training")
                 for path in sorted((root / package).rglob("*.py"))
                 for text in [path.read_text(encoding="utf-8")] for m in pattern.finditer(text)]
    assert offenders == [], "use ModelRegistry.from_settings(settings): " + ", ".join(offenders)
