"""Wire contract v1: every record round-trips, re-encodes byte for byte, and what the encoder
writes is what the schema (auditstream/schemas/wire-v1.json) and the docs promise."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from auditstream import wire
from auditstream.errors import DecodeError
from auditstream.wire import AuditItem, DeadLetter, Decision, ImageInput, InferenceRequest, Prediction, Route, Verdict
from tests.auditstream.wire_factories import PNG_1x1, make_dead_letter, make_decision, make_prediction, make_request, make_verdict

def test_request_round_trip_tensor_is_exact_and_byte_identical():
    request = make_request()
    data = request.to_bytes()
    back = InferenceRequest.from_bytes(data)
    assert back.request_id == "r-1" and back.model == "digits" and back.created_at_s == request.created_at_s
    np.testing.assert_array_equal(back.input, request.input)
    assert back.input.dtype == np.float32 and back.input.shape == (1, 28, 28)
    assert back.to_bytes() == data  # a redelivery re-encodes to the very same bytes


@pytest.mark.parametrize("dtype", wire.ALLOWED_DTYPES)
def test_every_allowed_dtype_round_trips(dtype):
    array = (np.arange(12) % 7).astype(dtype).reshape(3, 4)
    back = InferenceRequest.from_bytes(make_request(input=array).to_bytes()).input
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, array)


def test_big_endian_input_travels_little_endian():
    array = np.array([1.5, -2.0], dtype=">f4")
    tensor = wire.encode_tensor(array)
    assert base64.b64decode(tensor["b64"]) == np.array([1.5, -2.0], dtype="<f4").tobytes()
    np.testing.assert_array_equal(wire.decode_tensor(tensor), array)


def test_request_with_image_and_episode_round_trips():
    request = make_request(input=ImageInput(PNG_1x1, "png"), episode_key="ep-1", step=0)
    back = InferenceRequest.from_bytes(request.to_bytes())
    assert back == request
    assert back.key == b"ep-1"  # an episode stays on one partition
    assert make_request().key == b"r-1"  # otherwise spread by request id


def test_values_form_decodes_like_b64_form():
    array = np.linspace(0, 1, 784, dtype=np.float32).reshape(1, 28, 28)
    values_form = {
        "v": 1,
        "request_id": "r-2",
        "model": "digits",
        "created_at_s": 1.0,
        "input": {"tensor": {"dtype": "float32", "shape": [1, 28, 28], "values": array.ravel().tolist()}},
    }
    nested = dict(values_form, input={"tensor": {"shape": [1, 28, 28], "values": array.tolist()}})
    for obj in (values_form, nested):
        back = InferenceRequest.from_bytes(json.dumps(obj).encode())
        np.testing.assert_array_equal(back.input, array)
        assert back.input.dtype == np.float32  # dtype defaults to float32


def test_encoder_refuses_what_the_wire_cannot_carry():
    with pytest.raises(ValueError, match="float16"):
        wire.encode_tensor(np.zeros(3, dtype=np.float16))
    with pytest.raises(ValueError, match="NaN or infinity"):
        wire.encode_tensor(np.array([1.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError):
        make_prediction(confidence=float("nan")).to_bytes()


def test_prediction_round_trip_latency_in_headers_only():
    prediction = make_prediction()
    data, headers = prediction.to_bytes(), prediction.latency_headers()
    assert b"end-to-end" not in data and b"0.0071" not in data
    assert [name for name, _ in headers] == list(wire.LATENCY_HEADERS)
    back = Prediction.from_bytes(data, headers)
    assert back == prediction
    # Same prediction, other timings (a redelivery): the value is byte-identical.
    assert make_prediction(latency={"queue-s": 9.0}).to_bytes() == data


def test_unreadable_latency_headers_are_skipped_not_fatal():
    headers = [("queue-s", b"abc"), ("inference-s", b"nan"), ("end-to-end-s", b"0.5"), ("other", b"1"), ("bad",)]
    assert wire.parse_latency_headers(headers) == {"end-to-end-s": 0.5}
    assert wire.parse_latency_headers(None) == {}


def test_audit_item_round_trip_carries_the_input():
    item = AuditItem(prediction=make_prediction(route=Route.HUMAN, latency={}), input=ImageInput(PNG_1x1))
    back = AuditItem.from_bytes(item.to_bytes())
    assert back == item


def test_verdict_and_decision_round_trip():
    verdict = make_verdict()
    assert Verdict.from_bytes(verdict.to_bytes()) == verdict
    decision = make_decision()
    assert Decision.from_bytes(decision.to_bytes()) == decision


def test_verdict_defaults_for_optional_fields():
    obj = json.loads(make_verdict().to_bytes())
    for name in ("item_route", "inclusion_prob", "is_gold", "model_output", "corrected_output"):
        del obj[name]
    back = Verdict.from_bytes(json.dumps(obj).encode())
    assert (back.item_route, back.inclusion_prob, back.is_gold) == (Route.HUMAN, 1.0, False)


def test_dead_letter_keeps_original_bytes_and_headers_for_replay():
    letter = make_dead_letter()
    back = DeadLetter.from_bytes(letter.to_bytes())
    assert back == letter
    assert back.value == b"\xff\x00garbage" and back.headers[1] == ("trace", b"\x00\x01")
    empty = make_dead_letter(value=None, key=None, headers=())
    assert DeadLetter.from_bytes(empty.to_bytes()) == empty


def test_dead_letter_holds_a_record_of_the_maximum_size():
    letter = make_dead_letter(value=b"x" * wire.MAX_RECORD_BYTES, reason=wire.Reason.TOO_LARGE.value)
    assert DeadLetter.from_bytes(letter.to_bytes()).value == letter.value


def test_unknown_fields_are_ignored_within_v1():
    obj = json.loads(make_request().to_bytes())
    obj["trace_id"] = "abc"  # a later v1 writer may add optional fields
    assert InferenceRequest.from_bytes(json.dumps(obj).encode()).request_id == "r-1"


def test_decode_error_codes_are_dead_letter_reasons():
    cases = {
        b"\xff\xfe": "undecodable",
        b"[1, 2]": "bad_schema",
        b'{"v": 2}': "unsupported_version",
        b'{"v": 1.0}': "unsupported_version",
        json.dumps({"v": 1, "request_id": "r", "model": "m", "created_at_s": 0,
                    "input": {"tensor": {"shape": [2], "values": [1.0]}}}).encode(): "wrong_shape",
        b" " * (wire.MAX_RECORD_BYTES + 1): "too_large",
    }
    codes = {member.value for member in wire.Reason}
    for data, code in cases.items():
        with pytest.raises(DecodeError) as info:
            InferenceRequest.from_bytes(data)
        assert info.value.code == code and code in codes, (data[:40], info.value)


def test_max_bytes_is_the_callers_limit():
    data = make_request().to_bytes()
    with pytest.raises(DecodeError, match="exceeds 100") as info:
        InferenceRequest.from_bytes(data, max_bytes=100)
    assert info.value.code == "too_large"


def test_records_decode_and_encode_alike_in_many_threads_at_once():
    """One JSON decoder and one encoder serve every thread (auditstream/wire/codec.py): records
    with their own keys, ints that go through the decoder's 64-bit hook (a Python call, where
    threads switch) and ones it refuses come out the same concurrently as one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def record(i: int) -> bytes:
        obj = json.loads(make_request(request_id=f"r-{i}", episode_key=f"ep-{i}", step=i).to_bytes())
        obj.update({f"extra_{i % 7}": list(range(i % 50)), "trace": {f"k{j}": j for j in range(i % 9)}})
        if i % 5 == 0:
            return json.dumps(obj).replace(f'"step": {i}', f'"step": {2**64 + i}').encode()  # beyond 64 bits
        if i % 11 == 0:
            return json.dumps(obj).replace(f'"step": {i}', '"step": NaN').encode()  # not JSON
        return json.dumps(obj).encode()

    def outcome(data: bytes) -> tuple:
        try:
            request = InferenceRequest.from_bytes(data)
        except DecodeError as e:
            return ("refused", e.code)
        prediction = make_prediction(request_id=request.request_id, step=request.step,
                                     details={"step": request.step, "input_sum": float(request.input.sum())})
        return (request.request_id, request.step, request.to_bytes(), prediction.to_bytes())

    records = [record(i) for i in range(400)]
    one_at_a_time = [outcome(r) for r in records]
    assert {o[1] for o in one_at_a_time if o[0] == "refused"} == {"too_large", "undecodable"}
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            assert list(pool.map(outcome, records)) == one_at_a_time
