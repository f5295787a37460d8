"""Poison is isolated at every per-record step of the serving consumer (issue 13): whichever step
fails on one record -- the client's read, decoding, input validation, the QC hash, triage,
encoding any output, acting, the episode state -- that record alone becomes one dead letter with
its original bytes and a reason code, and every other record of the batch gets byte-for-byte
the outputs it gets in a batch without the poison. Each step is made to fail for one chosen
record by patching it (the real failures that led here were a lone surrogate reaching the hash
and a 400-digit integer reaching ``float()``; the fuzz tests find such inputs, this table proves
the isolation for every step, including ones no input known today can break)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from tests.conftest import TinyRegistry
from tests.serving.test_episodes import config_for, record as policy_record, request as policy_request
from tests.serving.test_process_batch import NOW, good, request_record
from tests.serving.tiny_policy import cartpole_weights, publish_policy

import qc.triage
import serving.consumer
from auditstream.kafka import Record
from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from auditstream.wire import Action, AuditItem, DeadLetter, Decision, InferenceRequest, Prediction, Reason, Route
from serving.consumer import ServeConfig, process_batch
from serving.episodes import EpisodeStore
from serving.runtime import load_session


class Poisoned(RuntimeError):
    pass


def _failing_for(target: str, real: Callable, id_of: Callable[..., str | None]) -> Callable:
    """``real``, except that it raises for the record whose request id is ``target``."""

    def fn(*args: Any, **kwargs: Any) -> Any:
        if id_of(*args, **kwargs) == target:
            raise Poisoned(f"step failed for {target}")
        return real(*args, **kwargs)

    return fn


def _method(cls: type, name: str, id_of: Callable[[Any], str | None]):
    """Patch for a method of ``cls`` failing on the target's instance."""
    return lambda mp, target: mp.setattr(cls, name, _failing_for(target, getattr(cls, name), lambda self, *a, **k: id_of(self)))


def _from_bytes(mp: pytest.MonkeyPatch, target: str) -> None:
    real = InferenceRequest.from_bytes.__func__

    def from_bytes(cls, data: bytes, *args: Any, **kwargs: Any) -> InferenceRequest:
        if f'"{target}"'.encode() in data:
            raise Poisoned(f"decoder failed for {target}")
        return real(cls, data, *args, **kwargs)

    mp.setattr(InferenceRequest, "from_bytes", classmethod(from_bytes))


# (how to break the step for the target, the reason its dead letter carries, which route the
# target needs for the step to be reached at all)
CLASSIFIER_STEPS: dict[str, tuple[Callable | None, str, tuple[Route, ...]]] = {
    "client read": (None, Reason.UNDECODABLE.value, ()),
    "decode": (_from_bytes, Reason.PROCESSING_FAILED.value, ()),
    "validate input": (lambda mp, target: mp.setattr(serving.consumer, "prepare_input", _failing_for(
        target, serving.consumer.prepare_input, lambda value, spec: target if np.array_equal(
            np.asarray(value), good(int(target.split("-")[1]))) else None)), Reason.PROCESSING_FAILED.value, ()),
    "QC hash": (lambda mp, target: mp.setattr(qc.triage, "hash_uniform", _failing_for(
        target, qc.triage.hash_uniform, lambda request_id, *a: request_id)), Reason.PROCESSING_FAILED.value,
        (Route.AUTO, Route.AUTO_QC)),  # the hash is drawn for answers that could be auto-accepted
    "triage": (lambda mp, target: mp.setattr(serving.consumer, "triage", _failing_for(
        target, serving.consumer.triage, lambda request_id, *a, **k: request_id)), Reason.PROCESSING_FAILED.value, ()),
    "encode prediction": (_method(Prediction, "to_bytes", lambda p: p.request_id), Reason.PROCESSING_FAILED.value, ()),
    "encode decision": (_method(Decision, "to_bytes", lambda d: d.request_id), Reason.PROCESSING_FAILED.value,
                        (Route.AUTO, Route.AUTO_QC)),
    "encode audit item": (_method(AuditItem, "to_bytes", lambda a: a.prediction.request_id),
                          Reason.PROCESSING_FAILED.value, (Route.HUMAN, Route.AUTO_QC)),
}


