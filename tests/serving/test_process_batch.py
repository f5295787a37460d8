"""serving.consumer.process_batch without a broker: one result per input, errors per record."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from tests.conftest import TinyRegistry

from auditstream.kafka import Record
from auditstream.settings import Settings
from auditstream.wire import (AuditItem, DeadLetter, Decision, ImageInput, InferenceRequest, Prediction, Reason,
                              Route)
from serving.consumer import ServeConfig, process_batch
from serving.runtime import load_session

NOW = 1_800_000_000.0


def request_record(i: int, array: np.ndarray | ImageInput, model: str = "tiny", offset: int | None = None) -> Record:
    req = InferenceRequest(f"req-{i}", model, array, NOW - 0.5)
    return Record("auditstream.requests.tiny", i % 3, i if offset is None else offset, req.key, req.to_bytes(),
                  (("content-type", b"x"),))


def good(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((8, 8)).astype(np.float32)


@pytest.fixture
def served(tiny_registry: TinyRegistry):
    settings = Settings(max_request_bytes=4096, qc_rate=0.2)
    return load_session(tiny_registry.model), ServeConfig.from_settings(settings, tiny_registry.model.card)


def test_one_result_per_record_in_order(served) -> None:
    session, config = served
    records = [request_record(i, good(i)) for i in range(40)]
    results = process_batch(records, session, config, NOW)
    assert len(results) == 40
    routes = {r.route for r in results}
    assert routes <= set(Route) and Route.HUMAN in routes and (Route.AUTO in routes or Route.AUTO_QC in routes)
    for i, r in enumerate(results):
        pred = Prediction.from_bytes(r.outputs[0].value, list(r.outputs[0].headers))
        assert r.outputs[0].topic == config.predictions_topic and r.outputs[0].key == f"req-{i}".encode()
        assert pred.request_id == f"req-{i}" and pred.route == r.route and pred.model_version == "1"
        assert pred.latency["queue-s"] == pytest.approx(0.5)
        topics = [o.topic for o in r.outputs]
        assert (config.decisions_topic in topics) == (r.route in (Route.AUTO, Route.AUTO_QC))
        assert (config.audit_topic in topics) == (r.route in (Route.HUMAN, Route.AUTO_QC))


def test_outputs_match_direct_inference(served) -> None:
    session, config = served
    results = process_batch([request_record(i, good(i)) for i in range(8)], session, config, NOW)
    probs = session.run(np.stack([good(i) for i in range(8)]))["probs"]
    for i, r in enumerate(results):
        pred = Prediction.from_bytes(r.outputs[0].value)
        assert pred.output == str(int(np.argmax(probs[i])))
        assert pred.confidence == pytest.approx(float(probs[i].max()), abs=1e-6)
        assert [u["index"] for u in pred.details["runner_ups"]] == list(np.argsort(-probs[i])[1:4])


def test_poison_records_fail_alone(served) -> None:
    session, config = served
    wrong_shape = request_record(1, np.zeros((7, 8), np.float32))
    float_to_int = request_record(2, np.zeros((8, 8), np.float64))  # float64 -> float32 is fine
    oversized = Record("auditstream.requests.tiny", 0, 3, b"k", b"{" + b" " * 5000 + b"}")
    other_model = request_record(4, good(4), model="other")
    garbage = Record("auditstream.requests.tiny", 0, 5, b"k", b"\xff\xfe not json", (("h", b"v"),))
    tombstone = Record("auditstream.requests.tiny", 0, 6, b"k", None)
    nan_b64 = base64.b64encode(np.full((8, 8), np.nan, np.float32).tobytes()).decode()
    nan = Record("auditstream.requests.tiny", 0, 7, b"k", json.dumps({
        "v": 1, "request_id": "nan", "model": "tiny", "created_at_s": NOW,
        "input": {"tensor": {"dtype": "float32", "shape": [8, 8], "b64": nan_b64}}}).encode())
    records = [request_record(0, good(0)), wrong_shape, float_to_int, oversized, other_model, garbage, tombstone, nan,
               request_record(8, good(8))]
    results = process_batch(records, session, config, NOW)
    reasons = [r.dead_letter_reason for r in results]
    assert reasons == [None, Reason.WRONG_SHAPE.value, None, Reason.TOO_LARGE.value, Reason.WRONG_MODEL.value,
                       Reason.UNDECODABLE.value, Reason.UNDECODABLE.value, Reason.BAD_INPUT.value, None]
    for record, result in zip(records, results):
        if result.dead_letter_reason is None:
            continue
        (out,) = result.outputs
        dl = DeadLetter.from_bytes(out.value)
        assert out.topic == config.dead_letter_topic and out.key == record.key
        assert (dl.value, dl.key, dl.headers) == (record.value, record.key, record.headers)
        assert (dl.source_topic, dl.source_partition, dl.source_offset) == (record.topic, record.partition, record.offset)


def test_hand_written_json_values_request(served) -> None:
    session, config = served
    value = json.dumps({"v": 1, "request_id": "hand-1", "model": "tiny", "created_at_s": NOW,
                        "input": {"tensor": {"dtype": "float32", "shape": [8, 8], "values": good(1).tolist()}}}).encode()
    (result,) = process_batch([Record("t", 0, 0, b"hand-1", value)], session, config, NOW)
    assert result.dead_letter_reason is None
    assert Prediction.from_bytes(result.outputs[0].value).request_id == "hand-1"


def test_png_image_input(served) -> None:
    from PIL import Image

    session, config = served
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L").save(buf, format="PNG")
    big = io.BytesIO()
    Image.fromarray(np.zeros((9, 8), np.uint8), mode="L").save(big, format="PNG")
    records = [request_record(0, ImageInput(buf.getvalue())), request_record(1, ImageInput(big.getvalue())),
               request_record(2, ImageInput(b"\x89PNG not really"))]
    results = process_batch(records, session, config, NOW)
    assert [r.dead_letter_reason for r in results] == [None, Reason.WRONG_SHAPE.value, Reason.BAD_INPUT.value]


def test_redelivery_in_another_batch_is_byte_identical(served) -> None:
    session, config = served
    records = [request_record(i, good(i)) for i in range(20)]
    first = process_batch(records, session, config, NOW)
    again = process_batch(records[5:6] + records[:3], session, config, NOW + 30)
    assert [o.value for o in again[0].outputs] == [o.value for o in first[5].outputs]
    assert [o.value for o in again[1].outputs] == [o.value for o in first[0].outputs]


def test_audit_and_decision_payloads(served) -> None:
    session, config = served
    results = process_batch([request_record(i, good(i)) for i in range(60)], session, config, NOW)
    for r in results:
        by_topic = {o.topic: o for o in r.outputs}
        if config.audit_topic in by_topic:
            item = AuditItem.from_bytes(by_topic[config.audit_topic].value)
            assert item.prediction.route == r.route
            assert np.array_equal(item.input, good(int(item.prediction.request_id.split("-")[1])))
        if config.decisions_topic in by_topic:
            assert Decision.from_bytes(by_topic[config.decisions_topic].value).source == "model"


class FlakyRunner:
    """Fails any batch holding a row whose first value is 99 (a record the model cannot handle)."""

    def __init__(self, inner, broken: bool = False) -> None:
        self.inner, self.broken = inner, broken

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.broken or (batch[:, 0, 0] == 99).any():
            raise RuntimeError("kernel failed")
        return self.inner.run(batch)


def test_inference_failure_isolated_to_its_record(served) -> None:
    session, config = served
    bad = good(3)
    bad[0, 0] = 99
    records = [request_record(i, good(i)) for i in range(3)] + [request_record(3, bad), request_record(4, good(4))]
    results = process_batch(records, FlakyRunner(session), config, NOW)
    assert [r.dead_letter_reason for r in results] == [None, None, None, Reason.INFERENCE_FAILED.value, None]


def test_broken_model_raises(served) -> None:
    session, config = served
    with pytest.raises(RuntimeError, match="kernel failed"):
        process_batch([request_record(i, good(i)) for i in range(4)], FlakyRunner(session, broken=True), config, NOW)


def test_dead_letter_keeps_exact_bytes_through_base64(served) -> None:
    session, config = served
    raw = bytes(range(256))
    (result,) = process_batch([Record("t", 2, 9, None, raw)], session, config, NOW)
    obj = json.loads(result.outputs[0].value)
    assert base64.b64decode(obj["value_b64"]) == raw and obj["source"] == {"topic": "t", "partition": 2, "offset": 9}
    assert time.time() > 0  # process_batch takes "now" from the caller: no hidden clock in outputs
