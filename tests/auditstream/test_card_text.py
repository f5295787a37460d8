"""Every string of a model card, at any depth and keys included, must encode as UTF-8. A card.json
label written as the JSON escape ``"\\ud800"`` reads as a lone surrogate: the card loaded, the
consumer answered with that label, and every record it wrote (prediction, decision, audit item)
was refused by its reader's decoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.auditstream.test_registry_card import set_path
from tests.conftest import tiny_card, tiny_classifier_onnx

from auditstream.errors import ModelRefused
from auditstream.registry import CARD_FILE, ModelCard, ModelRegistry
from auditstream.text import is_utf8

SHIPPED = {p.parent.name: json.loads(p.read_text()) for p in
           sorted((Path(__file__).resolve().parents[2] / "stack" / "demo_models").glob("*/card.json"))}
LONE = "\ud800"


@pytest.mark.parametrize(("path", "value", "named"), [
    ("labels.3", LONE, r"labels\[3\]"),
    ("labels.0", "cat" + "\udfff", r"labels\[0\]"),
    ("triage.method", f"platt {LONE}", r"triage\.method"),
    ("extra.vocabulary", ["ok", ["deep", LONE]], r"extra\.vocabulary\[1\]\[1\]"),
    ("preprocessing.note", LONE, r"preprocessing\.note"),
    ("training.args", {"data": {"path": LONE}}, r"training\.args\.data\.path"),
    ("inputs.0.name", LONE, r"inputs\[0\]\.name"),
    ("metrics", {LONE: 1.0}, r"metrics key"),
    ("sha256", LONE, "sha256"),
])
def test_a_string_that_is_not_utf8_is_refused_naming_its_field(path: str, value: Any, named: str) -> None:
    obj = set_path(json.loads(tiny_card().to_json()), path, value)
    with pytest.raises(ValueError, match=f"card field ({named}).*UTF-8"):
        ModelCard.from_dict(obj)


def test_the_registry_refuses_such_a_card_file(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    model = registry.publish(tiny_card(), tiny_classifier_onnx())
    path = model.directory / CARD_FILE
    card = json.loads(path.read_text())
    card["labels"] = [LONE] * len(card["labels"])
    path.write_text(json.dumps(card))  # json.dumps writes the escape "\ud800"
    assert "\\ud800" in path.read_text()
    with pytest.raises(ModelRefused, match=r"labels\[0\] is str '\\ud800'.*UTF-8"):
        registry.load(tiny_card().name)


def test_publish_refuses_a_card_built_in_python_with_a_lone_surrogate(tmp_path: Path) -> None:
    import dataclasses

    card = dataclasses.replace(tiny_card(), labels=["a"] * 9 + [LONE])
    with pytest.raises(ValueError, match=r"labels\[9\]"):
        ModelRegistry(tmp_path).publish(card, tiny_classifier_onnx())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_card_still_loads(name: str) -> None:
    ModelCard.from_dict(SHIPPED[name])


# Text with and without lone surrogates (hypothesis' default text has none).
TEXT = st.lists(st.one_of(st.characters(categories=["Cs"], codec=None), st.characters(categories=["L", "N", "P", "Zs"]),
                         st.sampled_from("aé€😀")), max_size=4).map("".join)  # st.text drops surrogates
JSON = st.recursive(st.one_of(TEXT, st.integers(-5, 5), st.none()),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
                    max_leaves=8)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(SHIPPED)), where=st.sampled_from(["extra", "training", "metrics", "preprocessing"]),
       value=JSON)
def test_property_a_card_loads_only_when_all_its_text_encodes_as_utf8(name: str, where: str, value: Any) -> None:
    obj = set_path(SHIPPED[name], f"{where}.fuzz", value)
    if all(is_utf8(s) for s in _strings(value)):
        ModelCard.from_dict(obj)
    else:
        with pytest.raises(ValueError, match="UTF-8"):
            ModelCard.from_dict(obj)

