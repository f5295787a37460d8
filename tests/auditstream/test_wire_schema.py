"""The machine-readable contract (auditstream/schemas/wire-v1.json) agrees with the decoder:
every record the encoder writes validates, and every structurally invalid record the decoder
refuses, the schema refuses too. Checks the schema cannot express (data filling a shape,
finite tensor contents, integer ranges, size limits) are listed as decoder-only, so the gap is
written down rather than hidden."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditstream import wire
from auditstream.errors import DecodeError
from tests.auditstream.test_wire_fuzz import _paths, json_values
from tests.auditstream.wire_factories import (
    PNG_1x1,
    make_dead_letter,
    make_decision,
    make_prediction,
    make_request,
    make_verdict,
)

SCHEMA = wire.schema()
# Numbers, flat or nested, with a JSON true/false/null among them now and then: what a tensor's
# values may hold, and nearly.
nested_numbers = st.recursive(
    st.integers(-300, 300) | st.floats(-1e6, 1e6) | st.sampled_from([True, False, None]),
    lambda inner: st.lists(inner, min_size=1, max_size=4), max_leaves=12)
DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": SCHEMA["$defs"]})


def strict_json(data: bytes):
    """What a JSON Schema validator sees: strict JSON (NaN/Infinity are not JSON)."""
    def refuse(token):
        raise ValueError(token)

    return json.loads(data, parse_constant=refuse)


DECODERS = {
    "InferenceRequest": wire.InferenceRequest.from_bytes,
    "Prediction": wire.Prediction.from_bytes,
    "AuditItem": wire.AuditItem.from_bytes,
    "Decision": wire.Decision.from_bytes,
    "Action": wire.Action.from_bytes,
    "Transition": wire.Transition.from_bytes,
    "Verdict": wire.Verdict.from_bytes,
    "DeadLetter": wire.DeadLetter.from_bytes,
}


def good_records() -> dict[str, list[bytes]]:
    return {
        "InferenceRequest": [
            make_request().to_bytes(),
            make_request(input=np.zeros((0, 3), dtype=np.int64)).to_bytes(),
            make_request(input=np.uint8(7) * np.ones((2, 2), dtype=np.uint8), episode_key="e", step=0).to_bytes(),
            make_request(input=wire.ImageInput(PNG_1x1, "png")).to_bytes(),
            make_request(input=wire.ImageInput(b"\xff\xd8\xff", "jpeg")).to_bytes(),
        ],
        "Prediction": [make_prediction().to_bytes(), make_prediction(output=None, details={}).to_bytes()],
        "AuditItem": [wire.AuditItem(make_prediction(route=wire.Route.HUMAN), wire.ImageInput(PNG_1x1)).to_bytes()],
        "Decision": [make_decision().to_bytes(), make_decision(episode_key=None, step=None, source="fallback").to_bytes()],
        "Action": [wire.Action("r-1", "policy", "2", "env-7", 41, 3, wire.Route.AUTO, 1.5, {"propensities": [0.1, 0.9]}).to_bytes(),
                   wire.Action("r-1", "policy", "2", "env-7", 41, None, wire.Route.HUMAN, 1.5).to_bytes()],
        "Transition": [wire.Transition("r-1", "policy", "2", "env-7", 41, np.zeros(8, np.float32), 0, "fallback", -0.5,
                                       False, True, 1.5).to_bytes()],
        "Verdict": [make_verdict().to_bytes(), make_verdict(kind=wire.VerdictKind.SKIP, corrected_output=None).to_bytes()],
        "DeadLetter": [make_dead_letter().to_bytes(), make_dead_letter(value=None, key=None, headers=()).to_bytes(),
                       make_dead_letter(value=None, key=None, headers=(), omitted_bytes=9, value_sha256="0" * 64).to_bytes()],
    }


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert set(DECODERS) <= set(SCHEMA["$defs"])


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_encoded_records_validate(name):
    for data in good_records()[name]:
        DECODERS[name](data)
        validator(name).validate(strict_json(data))
        jsonschema.Draft202012Validator(SCHEMA).validate(strict_json(data))  # the top-level anyOf


def _request() -> dict:
    return json.loads(make_request(input=np.ones((2, 2), dtype=np.float32)).to_bytes())


def _with(base, path: str, value, delete: bool = False) -> dict:
    obj = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = obj
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if delete:
        del target[last]
    else:
        target[last] = value
    return obj


def _values(values, shape, dtype="float32") -> dict:
    return _with(_request(), "input", {"tensor": {"dtype": dtype, "shape": shape, "values": values}})


def _audit_item() -> dict:
    return json.loads(wire.AuditItem(make_prediction(route=wire.Route.HUMAN), wire.ImageInput(PNG_1x1)).to_bytes())


BIG = "__1e400__"


def _big(obj: dict) -> bytes:
    """1e400 is valid JSON text that parses to infinity (json.dumps would write Infinity)."""
    return json.dumps(obj).replace(f'"{BIG}"', "1e400").encode()


b64_of = lambda raw: base64.b64encode(raw).decode()  # noqa: E731

# (record, how to break it, reason code, does the schema see it too?)
CASES = [
    ("InferenceRequest", lambda: b'{"v": 1, "request_id": "r", "model": "m", "created_at_s": NaN}', "undecodable", True),
    ("InferenceRequest", lambda: b"\xff", "undecodable", True),
    ("InferenceRequest", lambda: b"[]", "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "v", 2), "unsupported_version", True),
    ("InferenceRequest", lambda: _with(_request(), "v", True), "unsupported_version", True),
    ("InferenceRequest", lambda: _with(_request(), "v", None, delete=True), "unsupported_version", True),
    ("InferenceRequest", lambda: _with(_request(), "request_id", ""), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "request_id", "x" * 257), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "request_id", 7), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "model", None, delete=True), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "created_at_s", "now"), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "created_at_s", True), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "step", -1), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "step", 1.5), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "step", 2**31), "bad_schema", True),  # over the store's INTEGER
    ("InferenceRequest", lambda: _with(_request(), "episode_key", ""), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input", None, delete=True), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input", {}), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input.image", {"b64": ""}), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input", {"image": {"format": "gif", "b64": ""}}), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input", {"image": {"b64": "a b"}}), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input", {"image": {"b64": 5}}), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input.tensor.dtype", "float16"), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input.tensor.shape", [2, -2]), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input.tensor.shape", [2, True]), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input.tensor.shape", [1] * 9), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input.tensor.shape", "2x2"), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input.tensor.b64", None, delete=True), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input.tensor.b64", "!!!!" * 6), "bad_schema", True),
    ("InferenceRequest", lambda: _with(_request(), "input.tensor.b64", 12), "bad_schema", True),
    ("InferenceRequest", lambda: _values([1, 2, "3", 4], [4]), "bad_schema", True),
    ("InferenceRequest", lambda: _values([1, 2, None, 4], [4]), "bad_schema", True),
    ("InferenceRequest", lambda: _values([True, False], [2]), "bad_schema", True),
    ("InferenceRequest", lambda: _values({"0": 1}, [1]), "bad_schema", True),
    # decoder-only: meaning the schema cannot state
    ("InferenceRequest", lambda: _values([1.0, 2.0, 3.0], [2, 2]), "wrong_shape", False),
    ("InferenceRequest", lambda: _with(_request(), "input.tensor.shape", [3, 2]), "wrong_shape", False),
    ("InferenceRequest", lambda: _with(_request(), "input.tensor.shape", [1 << 40]), "too_large", False),
    ("InferenceRequest", lambda: _values([1.5, 2.0], [2], "int32"), "bad_schema", False),
    ("InferenceRequest", lambda: _values([255, 256], [2], "uint8"), "bad_schema", False),
    ("InferenceRequest", lambda: _values([9.223372036854775807e18], [1], "int64"), "bad_schema", False),  # 2**63 as a float
    ("InferenceRequest", lambda: _values([[1, 2], [3]], [3]), "bad_schema", False),  # ragged
    ("InferenceRequest", lambda: _big(_values([1.0, BIG], [2])), "bad_input", False),
    ("InferenceRequest", lambda: _with(_request(), "input.tensor.b64", b64_of(np.array([0, np.nan, 1, 2], "<f4").tobytes())), "bad_input", False),
    ("InferenceRequest", lambda: _big(_with(_request(), "created_at_s", BIG)), "bad_schema", False),
    ("Prediction", lambda: _with(json.loads(make_prediction().to_bytes()), "route", "MAYBE"), "bad_schema", True),
    ("Prediction", lambda: _with(json.loads(make_prediction().to_bytes()), "route", ["AUTO"]), "bad_schema", True),
    ("Prediction", lambda: _with(json.loads(make_prediction().to_bytes()), "qc_inclusion_prob", 1.5), "bad_schema", True),
    ("Prediction", lambda: _with(json.loads(make_prediction().to_bytes()), "confidence", "0.9"), "bad_schema", True),
    ("Prediction", lambda: _with(json.loads(make_prediction().to_bytes()), "details", [1]), "bad_schema", True),
    ("Prediction", lambda: _with(json.loads(make_prediction().to_bytes()), "model_version", None, delete=True), "bad_schema", True),
    ("Prediction", lambda: _with(json.loads(make_prediction().to_bytes()), "episode_key", ""), "bad_schema", True),
    ("Prediction", lambda: _with(json.loads(make_prediction().to_bytes()), "model_version", "7" * 257), "bad_schema", True),
    ("AuditItem", lambda: _with(_audit_item(), "episode_key", "e" * 257), "bad_schema", True),
    ("AuditItem", lambda: _with(_audit_item(), "input", None, delete=True), "bad_schema", True),
    ("AuditItem", lambda: _with(_audit_item(), "input", {"tensor": {"shape": [1]}}), "bad_schema", True),
    ("Decision", lambda: _with(json.loads(make_decision().to_bytes()), "source", "oracle"), "bad_schema", True),
    ("Decision", lambda: _with(json.loads(make_decision().to_bytes()), "created_at_s", None), "bad_schema", True),
    ("Decision", lambda: _with(json.loads(make_decision().to_bytes()), "episode_key", ""), "bad_schema", True),
    ("Verdict", lambda: _with(json.loads(make_verdict().to_bytes()), "auditor", ""), "bad_schema", True),
    ("Verdict", lambda: _with(json.loads(make_verdict().to_bytes()), "kind", "maybe"), "bad_schema", True),
    ("Verdict", lambda: _with(json.loads(make_verdict().to_bytes()), "inclusion_prob", 0), "bad_schema", True),
    ("Verdict", lambda: _with(json.loads(make_verdict().to_bytes()), "inclusion_prob", "1"), "bad_schema", True),
    ("Verdict", lambda: _with(json.loads(make_verdict().to_bytes()), "is_gold", "yes"), "bad_schema", True),
    ("Verdict", lambda: _with(json.loads(make_verdict().to_bytes()), "item_route", "SOMETIMES"), "bad_schema", True),
    ("DeadLetter", lambda: _with(json.loads(make_dead_letter().to_bytes()), "source.partition", -1), "bad_schema", True),
    ("DeadLetter", lambda: _with(json.loads(make_dead_letter().to_bytes()), "source.offset", "7"), "bad_schema", True),
    ("DeadLetter", lambda: _with(json.loads(make_dead_letter().to_bytes()), "value_b64", 5), "bad_schema", True),
    ("DeadLetter", lambda: _with(json.loads(make_dead_letter().to_bytes()), "value_b64", "@@@@"), "bad_schema", True),
    ("DeadLetter", lambda: _with(json.loads(make_dead_letter().to_bytes()), "headers", [["a"]]), "bad_schema", True),
    ("DeadLetter", lambda: _with(json.loads(make_dead_letter().to_bytes()), "headers", [[1, None]]), "bad_schema", True),
    ("DeadLetter", lambda: _with(json.loads(make_dead_letter().to_bytes()), "headers", {"a": "b"}), "bad_schema", True),
    ("DeadLetter", lambda: _with(json.loads(make_dead_letter().to_bytes()), "source", None, delete=True), "bad_schema", True),
    ("DeadLetter", lambda: _with(json.loads(make_dead_letter(value=None, key=None, headers=(), omitted_bytes=9,
                                                             value_sha256="0" * 64).to_bytes()), "omitted.bytes", 0),
     "bad_schema", True),
    ("DeadLetter", lambda: _with(json.loads(make_dead_letter(value=None, key=None, headers=(), omitted_bytes=9,
                                                             value_sha256="0" * 64).to_bytes()), "omitted.value_sha256",
                                 "ABC"), "bad_schema", True),
]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{i}-{c[0]}-{c[2]}" for i, c in enumerate(CASES)])
def test_invalid_record_is_refused_by_decoder_and_schema(index):
    name, make, code, schema_sees_it = CASES[index]
    record = make()
    data = record if isinstance(record, bytes) else json.dumps(record).encode()
    with pytest.raises(DecodeError) as info:
        DECODERS[name](data)
    assert info.value.code == code, info.value
    try:
        errors = list(validator(name).iter_errors(strict_json(data)))
        schema_refuses = bool(errors)
    except (ValueError, UnicodeDecodeError):
        schema_refuses = True  # not (strict) JSON: no schema can accept it
    assert schema_refuses == schema_sees_it, (name, data[:120])


def doc_examples() -> list[tuple[str, dict]]:
    """```json blocks in docs/wire-format.md preceded by ``<!-- example: RecordName -->``."""
    pattern = r"<!-- example: (\w+) -->\s*```json\n(.*?)```"
    return [(name, json.loads(body)) for name, body in re.findall(pattern, DOC.read_text(), flags=re.S)]


def test_every_documented_example_is_valid():
    examples = doc_examples()
    assert {name for name, _ in examples} >= set(DECODERS), "docs/wire-format.md lacks an example of some record"
    for name, obj in examples:
        validator(name).validate(obj)
        DECODERS[name](json.dumps(obj).encode())


@pytest.mark.parametrize("label", ["plain-json", "numpy-b64"])
def test_documented_client_code_produces_a_valid_request(label):
    """The snippets other clients copy build a request the decoder and the schema accept."""
    match = re.search(rf"<!-- example-code: {label} -->\s*```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert match, f"docs/wire-format.md lacks the {label} example"
    scope: dict = {}
    exec(compile(match.group(1), f"docs/wire-format.md:{label}", "exec"), scope)  # noqa: S102 - our own doc
    request = wire.InferenceRequest.from_bytes(scope["value"])
    assert request.request_id == scope["request_id"] and request.input.shape == (8, 8)
    validator("InferenceRequest").validate(strict_json(scope["value"]))


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_whatever_the_decoder_accepts_the_schema_accepts(name, data):
    """The other direction of the contract, by search: a good record with one to three values
    replaced (at any depth) by arbitrary JSON is either refused by the decoder or valid under the
    schema. (It found ``[1, true]`` as tensor values: the schema refused it, the decoder read 1;
    and a null ``inclusion_prob``, which the decoder read as 1.0.)"""
    obj = json.loads(data.draw(st.sampled_from(good_records()[name])))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(obj))[1:]))
        target = obj
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = data.draw(json_values | nested_numbers | st.sampled_from(["", "x" * 257]))
    text = json.dumps(obj).encode()
    try:
        DECODERS[name](text)
    except DecodeError:
        return
    errors = [e.message[:200] for e in validator(name).iter_errors(strict_json(text))]
    assert not errors, (errors, text[:300])
