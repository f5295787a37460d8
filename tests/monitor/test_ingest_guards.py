"""What the monitor's ingest refuses, so that no record it takes can stop it later: NUL
characters (PostgreSQL stores none: a shadow answer or a QC-history row holding one stopped the
monitor on every restart), items a verdict on which could never be published (too large for the
output topics), a request id another model already used; and one shadow answer the store
refuses fails alone. On SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from tests.monitor.test_service import _record
from tests.store.store_factories import BACKENDS, audit_item, make_store

from auditstream import topics
from auditstream.kafka.limits import MAX_PRODUCE_BYTES, record_bytes
from auditstream.settings import Settings
from auditstream.wire import DeadLetter, Prediction, Reason, Route, VerdictKind
from monitor.service import StatsHooks, ingest_batch
from store.records import MAX_CORRECTION_BYTES, StoredItem, VerdictRecord, outbox_bytes_bound, outbox_records
from store.shadow import ShadowAnswers

T0 = 7_000.0
SETTINGS = Settings(topic_prefix="t")
AUDIT, PREDICTIONS = SETTINGS.topic(topics.AUDIT), SETTINGS.topic(topics.PREDICTIONS)


def _letter(result: list) -> DeadLetter:
    (output,) = result
    return DeadLetter.from_bytes(output.value)


def _shadow(request_id: str, **changes) -> Prediction:
    return dataclasses.replace(audit_item(request_id).prediction, model_version="v2", route=Route.AUTO, shadow=True,
                               **changes)


# -- NUL characters


@pytest.mark.parametrize("backend", BACKENDS)
def test_nul_anywhere_is_dead_lettered_at_decoding_and_the_batch_goes_on(backend: str, tmp_path: Path) -> None:
    """The reported cases (review r9, r10): a shadow answer whose request id holds NUL, and a
    prediction whose version does. Each is a ``bad_schema`` dead letter with its bytes; the good
    records beside them are stored, and the next statistics tick saves its history."""
    bad = [_shadow("x\x00y"), dataclasses.replace(audit_item("p1").prediction, model_version="1\x00", route=Route.AUTO),
           dataclasses.replace(audit_item("z\x00w"))]
    values = [audit_item("good-1").to_bytes(), bad[0].to_bytes(), bad[1].to_bytes(), bad[2].to_bytes(),
              _shadow("good-2").to_bytes()]
    records = [_record(AUDIT, values[0], 0), _record(PREDICTIONS, values[1], 1), _record(PREDICTIONS, values[2], 2),
               _record(AUDIT, values[3], 3), _record(PREDICTIONS, values[4], 4)]
    with make_store(backend, tmp_path) as store:
        hooks = StatsHooks(dataclasses.replace(SETTINGS, models_dir=tmp_path / "models"), store, None, CollectorRegistry())
        shadow = ShadowAnswers(store)
        results = ingest_batch(store, SETTINGS, records, T0, hooks.observe_prediction, shadow)
        assert [len(r) for r in results] == [0, 1, 1, 1, 0]
        for i in (1, 2, 3):
            letter = _letter(results[i])
            assert letter.reason == "bad_schema" and "NUL" in letter.detail and letter.value == values[i]
        assert store.queue_depth() == 1 and shadow.candidates("zip") == {"v2": 1}
        hooks.tick(store, T0 + 1)  # the QC history saves (it once raised here, every tick)


# -- a shadow answer the store refuses


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shadow_answer_the_store_refuses_fails_alone(backend: str, tmp_path: Path, monkeypatch) -> None:
    """Its batch's transaction fails; each answer is then written alone: the refused one is a
    dead letter, the other shadow answer and the audit item in the batch are stored (a shadow
    write used to run outside the per-record guard: the whole batch failed, on every restart)."""
    values = [audit_item("good-1").to_bytes(), _shadow("refused").to_bytes(), _shadow("kept").to_bytes()]
    records = [_record(AUDIT, values[0], 0), _record(PREDICTIONS, values[1], 1), _record(PREDICTIONS, values[2], 2)]
    with make_store(backend, tmp_path) as store:
        shadow = ShadowAnswers(store)
        real = shadow.ingest

        def ingest(predictions, now_s):  # a content the store takes no more than NUL
            if any(p.request_id == "refused" for p in predictions):
                raise ValueError("this database refuses that answer")
            return real(predictions, now_s)

        monkeypatch.setattr(shadow, "ingest", ingest)
        results = ingest_batch(store, SETTINGS, records, T0, shadow=shadow)
        assert [len(r) for r in results] == [0, 1, 0]
        letter = _letter(results[1])
        assert letter.reason == "processing_failed" and "refuses that answer" in letter.detail and letter.value == values[1]
        assert store.queue_depth() == 1 and shadow.candidates("zip") == {"v2": 1}


def test_a_broken_store_stops_the_shadow_ingest(tmp_path: Path, monkeypatch) -> None:
    """Every shadow write fails, tried again too, not because of a record: the store is broken, the batch's error
    stops the monitor (nothing committed) instead of dead-lettering good answers."""
    import sqlite3

    with make_store("sqlite", tmp_path) as store:
        shadow = ShadowAnswers(store)

        def down(*args, **kwargs):
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(shadow, "ingest", down)
        monkeypatch.setattr("monitor.service.STORE_RETRY_DELAYS_S", (0.0, 0.0))  # tried three times, then raised
        with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
            ingest_batch(store, SETTINGS, [_record(PREDICTIONS, _shadow("a").to_bytes(), 0)], T0, shadow=shadow)


# -- any text in any string field: decoded and storable, or refused


def _string_paths(obj, prefix=()):
    if isinstance(obj, str):
        yield prefix
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _string_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _string_paths(v, prefix + (i,))


def _with_text(obj: dict, path: tuple, text: str) -> bytes:
    target = obj
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = text
    return json.dumps(obj).encode("utf-8", "surrogatepass")


# NUL, lone surrogates and everything else; JSON writes each as an escape or as UTF-8.
ANY_TEXT = st.text(st.characters(codec=None) | st.sampled_from(["\x00", "\ud800", "\udfff"]), min_size=1, max_size=12)


@pytest.mark.postgres
def test_any_text_in_any_string_field_is_stored_in_postgresql_or_refused(tmp_path: Path) -> None:
    """Audit items, live and shadow predictions with arbitrary Unicode in one string field (ids,
    model, version, reason, task, route, output, details, dtype...): each is a ``DecodeError``
    dead letter (bad_schema, undecodable, unsupported_version) or is stored -- never a store
    error, never a failed batch -- and the statistics tick after them saves its history."""
    item = audit_item("fz")
    item = dataclasses.replace(item, prediction=dataclasses.replace(item.prediction, episode_key="ep", step=3,
                                                                    details={"char_conf": [0.9], "why": "low"}))
    templates = {AUDIT: json.loads(item.to_bytes()), PREDICTIONS: json.loads(_shadow("fz").to_bytes())}
    live = json.loads(dataclasses.replace(item.prediction, route=Route.AUTO).to_bytes())
    not_decoding = {Reason.PROCESSING_FAILED.value, Reason.DUPLICATE_REQUEST_ID.value}  # a store's or a later step's
    with make_store("postgres", tmp_path) as store:
        hooks = StatsHooks(dataclasses.replace(SETTINGS, models_dir=tmp_path / "models"), store, None, CollectorRegistry())
        shadow = ShadowAnswers(store)
        counter, outcomes = iter(range(10**9)), Counter()

        @hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(data=st.data())
        def check(data) -> None:
            topic, template = data.draw(st.sampled_from([(AUDIT, templates[AUDIT]), (PREDICTIONS, templates[PREDICTIONS]),
                                                          (PREDICTIONS, live)]))
            obj = json.loads(json.dumps(template))
            n = next(counter)
            obj["request_id"] = f"fz-{n}"  # each example its own request (a field drawn below may replace it)
            path = data.draw(st.sampled_from(list(_string_paths(obj))))
            value = _with_text(obj, path, data.draw(ANY_TEXT))
            (result,) = ingest_batch(store, SETTINGS, [_record(topic, value, n)], T0, hooks.observe_prediction, shadow)
            if result:
                assert _letter(result).reason not in not_decoding, _letter(result)
            outcomes[_letter(result).reason if result else "taken"] += 1
            hooks.tick(store, T0 + n)

        check()
        assert outcomes["taken"] and outcomes["bad_schema"], outcomes  # both sides were exercised


# -- too large to publish


def _caption_item(request_id: str, output: str) -> bytes:
    item = audit_item(request_id, model="captioner", output="x")
    obj = json.loads(dataclasses.replace(item, prediction=dataclasses.replace(item.prediction, task="caption",
                                                                               details={})).to_bytes())
    obj["output"] = output
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")  # raw UTF-8, as another client may write it


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_item_whose_verdict_could_not_be_published_is_dead_lettered_too_large(backend: str, tmp_path: Path) -> None:
    """Review r5: a caption of 1.9 M emoji is 7.6 MB of UTF-8, under the record limit; its verdict
    escapes each to 12 bytes: 23 MB, which no producer sends -- once accepted, the outbox failed
    on every round, for good. Now the item is a ``too_large`` dead letter with its bytes; so is
    one over a smaller output topic's limit, while one under it is stored."""
    huge = _caption_item("cap-1", "\U0001F600" * 1_900_000)
    small = _caption_item("cap-2", "a" * 30_000)
    with make_store(backend, tmp_path) as store:
        results = ingest_batch(store, SETTINGS, [_record(AUDIT, huge, 0), _record(AUDIT, audit_item("ok").to_bytes(), 1)], T0)
        letter = _letter(results[0])
        assert letter.reason == "too_large" and letter.value == huge and "could never be published" in letter.detail
        assert results[1] == [] and store.queue_depth() == 1
        limit = MAX_CORRECTION_BYTES + 20_000  # a topic that takes the largest correction, but not this output with it
        (result,) = ingest_batch(store, SETTINGS, [_record(AUDIT, small, 2)], T0, output_limit=limit)
        assert _letter(result).reason == "too_large"
        assert ingest_batch(store, SETTINGS, [_record(AUDIT, small, 2)], T0, output_limit=limit + 40_000) == [[]]
        assert store.queue_depth() == 2


