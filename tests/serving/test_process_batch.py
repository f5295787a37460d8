"""serving.consumer.process_batch without a broker: one result per input, errors per record."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import time

import numpy as np
import pytest
from tests.conftest import TinyRegistry, tiny_card, tiny_classifier_onnx

from auditstream.control import ControlState
from auditstream.errors import InferenceBroken
from auditstream.kafka import Record
from auditstream.kafka.limits import record_bytes
from auditstream.registry import TensorSpec
from auditstream.settings import Settings
from auditstream.wire import (AuditItem, DeadLetter, Decision, ImageInput, InferenceRequest, Prediction, Reason,
                              Route)
from serving.consumer import LiveReference, ServeConfig, process_batch
from serving.inference import FailureStreak
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


def test_a_reused_request_id_with_other_bytes_is_answered_as_its_own_request(served) -> None:
    """docs/wire-format.md, "Ids": serving keeps no memory of ids. Another request under an id
    already seen is answered from its own input (not mistaken for a redelivery); the audit store
    later keeps the first audit item and dead-letters the second (tests/monitor/test_service.py)."""
    session, config = served
    first = request_record(1, good(1))
    other = dataclasses.replace(first, offset=99, value=InferenceRequest("req-1", "tiny", good(2), NOW - 0.5).to_bytes())
    a, b, a_again = process_batch([first, other, first], session, config, NOW)
    pa, pb = (Prediction.from_bytes(r.outputs[0].value) for r in (a, b))
    assert pa.request_id == pb.request_id == "req-1" and a.outputs[0].key == b.outputs[0].key
    assert pa.details["probs"] != pb.details["probs"]  # each answered from its own input
    assert [o.value for o in a_again.outputs] == [o.value for o in a.outputs]  # the same bytes: identical


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
    """Fails any batch holding a row whose first value is 99 (a record the model cannot handle);
    ``broken``: fails everything, the warm-up probe included; ``real_inputs_fail``: fails every
    request but still runs the warm-up input (zeros)."""

    def __init__(self, inner, broken: bool = False, real_inputs_fail: bool = False) -> None:
        self.inner, self.broken, self.real_inputs_fail = inner, broken, real_inputs_fail

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.broken or (batch[:, 0, 0] == 99).any() or (self.real_inputs_fail and batch.any()):
            raise RuntimeError("kernel failed")
        return self.inner.run(batch)

    def probe(self) -> None:
        self.run(self.inner.warmup_input[:1])


def bad(i: int) -> np.ndarray:
    array = good(i)
    array[0, 0] = 99
    return array


def test_inference_failure_isolated_to_its_record(served) -> None:
    session, config = served
    records = [request_record(i, good(i)) for i in range(3)] + [request_record(3, bad(3)), request_record(4, good(4))]
    results = process_batch(records, FlakyRunner(session), config, NOW)
    assert [r.dead_letter_reason for r in results] == [None, None, None, Reason.INFERENCE_FAILED.value, None]


@pytest.mark.parametrize("n_bad", [1, 3])
def test_bad_records_alone_in_a_batch_are_dead_lettered_when_the_model_still_runs(served, n_bad) -> None:
    """Light traffic: a batch of only bad records (one, or a few) is not a broken model."""
    session, config = served
    results = process_batch([request_record(i, bad(i)) for i in range(n_bad)], FlakyRunner(session), config, NOW)
    assert [r.dead_letter_reason for r in results] == [Reason.INFERENCE_FAILED.value] * n_bad
    assert "kernel failed" in DeadLetter.from_bytes(results[0].outputs[0].value).detail


@pytest.mark.parametrize("n", [1, 4])
def test_broken_model_raises_even_for_one_record(served, n) -> None:
    session, config = served
    with pytest.raises(InferenceBroken, match=r"model tiny v1 is broken: .*kernel failed.*warm-up input") as info:
        process_batch([request_record(i, good(i)) for i in range(n)], FlakyRunner(session, broken=True), config, NOW)
    assert "then restart the consumer" in str(info.value)


def test_a_model_failing_every_real_input_stops_after_a_streak(served) -> None:
    """The warm-up probe still passes, but nothing real runs: a streak of failures across batches stops it."""
    session, config = served
    runner, streak = FlakyRunner(session, real_inputs_fail=True), FailureStreak(config.card, limit=5)
    first = process_batch([request_record(i, good(i)) for i in range(2)], runner, config, NOW)
    streak.observe(first)  # 2 in a row
    streak.observe(process_batch([request_record(2, good(2))], FlakyRunner(session), config, NOW))  # answered: reset
    assert streak.count == 0
    streak.observe(process_batch([request_record(i, good(i)) for i in range(4)], runner, config, NOW))
    with pytest.raises(InferenceBroken, match="the last 5 records in a row failed inference"):
        streak.observe(process_batch([request_record(9, good(9))], runner, config, NOW))
    with pytest.raises(ValueError, match="limit=0"):
        FailureStreak(config.card, limit=0)


def overflowing(i: int) -> np.ndarray:
    """Finite float32 values the tiny model's MatMul overflows on: its output is NaN."""
    return np.full((8, 8), 3e38, np.float32)


