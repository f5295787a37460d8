"""Model cards are checked field by field when they are read (``ModelCard.from_dict``, so
:meth:`ModelRegistry.load` and :meth:`ModelRegistry.card`) and before they are written
(:meth:`ModelRegistry.publish`): a field of the wrong type or out of range is refused with a
message naming the field, what it holds and what it must hold -- not passed on to fail every
record at triage (a ``"0.5"`` threshold passed every start-up check, then each record died with a
TypeError). Every shipped card and every card the tests build still loads unchanged."""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from auditstream.errors import ModelRefused
from auditstream.finite_json import nulled
from auditstream.registry import CARD_FILE, ModelCard, ModelRegistry, TriageSpec
from auditstream.wire import TaskKind
from tests.conftest import TINY_MODEL, tiny_card, tiny_classifier_onnx

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "stack" / "demo_models").glob("*/card.json"))


def card_dict() -> dict[str, Any]:
    return json.loads(tiny_card().to_json())


def set_path(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``obj`` with the field at ``path`` ("triage.threshold", "inputs.0.shape.1") set."""
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    target: Any = obj
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return obj


def shown(path: str) -> str:
    """How the error names a field: ``inputs[0].shape[1]`` for ``inputs.0.shape.1``."""
    out = ""
    for key in path.split("."):
        out += f"[{key}]" if key.isdigit() else (f".{key}" if out else key)
    return out


# field -> wrong values, each refused with a message naming the field
WRONG: dict[str, list[Any]] = {
    "name": [7, None, "", "Tiny Model", ["tiny"]],
    "version": [1, 1.0, None, "v1", "", "-1", "1" * 19, "9" * 5000],
    "task": [1, None, "poetry", ["classification"], {"kind": "classification"}],
    "sha256": [123, None, ["x"]],
    "inputs": [None, {}, "image", [["image", "float32", [None, 8, 8]]]],
    "inputs.0": [None, "image", {"name": "image", "dtype": "float32"},
                 {"name": "image", "dtype": "float32", "shape": [None, 8, 8], "layout": "NHW"}],
    "inputs.0.name": [None, 3, "", "x" * 257],
    "inputs.0.dtype": [None, 32, "float", "tensor(float)", "bfloat16", "object"],
    "inputs.0.shape": [None, "[None, 8, 8]", 8, {"0": None},
                       [None, 10**6, 10**6],  # 10**12 elements: serving would allocate warm-up buffers of it
                       [None, 8192, 8192, 2], [8, 4096, 4096],  # 2**27 elements; a fixed batch counts too
                       [None] + [1] * 17],  # rank 18
    "inputs.0.shape.1": ["8", 8.0, -8, 0, True, [8], 2**40, 2**63],
    "outputs": [None, {"probs": [None, 10]}, [{"name": "probs", "dtype": "float32", "shape": [None, 10]}] * 2],
    "outputs.0.name": [None, 0],
    "outputs.0.dtype": ["f32", None],
    "outputs.0.shape.1": [10.5, "10", False],
    "triage": [None, 0.5, "0.5", [0.5], {}],
    "triage.threshold": ["0.5", None, True, float("nan"), float("inf"), -0.1, 50, [0.5]],
    "triage.confidence_kind": [None, 1, "", "k" * 65],
    "triage.target_risk": ["0.02", -0.01, 1.5, float("nan"), True],
    "triage.delta": ["0.05", 2, float("inf")],
    "triage.certified_risk": ["x", -1],
    "triage.coverage": [1.01, "all"],
    "triage.method": [None, 3, "m" * 4097],
    "triage.safe_action": ["1", -1, 1.5, True, [1]],
    "labels": [None, "0123456789", {"0": "zero"}, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], ["0", None], ["x" * 1025],
               ["0"] * 100_001],
    "preprocessing": [None, "none", []],
    "metrics": [None, [], 0.9],
    "calibration": ["temperature", []],
    "reference": [[], "x"],
    "reference.confidence_sample": ["0.9", [0.9, "0.8"], [0.9, float("nan")], {"0": 0.9}],
    "risk_coverage": [{}, "x", [[1.0, 0.5, 0.0]], [{"threshold": "1.0", "coverage": 0.5, "risk": 0.0}],
                      [{"threshold": float("nan"), "coverage": 0.5, "risk": 0.0}],
                      [{"coverage": 0.5, "risk": 0.0}], [{"threshold": 0.9, "coverage": 0.5}]],  # the chart reads all three
    "training": [None, "args"],
    "extra": [None, ["certificate"]],
}


def base_for(path: str) -> dict[str, Any]:
    """The tiny card, with a drift reference so that its sample can be made wrong too."""
    return {**card_dict(), "reference": {"confidence_sample": [0.9, 0.95], "n": 2}}


CASES = [(path, value) for path, values in WRONG.items() for value in values]


@pytest.mark.parametrize("path,value", CASES, ids=[f"{p}={v!r}"[:80] for p, v in CASES])
def test_a_wrong_field_is_refused_naming_it(path: str, value: Any) -> None:
    with pytest.raises(ValueError, match="card field ") as info:
        ModelCard.from_dict(set_path(base_for(path), path, value))
    message = str(info.value)
    # the field (or, for a wrong element, its list: "inputs[0]" for an extra key in it), what it must be
    assert shown(path) in message or shown(path.rsplit(".", 1)[0]) in message, message
    assert "must" in message, message


@pytest.mark.parametrize("field", ["name", "version", "task", "inputs", "outputs", "triage", "triage.threshold"])
def test_a_missing_required_field_is_refused_naming_it(field: str) -> None:
    obj = card_dict()
    if "." in field:
        del obj["triage"]["threshold"]
    else:
        del obj[field]
    with pytest.raises(ValueError, match=f"card field {field} is missing"):
        ModelCard.from_dict(obj)


def test_the_string_threshold_of_the_reproducer_is_refused_at_load(tmp_path: Path) -> None:
    """misc.py item 3: a card whose triage.threshold is "0.5" passed registry.load,
    check_servable and the warm-up; every record then failed at triage with a TypeError."""
    registry = ModelRegistry(tmp_path / "models")
    published = registry.publish(tiny_card(), tiny_classifier_onnx())
    obj = json.loads((published.directory / CARD_FILE).read_text())
    obj["triage"]["threshold"] = "0.5"
    (published.directory / CARD_FILE).write_text(json.dumps(obj))
    with pytest.raises(ModelRefused, match=r"model card does not parse: card field triage\.threshold is str '0\.5'; "
                                           r"it must be a finite number in \[0, 2\]"):
        registry.load(TINY_MODEL)


def test_publish_refuses_a_card_that_load_would_refuse(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    with pytest.raises(ValueError, match=r"card field triage\.threshold is str '0\.5'"):
        registry.publish(TriageCard.with_threshold("0.5"), tiny_classifier_onnx())
    assert registry.versions(TINY_MODEL) == []  # nothing written


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_publish_refuses_a_card_holding_a_non_finite_number_naming_the_field(tmp_path: Path, value: Any) -> None:
    """card.json held NaN (metrics.ope of an undefined estimate): not JSON, and jq, JavaScript or
    Postgres refuse the whole card. The writer refuses it, naming the field, before writing."""
    from auditstream.finite_json import NonFiniteJSON

    card = ModelCard(**{**tiny_card().__dict__, "metrics": {"ope": {"wis": {"value": 1.0, "lower": value}}}})
    with pytest.raises(NonFiniteJSON, match=r"metrics\.ope\.wis\.lower is -?(nan|inf), which is not JSON"):
        card.to_json()
    registry = ModelRegistry(tmp_path / "models")
    with pytest.raises(NonFiniteJSON, match=r"metrics\.ope\.wis\.lower"):
        registry.publish(card, tiny_classifier_onnx())
    assert registry.versions(TINY_MODEL) == []  # nothing written
    null = ModelCard(**{**tiny_card().__dict__, "metrics": {"ope": {"wis": {"lower": None, "no_interval": "why"}}}})
    assert json.loads(null.to_json())["metrics"]["ope"]["wis"]["lower"] is None


class TriageCard:
    @staticmethod
    def with_threshold(threshold: Any) -> ModelCard:
        card = tiny_card()
        return ModelCard(**{**card.__dict__, "triage": TriageSpec(threshold=threshold)})


@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_every_shipped_card_loads_unchanged(path: Path) -> None:
    obj = json.loads(path.read_text())
    card = ModelCard.from_dict(obj)
    assert json.loads(card.to_json()) == obj  # nothing coerced, nothing dropped


@pytest.mark.parametrize("card", [tiny_card(), tiny_card("other", classes=3, side=4, threshold=0.0),
                                  TriageCard.with_threshold(1.0000000000000002), TriageCard.with_threshold(1)])
def test_cards_the_project_builds_round_trip(card: ModelCard) -> None:
    assert ModelCard.from_dict(json.loads(card.to_json())) == card


def test_unknown_top_level_fields_are_still_ignored() -> None:
    """Forward compatibility: a newer card's extra top-level field does not stop an older server."""
    assert ModelCard.from_dict({**card_dict(), "owner": "team-a"}) == tiny_card()


def test_the_known_dtypes_are_numpy_dtypes_onnx_maps_to() -> None:
    from auditstream.registry import CARD_DTYPES

    onnx_dtypes = set()
    for elem_type in onnx.TensorProto.DataType.values():
        try:
            onnx_dtypes.add(str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))))
        except (KeyError, ValueError, TypeError):
            continue
    assert CARD_DTYPES <= onnx_dtypes and all(str(np.dtype(d)) == d for d in CARD_DTYPES)
    assert {"float32", "uint8", "int64"} <= CARD_DTYPES