def _assert_isolated(records: list[Record], clean: list, poisoned: list, target: int, reason: str,
                     unaffected: Callable[[int], bool] = lambda i: True) -> None:
    assert [r.dead_letter_reason for r in poisoned] == [reason if i == target else r.dead_letter_reason
                                                        for i, r in enumerate(clean)]
    (out,) = poisoned[target].outputs
    letter = DeadLetter.from_bytes(out.value)
    assert letter.value == records[target].value and letter.source_offset == records[target].offset
    for i, (a, b) in enumerate(zip(clean, poisoned)):
        if i != target and unaffected(i):  # the rest of the batch: exactly what it gets without the poison
            assert [(o.topic, o.key, o.value) for o in a.outputs] == [(o.topic, o.key, o.value) for o in b.outputs]


@pytest.mark.parametrize("step", sorted(CLASSIFIER_STEPS))
def test_a_classifier_step_failing_on_one_record_dead_letters_it_alone(
        tiny_registry: TinyRegistry, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    session = load_session(tiny_registry.model)
    config = ServeConfig.from_settings(Settings(max_request_bytes=4096, qc_rate=0.3), tiny_registry.model.card)
    records = [request_record(i, good(i)) for i in range(24)]
    clean = process_batch(records, session, config, NOW)
    patch, reason, routes = CLASSIFIER_STEPS[step]
    target = next(i for i, r in enumerate(clean) if not routes or r.route in routes)
    target_id = f"req-{target}"
    if patch is None:  # the client could not read the record (a header name that is not UTF-8)
        records[target] = dataclasses.replace(records[target], headers=(), unreadable="headers unreadable")
    else:
        patch(monkeypatch, target_id)
    _assert_isolated(records, clean, process_batch(records, session, config, NOW), target, reason)


def _episode_store_patch(name: str, request_id: Callable[..., str] = lambda self, request, *a, **k: request.request_id
                         ) -> Callable:
    return lambda mp, target: mp.setattr(EpisodeStore, name, _failing_for(target, getattr(EpisodeStore, name), request_id))


POLICY_STEPS = {
    "episode state: observe": _episode_store_patch("observe"),
    "episode state: decided": _episode_store_patch(  # an observed step: its request's id, as policy_request makes it
        "decided", lambda self, step, *a, **k: f"{step.state.episode_key}-s{step.entry[0]}"),
    "episode state: end": _episode_store_patch("end"),
    "act": lambda mp, target: mp.setattr(serving.consumer, "_act", _failing_for(
        target, serving.consumer._act, lambda task, answer, request, *a: request.request_id)),
    "encode action": _method(Action, "to_bytes", lambda a: a.request_id),
}


@pytest.mark.parametrize("step", sorted(POLICY_STEPS))
def test_a_policy_step_failing_on_one_record_dead_letters_it_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Three episodes stepped in one batch; one step of one episode fails: the other episodes'
    answers and states are exactly those of a clean batch."""
    model = publish_policy(ModelRegistry(tmp_path / "models"), "stacked", cartpole_weights(scale=4.0), threshold=0.6)
    session, config = load_session(model), config_for(model)
    obs = np.random.default_rng(5).standard_normal((4, 4)).astype(np.float32)
    requests = [policy_request(s, obs[s], key=f"ep-{e}", end=(step.endswith("end") and s == 3))
                for s in range(4) for e in range(3)]
    records = [policy_record(r, i, partition=3) for i, r in enumerate(requests)]

    def run() -> tuple[list, EpisodeStore]:
        store = EpisodeStore(model.card, "t.episode-state")
        return process_batch(records, session, config, 1.0e9, store), store

    clean, clean_store = run()
    target = 3 * 3 + 1 if step.endswith("end") else 2 * 3 + 1  # episode ep-1: its end marker, or its step 2
    POLICY_STEPS[step](monkeypatch, requests[target].request_id)
    poisoned, store = run()
    # later steps of the poisoned episode see its state without the failed step; nothing else moves
    _assert_isolated(records, clean, poisoned, target, Reason.PROCESSING_FAILED.value,
                     unaffected=lambda i: requests[i].episode_key != "ep-1")
    def state(s: EpisodeStore, key: str) -> bytes | None:  # without the wall-clock time of its last step
        return dataclasses.replace(s.states[key], updated_at_s=0.0).to_bytes() if key in s.states else None

    for key in ("ep-0", "ep-2"):  # the other episodes are untouched
        assert state(store, key) == state(clean_store, key)
