"""Decoder fuzzing (RELIABILITY #13): whatever arrives on a topic, each decoder returns a record
or raises :class:`DecodeError` — never another exception — and hostile records are refused
before they cost much memory. Memory is measured with tracemalloc (numpy reports its buffers
to it); time is not asserted here (the machine is shared), Hypothesis' deadline is off."""

from __future__ import annotations

import base64
import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from auditstream import wire
from auditstream.errors import DecodeError
from tests.auditstream.wire_factories import make_dead_letter, make_decision, make_prediction, make_request, make_verdict

DECODERS = {
    "request": wire.InferenceRequest.from_bytes,
    "prediction": wire.Prediction.from_bytes,
    "audit": wire.AuditItem.from_bytes,
    "decision": wire.Decision.from_bytes,
    "verdict": wire.Verdict.from_bytes,
    "dead_letter": wire.DeadLetter.from_bytes,
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text a client we did not write may send: JSON lets it spell lone UTF-16 surrogates ("\ud800"),
# which decode to Python strings no UTF-8 encoder (hash, Kafka key, database) accepts, and NUL
# ("\u0000"), which PostgreSQL stores nowhere.
texts = st.text(st.characters() | st.characters(categories=["Cs"]) | st.just("\x00"), max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([10**309, -(10**309), 10**400, 2**63, -(2**63) - 1])  # past float range, past int64
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
    | st.sampled_from(["AUTO", "HUMAN", "float32", "uint8", "png", "model", "accept", "", "AAAA", "b64"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=25,
)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def decode_or_refuse(decoder, data: bytes):
    """A record whose every string is valid Unicode (every later step can encode it) without a
    NUL (every store can hold it; a dead letter keeps its original's header names as they
    were), or a DecodeError with a known reason code."""
    try:
        record = decoder(data)
    except DecodeError as e:
        assert e.code in {r.value for r in wire.Reason}, e
        return None
    for text in _strings(json.loads(record.to_bytes())):
        text.encode("utf-8")  # a lone surrogate raises here
        assert "\x00" not in text or decoder == wire.DeadLetter.from_bytes
    return record


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(data=st.binary(max_size=512))
def test_any_bytes_give_a_record_or_decode_error(name, data):
    decode_or_refuse(DECODERS[name], data)


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(obj=json_values)
def test_any_json_gives_a_record_or_decode_error(name, obj):
    decode_or_refuse(DECODERS[name], json.dumps(obj).encode())


def _valid(name: str) -> dict:
    records = {
        "request": make_request(input=np.ones((2, 3), dtype=np.float32), episode_key="e", step=1),
        "prediction": make_prediction(),
        "audit": wire.AuditItem(make_prediction(), np.zeros(4, dtype=np.uint8)),
        "decision": make_decision(),
        "verdict": make_verdict(),
        "dead_letter": make_dead_letter(),
    }
    return json.loads(records[name].to_bytes())


def _paths(obj, prefix=()):
    """Every (path) into a JSON value, so a mutation can hit nested fields like input.tensor.shape."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            yield from _paths(v, prefix + (i,))


# Number tokens json.dumps cannot write but a hand-made record can hold.
hostile_numbers = st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" * 30, "-0.0", "1.5"])


def mutated_json(data, obj: dict) -> bytes:
    """``obj`` (a valid record's JSON) with one to three values, at any depth, replaced by
    arbitrary JSON or by a :data:`hostile_numbers` token: near-valid records reach the field
    checks that random JSON never gets to."""
    spelled = {}
    for i in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(obj))[1:]))
        target = obj
        for step in path[:-1]:
            target = target[step]
        if data.draw(st.booleans()):
            target[path[-1]] = data.draw(json_values)
        else:  # put a marker, replace it in the text
            spelled[f"@@{i}@@"] = data.draw(hostile_numbers)
            target[path[-1]] = f"@@{i}@@"
    text = json.dumps(obj)
    for marker, number in spelled.items():
        text = text.replace(json.dumps(marker), number)
    return text.encode()


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(data=st.data())
def test_mutated_valid_records_give_a_record_or_decode_error(name, data):
    """Near-valid records reach the deep checks that random JSON never gets to."""
    obj = _valid(name)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(obj))[1:]))
        target = obj
        for part in path[:-1]:
            target = target[part]
        if data.draw(st.booleans()) and isinstance(target, dict):
            del target[path[-1]]
        else:
            target[path[-1]] = data.draw(json_values)
    decode_or_refuse(DECODERS[name], json.dumps(obj).encode())


@FUZZ
@given(
    shape=st.lists(st.integers(0, 2**62), max_size=9),
    dtype=st.sampled_from(wire.ALLOWED_DTYPES + ("float16", "object")),
    payload=st.binary(max_size=64),
    as_values=st.booleans(),
)
# Found by this test: numpy refuses a zero-size shape whose other dims overflow; 7 bytes of
# base64 are as long as 8, so the base64 length alone does not prove the byte count.
@example(shape=[0, 6439, 20800, 71009, 121229], dtype="float64", payload=b"", as_values=True)
@example(shape=[], dtype="float64", payload=b"\x00" * 7, as_values=False)
def test_tensor_headers_never_escape(shape, dtype, payload, as_values):
    tensor = {"dtype": dtype, "shape": shape}
    tensor.update({"values": list(payload)} if as_values else {"b64": base64.b64encode(payload).decode()})
    try:
        array = wire.decode_tensor(tensor)
    except DecodeError:
        return
    assert list(array.shape) == shape and array.dtype == np.dtype(dtype)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_encoder_output_always_decodes(name):
    obj = _valid(name)
    assert DECODERS[name](json.dumps(obj, separators=(",", ":")).encode()) is not None


def _request_with(tensor: dict | None = None, **fields) -> bytes:
    obj = {"v": 1, "request_id": "r", "model": "m", "created_at_s": 1.0,
           "input": {"tensor": tensor or {"shape": [1], "values": [0.0]}}}
    obj.update(fields)
    return json.dumps(obj, separators=(",", ":")).encode()


MiB = 1024 * 1024

# (what, record, reason code, most bytes the refusal may allocate)
HOSTILE = [
    ("shape claims 2^62 elements", _request_with({"shape": [2**31, 2**31], "b64": ""}), "too_large", MiB),
    ("shape claims 2^24+1 elements", _request_with({"shape": [wire.MAX_TENSOR_ELEMENTS + 1], "b64": "AAAA"}), "too_large", MiB),
    ("shape of 10^4999", _request_with({"shape": [10**4000, 10**999], "b64": ""}), "too_large", MiB),
    ("zero-size shape spanning 2^80", _request_with({"shape": [0, 2**20, 2**20, 2**20, 2**20], "b64": ""}), "too_large", MiB),
    ("4 GiB claimed, 3 bytes sent", _request_with({"shape": [2**30], "dtype": "float32", "b64": "AAAA"}), "too_large", MiB),
    ("64 MiB claimed, 3 bytes sent", _request_with({"shape": [2**24], "dtype": "float32", "b64": "AAAA"}), "wrong_shape", MiB),
    ("values list that does not fill 2^24", _request_with({"shape": [2**24], "values": [1.0] * 1000}), "wrong_shape", MiB),
    ("nested 100k deep", b'{"v": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "undecodable", 64 * MiB),
    ("nested 1M deep", b'{"v": 1, "x": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}", "too_large", MiB),
    ("8 MiB of empty lists", b'{"v":1,"x":[' + b"[]," * (wire.MAX_RECORD_BYTES // 3 - 10) + b"[]]}", "too_large", 24 * MiB),
    ("giant base64 over the cap", _request_with({"shape": [1], "b64": "A" * (wire.MAX_RECORD_BYTES + 4)}), "too_large", 24 * MiB),
    ("giant base64 under the cap, wrong size", _request_with({"shape": [4], "b64": "AAAA" * (wire.MAX_RECORD_BYTES // 5)}), "wrong_shape", 64 * MiB),
    ("float list at the cap", _request_with({"shape": [2**21], "values": [0.5] * 2_000_000}), "wrong_shape", 192 * MiB),
    ("NaN created_at_s", b'{"v": 1, "request_id": "r", "model": "m", "created_at_s": NaN}', "undecodable", MiB),
    ("Infinity in values", _request_with().replace(b"[0.0]", b"[-Infinity]"), "undecodable", MiB),
    ("1e999 in values", _request_with().replace(b"[0.0]", b"[1e999]"), "bad_input", MiB),
    ("bool for a dimension", _request_with({"shape": [True], "values": [1]}), "bad_schema", MiB),
    ("bool for the version", _request_with(v=True), "unsupported_version", MiB),
    ("bool for step", _request_with(step=False), "bad_schema", MiB),
    ("bools as values", _request_with({"shape": [2], "values": [True, False]}), "bad_schema", MiB),
    ("int of 5000 digits", b'{"v": 1, "n": ' + b"7" * 5000 + b"}", "undecodable", MiB),
    ("not bytes at all", "a str", "undecodable", MiB),
]


@pytest.mark.parametrize("what,record,code,budget", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_record_is_refused_cheaply(what, record, code, budget):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(DecodeError) as info:
            wire.InferenceRequest.from_bytes(record)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == code, info.value
    assert peak <= budget, f"{what}: refusing it allocated {peak / MiB:.1f} MiB"


def test_largest_legal_tensor_costs_about_its_own_size():
    """A record just under the cap: parsing costs a small multiple of the record, no more."""
    array = np.ones(wire.MAX_RECORD_BYTES * 3 // 4 // 4 - 64, dtype=np.float32)
    data = make_request(input=array).to_bytes()
    assert len(data) <= wire.MAX_RECORD_BYTES
    tracemalloc.start()
    try:
        back = wire.InferenceRequest.from_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert back.input.shape == array.shape
    assert peak <= 4 * len(data), f"decoding {len(data)} bytes allocated {peak} at peak"


def _at(obj, path):
    for part in path:
        obj = obj[part]
    return obj


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(data=st.data())
def test_every_string_field_takes_any_text_or_refuses_it(name, data):
    """Each string of a valid record replaced by arbitrary text — lone surrogates included, as a
    client we did not write may spell them — decodes to valid Unicode or is refused. (A request
    id of "\\ud800" once decoded, then broke the QC hash and stopped every consumer.)"""
    obj = _valid(name)
    path = data.draw(st.sampled_from([p for p in _paths(obj) if isinstance(_at(obj, p), str)]))
    target = obj
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = data.draw(st.text(st.characters() | st.characters(categories=["Cs"]) | st.just("\x00"),
                                         min_size=1, max_size=20))
    decode_or_refuse(DECODERS[name], json.dumps(obj).encode())


@pytest.mark.parametrize("name", sorted(set(DECODERS) - {"dead_letter"}))
def test_a_nul_in_any_string_or_key_is_refused(name):
    """PostgreSQL's text and jsonb hold no NUL: a shadow answer whose request id held one failed
    the monitor's whole batch, and a prediction whose version held one stopped its publisher at
    the next statistics tick, on every restart. Strict JSON can carry NUL only as "\\u0000", so
    every decoder refuses it there (``bad_schema``), in any string and any object key."""
    obj = _valid(name)
    paths = [p for p in _paths(obj) if isinstance(_at(obj, p), str)]
    for path in paths:
        mutated = json.loads(json.dumps(obj))
        target = mutated
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = "a\x00b"
        with pytest.raises(DecodeError, match="NUL") as info:
            DECODERS[name](json.dumps(mutated).encode())
        assert info.value.code == "bad_schema"
    with pytest.raises(DecodeError, match="NUL"):
        DECODERS[name](json.dumps({**obj, "extra\x00key": 1}).encode())


def test_a_dead_letter_keeps_a_nul_in_its_originals_header_names():
    """Kafka takes any header name; a letter carries them verbatim so its original can be
    replayed as it was (no store keeps letters): refusing it would lose the original."""
    letter = make_dead_letter()
    letter = wire.DeadLetter(letter.reason, "detail \x00", letter.source_topic, 0, 1, b"v", b"k",
                             (("trace\x00id", b"1"),), 1.0)
    assert wire.DeadLetter.from_bytes(letter.to_bytes()) == letter


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_an_escaped_backslash_before_u0000_is_text_not_nul(name):
    """``"\\\\u0000"`` is six characters, a backslash first: the byte pattern alone must not refuse it."""
    obj = _valid(name)
    path = next(p for p in _paths(obj) if isinstance(_at(obj, p), str) and p[-1] in ("reason", "detail", "auditor", "model"))
    target = obj
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = "\\u0000"
    data = json.dumps(obj).encode()
    assert b"\\\\u0000" in data
    assert DECODERS[name](data) is not None


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("huge", ["1" + "0" * 400, "-" + "9" * 309, str(2**63)])
def test_every_number_field_refuses_integers_beyond_64_bits(name, huge):
    """A 400-digit integer is valid JSON; it once reached float() in the request decoder, raised
    OverflowError instead of DecodeError and stopped the consumer on every restart."""
    obj = _valid(name)
    for path in [p for p in _paths(obj) if type(_at(obj, p)) in (int, float)]:
        mutated = json.loads(json.dumps(obj))
        target = mutated
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = "<huge>"
        with pytest.raises(DecodeError):
            DECODERS[name](json.dumps(mutated).replace('"<huge>"', huge).encode())



@FUZZ
@given(dtype=st.sampled_from(["uint8", "int32", "int64"]),
       value=st.integers(-(2**65), 2**65) | st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**31, -(2**31) - 1]),
       as_float=st.booleans())
def test_integer_tensor_values_decode_exactly_or_are_refused(dtype, value, as_float):
    """A ``values`` number for an integer dtype decodes to exactly that integer or is refused:
    never wrapped (a float 9.223372036854775807e18 is 2**63 and used to become -2**63)."""
    number = float(value) if as_float else value
    record = _request_with({"dtype": dtype, "shape": [1], "values": [number]})
    try:
        decoded = wire.InferenceRequest.from_bytes(record).input
    except DecodeError:
        info = np.iinfo(dtype)
        assert not info.min <= int(number) <= info.max  # refused only when out of the dtype's range
        return
    assert int(decoded[0]) == int(number)