def test_every_task_kind_is_a_valid_task() -> None:
    for kind in TaskKind:
        assert ModelCard.from_dict({**card_dict(), "task": kind.value}).task is kind


# -- properties ------------------------------------------------------------------------------

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                         st.text(max_size=8))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(path_value=st.sampled_from(CASES))
def test_property_one_wrong_field_is_refused_naming_it(path_value: tuple[str, Any]) -> None:
    path, value = path_value
    try:
        ModelCard.from_dict(set_path(base_for(path), path, value))
    except ValueError as e:
        assert shown(path) in str(e) or shown(path.rsplit(".", 1)[0]) in str(e)
    else:
        pytest.fail(f"{path}={value!r} was accepted")


FIELDS = sorted(WRONG)


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(FIELDS), value=JSON_VALUES)
@example(path="metrics", value={"": math.inf})
@example(path="metrics", value={"ope": {"wis": math.nan}})
def test_property_any_json_in_any_field_is_accepted_or_refused_as_a_value_error(path: str, value: Any) -> None:
    """Whatever JSON lands in a field, reading the card either works (and the card writes back
    to the same JSON, a NaN or infinity in a free-form field as null) or raises ValueError naming
    that field; never TypeError, KeyError, ... (``{'': inf}`` in metrics once loaded, and then
    to_json refused to write the card back)."""
    obj = set_path(base_for(path), path, value)
    try:
        card = ModelCard.from_dict(obj)
    except ValueError as e:
        assert shown(path) in str(e) or shown(path.rsplit(".", 1)[0]) in str(e), (path, value, str(e))
        return
    assert json.loads(card.to_json()) == json.loads(json.dumps(nulled(obj)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path_value=st.sampled_from(CASES))
def test_property_registry_load_only_ever_raises_model_refused(path_value: tuple[str, Any]) -> None:
    """Through the registry, a wrong field is a ModelRefused naming it (what `serve` turns into one
    line and exit code 2)."""
    path, value = path_value
    with tempfile.TemporaryDirectory() as root:
        registry = ModelRegistry(Path(root) / "models")
        published = registry.publish(tiny_card(), tiny_classifier_onnx())
        obj = json.loads((published.directory / CARD_FILE).read_text())
        obj = set_path({**obj, "reference": {"confidence_sample": [0.9]}}, path, value)
        (published.directory / CARD_FILE).write_text(json.dumps(obj))
        with pytest.raises(ModelRefused) as info:
            registry.load(TINY_MODEL)
        assert shown(path) in str(info.value) or shown(path.rsplit(".", 1)[0]) in str(info.value)


def test_the_largest_shapes_a_card_may_declare_still_load() -> None:
    """The bounds sit well above any model the project serves: 2**26 elements per item load."""
    for shape in ([None, 8192, 8192], [None, 4096, 4096, 4], [None] * 16):
        ModelCard.from_dict(set_path(card_dict(), "inputs.0.shape", shape))


def test_an_oversized_card_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    from auditstream.model_card import MAX_CARD_BYTES

    registry = ModelRegistry(tmp_path / "models")
    published = registry.publish(tiny_card(), tiny_classifier_onnx())
    with open(published.directory / CARD_FILE, "r+b") as f:
        f.seek(MAX_CARD_BYTES + 10)  # sparse: no disk used
        f.write(b" ")
    with pytest.raises(ModelRefused, match=r"card.json is over 67,108,864 bytes"):
        registry.load(TINY_MODEL)


def test_a_card_nested_past_the_parser_stack_is_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    published = registry.publish(tiny_card(), tiny_classifier_onnx())
    obj = json.loads((published.directory / CARD_FILE).read_text())
    text = json.dumps({**obj, "extra": "@"}).replace('"@"', "[" * 100_000 + "]" * 100_000)
    (published.directory / CARD_FILE).write_text(text)
    with pytest.raises(ModelRefused, match="nested too deeply"):
        registry.load(TINY_MODEL)