def test_a_run_of_inputs_the_model_cannot_handle_does_not_stop_a_working_model(served) -> None:
    """Anyone who can write to the request topic could send 50 such requests in a row; the model
    still answers the request it answered before, so they are dead-lettered and it goes on."""
    session, config = served
    streak = FailureStreak(config.card, limit=5, runner=session)
    streak.observe(process_batch([request_record(0, good(0))], session, config, NOW))
    for batch in range(4):  # 20 failures in a row, 4 streaks
        results = process_batch([request_record(10 * batch + j, overflowing(j)) for j in range(5)], session, config, NOW)
        assert {r.dead_letter_reason for r in results} == {Reason.INFERENCE_FAILED.value}
        streak.observe(results)
    assert streak.rechecks == 4 and streak.count == 0
    assert process_batch([request_record(99, good(99))], session, config, NOW)[0].route is not None


def test_a_streak_stops_a_model_that_no_longer_answers_what_it_answered(served) -> None:
    session, config = served
    streak = FailureStreak(config.card, limit=3, runner=FlakyRunner(session, real_inputs_fail=True))
    streak.observe(process_batch([request_record(0, good(0))], session, config, NOW))  # answered while it worked
    with pytest.raises(InferenceBroken, match="so did a request it answered before"):
        streak.observe(process_batch([request_record(i, good(i)) for i in range(3)],
                                     FlakyRunner(session, real_inputs_fail=True), config, NOW))
    never = FailureStreak(config.card, limit=3, runner=session)  # nothing answered yet: nothing vouches for it
    with pytest.raises(InferenceBroken, match="it has answered no request yet"):
        never.observe(process_batch([request_record(i, overflowing(i)) for i in range(3)], session, config, NOW))


def test_records_that_fail_before_the_model_neither_count_nor_break_a_streak(served, monkeypatch) -> None:
    """A decoder's own error (here: any exception from decoding) says nothing about the model."""
    from serving import consumer

    session, config = served
    streak = FailureStreak(config.card, limit=3)
    streak.observe(process_batch([request_record(i, bad(i)) for i in range(2)], FlakyRunner(session), config, NOW))
    real_decode = consumer._decode

    def decoder_bug(record, config, episodes):
        if record.offset >= 100:
            raise SyntaxError("broken PNG file")
        return real_decode(record, config, episodes)

    monkeypatch.setattr(consumer, "_decode", decoder_bug)
    results = process_batch([request_record(i, good(i), offset=100 + i) for i in range(60)], session, config, NOW)
    assert {r.dead_letter_reason for r in results} == {Reason.PROCESSING_FAILED.value}
    streak.observe(results)
    assert streak.count == 2  # neither reset by them nor pushed to the limit
    with pytest.raises(InferenceBroken, match="the last 3 records"):
        streak.observe(process_batch([request_record(7, bad(7))], FlakyRunner(session), config, NOW))