WIDE = "\U0001F600"


@hsettings(max_examples=60, deadline=None)
@given(request_id=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40),
       episode_key=st.none() | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40),
       output=st.recursive(st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)),
       route=st.sampled_from([Route.HUMAN, Route.AUTO_QC]), kind=st.sampled_from(list(VerdictKind)),
       correction_chars=st.integers(0, MAX_CORRECTION_BYTES // 12 - 2))
def test_no_record_a_verdict_publishes_exceeds_the_bound(request_id, episode_key, output, route, kind,
                                                          correction_chars) -> None:
    """The bound the ingest checks (outbox_bytes_bound) is never below a record a verdict on the
    item really puts on the outbox, whatever the verdict: its id and auditor at their longest,
    the largest correction (emoji, 12 bytes each in JSON), any time."""
    item = audit_item(request_id, route=route, output=output)
    item = dataclasses.replace(item, prediction=dataclasses.replace(item.prediction, episode_key=episode_key,
                                                                    step=None if episode_key is None else 2**62))
    p = item.prediction
    stored = StoredItem(1, p.request_id, p.model, p.model_version, p.task, p.route, p.confidence, p.qc_inclusion_prob,
                        json.loads(json.dumps(p.output)), p.details, {}, p.reason, p.created_at_s, T0, False, 1, 0,
                        "open", None, None, p.episode_key, p.step)
    corrected = WIDE * correction_chars if kind is VerdictKind.CORRECT else None
    verdict = VerdictRecord(WIDE * 64, 1, "a" * 64, kind, corrected, -1.7976931348623157e308, 1, False, None)
    bound = outbox_bytes_bound(item)
    for _topic, key, value in outbox_records(stored, verdict, first_decision=True):
        assert record_bytes(key, value) <= bound
    assert bound < MAX_PRODUCE_BYTES  # small items are never refused


# -- one request id, two models


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_request_id_sent_to_two_models_is_a_visible_duplicate(backend: str, tmp_path: Path) -> None:
    """Review r3: the same id, input and time sent to two models at version "1". The store's key is
    (request id, model version), so it keeps the first; the second model's item used to vanish
    (neither stored nor dead-lettered). Now it is a ``duplicate_request_id`` dead letter, and a
    redelivery of the first is still nothing."""
    a = audit_item("img-42", model="zip-reader", version="1", output="12345")
    b = audit_item("img-42", model="zip-reader-b", version="1", output="54321")
    with make_store(backend, tmp_path) as store:
        assert ingest_batch(store, SETTINGS, [_record(AUDIT, a.to_bytes(), 0)], T0) == [[]]
        (result,) = ingest_batch(store, SETTINGS, [_record(AUDIT, b.to_bytes(), 1)], T0)
        letter = _letter(result)
        assert letter.reason == "duplicate_request_id" and letter.value == b.to_bytes() and "another model" in letter.detail
        assert ingest_batch(store, SETTINGS, [_record(AUDIT, a.to_bytes(), 2)], T0) == [[]]  # a redelivery
        assert store.queue_depth() == 1 and not store.stored_differently(a) and store.stored_differently(b)
        other_version = audit_item("img-42", model="zip-reader-b", version="2")
        assert ingest_batch(store, SETTINGS, [_record(AUDIT, other_version.to_bytes(), 3)], T0) == [[]]  # another key