def batch_reducing_classifier_onnx(side: int = 8, classes: int = 10) -> bytes:
    """Declares probs [None, classes] but averages over the batch axis: one row for any batch."""
    from onnx import TensorProto, helper, numpy_helper

    weights = (np.random.default_rng(0).standard_normal((side * side, classes)) * 0.3).astype(np.float32)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, side, side])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, classes])
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["rows"], axis=-1),
             helper.make_node("ReduceMean", ["rows"], ["probs"], axes=[0], keepdims=1)]
    graph = helper.make_graph(nodes, "reduces", [x], [y], initializer=[numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_model_answering_fewer_rows_than_its_batch_is_run_row_by_row(tmp_path, monkeypatch) -> None:
    """Pairing its one row with the first record and dropping the rest would answer the wrong
    records (and used to fail the whole batch on an assertion). The warm-up's vetting refuses
    such a model (its batch of 2 answers one row); one that reduces only on some inputs gets
    past it, as here with the vetting switched off."""
    from auditstream.errors import ModelRefused
    from auditstream.registry import ModelRegistry
    from serving import runtime

    registry = ModelRegistry(tmp_path / "models")
    registry.publish(tiny_card(), batch_reducing_classifier_onnx())
    model = registry.load("tiny")
    with pytest.raises(ModelRefused, match=r"output 'probs' has shape \[1, 10\] for a batch of"):
        load_session(model)
    monkeypatch.setattr(runtime, "vet_session", lambda *a, **k: None)
    session, config = load_session(model), ServeConfig.from_settings(Settings(), model.card)
    records = [request_record(i, good(i)) for i in range(6)]
    results = process_batch(records, session, config, NOW)
    assert all(r.route is not None for r in results)
    for i, r in enumerate(results):  # each answer is the model's answer to that record alone
        alone = process_batch([records[i]], session, config, NOW)[0]
        assert Prediction.from_bytes(r.outputs[0].value).output == Prediction.from_bytes(alone.outputs[0].value).output


def test_inference_seconds_is_per_shape_group_and_ort_only(served, monkeypatch) -> None:
    """Each record's ``inference-s`` is its own group's ONNX Runtime time: groups do not add up."""
    from serving import inference

    _session, config = served
    card = dataclasses.replace(config.card, inputs=[TensorSpec("image", "float32", [None, None, 8])])
    clock = [100.0]
    monkeypatch.setattr(inference.time, "perf_counter", lambda: clock[0])

    class SlowRunner:
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            clock[0] += 0.25 * len(batch)  # a run takes 0.25 clock-seconds per row; nothing else advances it
            probs = np.full((len(batch), 10), 0.01, np.float32)
            probs[:, 0] = 0.91
            return {"probs": probs}

        def probe(self) -> None:
            raise AssertionError("no run failed: no probe")

    records = [request_record(0, np.zeros((8, 8), np.float32)), request_record(1, np.zeros((3, 8), np.float32)),
               request_record(2, np.zeros((8, 8), np.float32))]
    results = process_batch(records, SlowRunner(), dataclasses.replace(config, card=card), NOW)
    latency = [Prediction.from_bytes(r.outputs[0].value, list(r.outputs[0].headers)).latency for r in results]
    assert [lat["inference-s"] for lat in latency] == [0.5, 0.25, 0.5]  # not 0.5, 0.75, 0.5


def test_prediction_and_decision_record_the_threshold_applied(served) -> None:
    session, config = served
    records = [request_record(i, good(i)) for i in range(40)]
    plain = process_batch(records, session, config, NOW)
    tightened_config = dataclasses.replace(config, control=ControlState(model="tiny", threshold_override={"1": 0.95}))
    tightened = process_batch(records, session, tightened_config, NOW)
    for results, threshold in ((plain, 0.5), (tightened, 0.95)):
        for r in results:
            by_topic = {o.topic: o.value for o in r.outputs}
            assert Prediction.from_bytes(by_topic[config.predictions_topic]).details["threshold"] == threshold
            if config.decisions_topic in by_topic:
                assert Decision.from_bytes(by_topic[config.decisions_topic]).details["threshold"] == threshold
    # a redelivery after the tightening is recognisable: it only ever moves toward a human
    moved = [(a.route, b.route) for a, b in zip(plain, tightened) if a.route != b.route]
    assert moved and all(after is Route.HUMAN for _before, after in moved)


def test_over_capacity_deferrals_are_flagged_in_results(tiny_registry: TinyRegistry) -> None:
    settings = Settings(max_request_bytes=4096, max_human_queue_depth=10)
    config = ServeConfig.from_settings(settings, tiny_registry.model.card)
    session = load_session(tiny_registry.model)
    records = [request_record(i, good(i)) for i in range(30)]
    calm = process_batch(records, session, dataclasses.replace(config, control=ControlState(model="tiny", human_queue_depth=3)), NOW)
    full = process_batch(records, session, dataclasses.replace(config, control=ControlState(model="tiny", human_queue_depth=10)), NOW)
    assert not any(r.over_capacity for r in calm)
    assert [r.over_capacity for r in full] == [r.route is Route.HUMAN for r in full] and any(r.over_capacity for r in full)


def test_serve_config_carries_the_secret_qc_salt(tiny_registry: TinyRegistry) -> None:
    config = ServeConfig.from_settings(Settings(qc_salt="pepper-7"), tiny_registry.model.card)
    assert config.policy.salt == "pepper-7" and "pepper-7" not in repr(config)


def test_dead_letter_keeps_exact_bytes_through_base64(served) -> None:
    session, config = served
    raw = bytes(range(256))
    (result,) = process_batch([Record("t", 2, 9, None, raw)], session, config, NOW)
    obj = json.loads(result.outputs[0].value)
    assert base64.b64decode(obj["value_b64"]) == raw and obj["source"] == {"topic": "t", "partition": 2, "offset": 9}
    assert time.time() > 0  # process_batch takes "now" from the caller: no hidden clock in outputs


def test_a_classifier_in_shadow_writes_flagged_predictions_only(served) -> None:
    """Shadow mode is the consumer's, not a kind's: a candidate classifier publishes nothing that
    acts (no decision, no audit item), whatever its routes."""
    session, config = served
    shadow = dataclasses.replace(config, shadow=True)
    records = [request_record(i, good(i)) for i in range(40)]
    live_routes = [r.route for r in process_batch(records, session, config, NOW)]
    results = process_batch(records, session, shadow, NOW)
    assert [r.route for r in results] == live_routes and set(live_routes) >= {Route.HUMAN}
    assert all([o.topic for o in r.outputs] == [config.predictions_topic] for r in results)
    assert all(Prediction.from_bytes(r.outputs[0].value).shadow for r in results)


def test_a_record_that_fails_after_inference_is_dead_lettered_alone(served, monkeypatch) -> None:
    """Whatever step after inference fails on one record (here triage), that record goes to the
    dead-letter topic with its original bytes; the rest of the batch is answered."""
    from serving import consumer

    session, config = served
    real = consumer.triage

    def fussy(request_id, *args, **kwargs):
        if request_id == "req-3":
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return real(request_id, *args, **kwargs)

    monkeypatch.setattr(consumer, "triage", fussy)
    records = [request_record(i, good(i)) for i in range(6)]
    results = process_batch(records, session, config, NOW)
    assert [r.dead_letter_reason for r in results] == [None, None, None, Reason.PROCESSING_FAILED.value, None, None]
    letter = DeadLetter.from_bytes(results[3].outputs[0].value)
    assert letter.value == records[3].value and "UnicodeEncodeError" in letter.detail
    assert all(r.route is not None for k, r in enumerate(results) if k != 3)


def test_a_lone_surrogate_request_id_is_refused_at_decoding(served) -> None:
    session, config = served
    record = request_record(1, good(1))
    poisoned = dataclasses.replace(record, value=record.value.replace(b'"req-1"', b'"req-\\ud800"'))
    (result,) = process_batch([poisoned], session, config, NOW)
    assert result.dead_letter_reason == Reason.UNDECODABLE.value


@pytest.mark.parametrize("created_at_s, observed", [(NOW - 0.5, True), (0.0, False), (NOW + 86_400.0, False)])
def test_absurd_request_times_stay_out_of_the_latency_histograms(served, created_at_s, observed) -> None:
    session, config = served
    req = InferenceRequest("req-t", "tiny", good(1), created_at_s)
    record = Record("auditstream.requests.tiny", 0, 0, req.key, req.to_bytes(), ())
    (result,) = process_batch([record], session, config, NOW)
    assert result.route is not None and (result.end_to_end_s is not None) is observed


def test_a_record_that_breaks_the_decoder_is_dead_lettered_alone(served, monkeypatch) -> None:
    """A decoder bug (an exception other than DecodeError, as float() of a 400-digit integer once
    raised) dead-letters that record; the batch is answered and the consumer goes on."""
    from serving import consumer

    session, config = served
    real = consumer.prepare_input
    calls = iter(range(100))

    def fussy(*args, **kwargs):
        if next(calls) == 2:
            raise OverflowError("int too large to convert to float")
        return real(*args, **kwargs)

    monkeypatch.setattr(consumer, "prepare_input", fussy)
    records = [request_record(i, good(i)) for i in range(5)]
    results = process_batch(records, session, config, NOW)
    assert [r.dead_letter_reason for r in results] == [None, None, Reason.PROCESSING_FAILED.value, None, None]
    assert DeadLetter.from_bytes(results[2].outputs[0].value).value == records[2].value


def test_a_shadow_compares_each_answer_with_the_live_reference(served, tiny_registry: TinyRegistry) -> None:
    """With a :class:`LiveReference` a shadow's prediction says whether live would have given the
    same answer (and live's answer where not): the evidence the paired gate counts on all traffic."""
    session, config = served
    live = tiny_registry.registry.publish(tiny_card(), tiny_classifier_onnx(seed=1))  # another model: some differ
    live_session = load_session(live)
    shadow = dataclasses.replace(config, shadow=True)
    records = [request_record(i, good(i)) for i in range(40)]
    results = process_batch(records, session, shadow, NOW, reference=LiveReference(live.card, live_session))
    live_answers = live_session.run(np.stack([good(i) for i in range(40)]))["probs"].argmax(axis=1)
    same = []
    for r, live_answer in zip(results, live_answers):
        pred = Prediction.from_bytes(r.outputs[0].value)
        same.append(pred.output == str(live_answer))
        assert pred.details["live_reference"] == {"version": live.card.version, "same_answer": same[-1],
                                                  **({} if same[-1] else {"output": str(live_answer)})}
    assert 0 < sum(same) < len(same)
    # the live consumer never compares; a reference that fails leaves the answers without a comparison
    live_results = process_batch(records, session, config, NOW, reference=LiveReference(live.card, live_session))
    assert all("live_reference" not in Prediction.from_bytes(r.outputs[0].value).details for r in live_results)

    class Broken:
        def run(self, batch: np.ndarray) -> dict:
            raise RuntimeError("the reference broke")

        def probe(self) -> None:
            raise RuntimeError("still broken")

    results = process_batch(records, session, shadow, NOW, reference=LiveReference(live.card, Broken()))
    assert [r.route for r in results] == [r.route for r in process_batch(records, session, shadow, NOW)]
    assert all("live_reference" not in Prediction.from_bytes(r.outputs[0].value).details for r in results)


class FixedRunner:
    """Answers every batch with the same seeded probabilities, made with IEEE arithmetic only (no
    exp or log, whose last bits differ between CPUs and libraries): the bytes below depend on
    the serving path alone, not on ONNX Runtime's floating point on this machine."""

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        r = np.random.default_rng(7).random((len(batch), 10))
        r = r * r * r * r * r * r  # sharper: some rows confident, some not
        return {"probs": (r / r.sum(axis=1, keepdims=True)).astype(np.float32)}

    def probe(self) -> None:
        pass


def test_the_serving_paths_bytes_are_pinned(served) -> None:
    """The outputs' exact bytes for fixed requests and model outputs. A redelivery answered by
    another release must be byte-identical (consumers deduplicate on the bytes; the bench counts
    ``non_identical_duplicates``), so a change that moves this digest changes the wire: do that on
    purpose (docs/wire-format.md), never as a side effect of making the path faster."""
    import hashlib

    _session, config = served
    records = [request_record(i, good(i)) for i in range(64)]
    results = process_batch(records, FixedRunner(), config, NOW)
    digest = hashlib.sha256()
    for r in results:
        for out in r.outputs:
            if out.topic != config.predictions_topic:  # prediction headers carry this run's timings
                digest.update(repr(out.headers).encode())
            digest.update(out.topic.encode() + b"\0" + (out.key or b"") + b"\0" + (out.value or b"") + b"\0")
    routes = [r.route for r in results]
    assert {Route.AUTO, Route.AUTO_QC, Route.HUMAN} <= set(routes)
    assert digest.hexdigest() == "ea7c64c9bc884451bca4a1109ead0e3fce3e0599c2fd0b3a68310f35414b9b84"


def test_a_record_whose_outputs_a_topic_would_refuse_is_dead_lettered_and_the_rest_answered(served) -> None:
    # An audit item carries the input: over a (hand-made, ~1 MiB) audit topic's limit, the broker
    # would refuse it and the loop could not go past the record. It is dead-lettered instead,
    # the original whole; the records routed elsewhere are answered as before.
    session, base = served
    records = [request_record(i, good(i)) for i in range(40)]
    plain = process_batch(records, session, base, NOW)
    small = dataclasses.replace(base, topic_limits={base.audit_topic: 600})
    results = process_batch(records, session, small, NOW)
    audited = [i for i, r in enumerate(plain) if r.route in (Route.HUMAN, Route.AUTO_QC)]
    assert audited and len(audited) < 40
    for i, (before, after) in enumerate(zip(plain, results)):
        if i not in audited:
            assert [(o.topic, o.key) for o in after.outputs] == [(o.topic, o.key) for o in before.outputs]
            assert after.route == before.route  # (the bytes differ only in the measured latency)
            continue
        assert after.route is None and after.dead_letter_reason == "too_large" and not after.model_failure
        [out] = after.outputs
        letter = DeadLetter.from_bytes(out.value)
        assert out.topic == base.dead_letter_topic and letter.value == records[i].value
        assert f"its output to {base.audit_topic} would be" in letter.detail and "limit of 600" in letter.detail
    # ... and a dead-letter topic too small for the letter gets one that says where the original is
    i = audited[0]
    carried = results[i].outputs[0]
    just_under = record_bytes(carried.key, carried.value, carried.headers) - 1
    tiny = dataclasses.replace(base, topic_limits={base.audit_topic: 600, base.dead_letter_topic: just_under})
    [out] = process_batch([records[i]], session, tiny, NOW)[0].outputs
    letter = DeadLetter.from_bytes(out.value)
    assert letter.value is None and letter.omitted_bytes > 0 and records[i].where in letter.detail
    assert record_bytes(out.key, out.value, out.headers) <= just_under
