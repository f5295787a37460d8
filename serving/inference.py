"""Inference for the serving consumer: one ONNX Runtime run per group of equally shaped inputs,
and the line between a bad record and a broken model (STYLE habit 7: a bad record fails alone, a
broken dependency stops the process loudly).

:func:`infer` runs the stacked group; if the run fails it retries row by row to find the
culprit. When every row fails -- also a "group" of one record under light traffic -- the
session's warm-up input is run again (:meth:`Runner.probe`): if the model still runs on it, the
records are bad and each gets its own error (an ``inference_failed`` dead letter); if not, the
model is broken and :class:`~auditstream.errors.InferenceBroken` stops the process with nothing
committed. :class:`FailureStreak`, kept by the app across batches, also stops it when ``limit``
records in a row fail and the model no longer answers the last request it did answer: a model
that still runs the warm-up input but no real request is broken too, and dead-lettering every
request would only hide it; one that still answers it was sent a run of inputs it cannot handle.
A batch whose outputs do not have one row per input (an output reduced over the batch axis), or
whose outputs disagree with the card's dtype, rank or static sizes (a label index past the
card's labels would otherwise be answered), is run again row by row, like a batch that failed.

Only the ``run`` calls are timed (``inference-s`` of each record: its own group's ORT time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from auditstream.errors import InferenceBroken
from auditstream.registry import ModelCard
from auditstream.tasks import Answer, lookup
from serving.vetting import output_mismatch

log = logging.getLogger(__name__)

# Records in a row whose inference failed (across batches) before the model counts as broken.
MAX_CONSECUTIVE_INFERENCE_FAILURES = 50


class Runner(Protocol):
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def probe(self) -> None:
        """Run a known-good input (the warm-up); raise if the model does not run at all."""



def infer(session: Runner, card: ModelCard, arrays: list[np.ndarray]) -> tuple[list[Answer | None | Exception], float]:
    """One answer (or error) per array and the seconds spent inside ONNX Runtime. One stacked run;
    if it fails, each row alone (to isolate the culprit). If every row fails, the probe tells bad
    records (each its own error) from a broken model (raises InferenceBroken)."""
    ort_s = 0.0

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal ort_s
        started = time.perf_counter()
        try:
            return session.run(batch)
        finally:
            ort_s += time.perf_counter() - started

    postprocess = lookup(card.task).postprocess

    specs = [(o.name, str(o.dtype), tuple(d if isinstance(d, int) else None for d in o.shape)) for o in card.outputs]

    def answers(batch: np.ndarray) -> list[Answer | None]:
        outputs = run(batch)
        wrong = output_mismatch(outputs, specs, len(batch))
        if wrong is not None:  # checked at warm-up too; a shape that depends on the input is caught here
            raise ModelOutputError(wrong)
        out = list(postprocess(card, outputs))
        if len(out) != len(batch):  # e.g. an output reduced over the batch axis: rows would pair with wrong records
            raise ModelOutputError(f"the model answered {len(out)} row(s) for a batch of {len(batch)}")
        return out

    try:
        return answers(np.stack(arrays)), ort_s
    except Exception as batch_error:  # noqa: BLE001 - any runtime error: find out whose it is below
        rows: list[Answer | None | Exception] = [batch_error]
    if len(arrays) > 1:
        rows = []
        for a in arrays:
            try:
                rows.append(answers(a[None])[0])
            except Exception as e:  # noqa: BLE001 - this row's own error, dead-lettered with it
                rows.append(e)
    if all(isinstance(r, Exception) for r in rows):
        try:
            session.probe()
        except Exception as probe_error:  # whatever it is, the model does not run
            raise InferenceBroken(card.name, card.version, f"{len(arrays)} record(s) failed ({rows[0]!r}) and so "
                                  f"did the warm-up input ({probe_error!r})") from probe_error
    return rows, ort_s


class ModelOutputError(RuntimeError):
    """The model's outputs do not fit the batch it was given."""


class FailureStreak:
    """Records in a row whose model failed (inference, or processing after it), across batches.

    The probe in :func:`infer` catches a model that no longer runs at all; this catches one that
    still runs the warm-up input (zeros) but fails on every real request (say, a GPU that fails
    every real batch): without it, every request would be dead-lettered one by one. Records that
    failed before reaching the model (undecodable, wrong shape, a decoder's own error) neither
    count nor break a streak: they say nothing about the model.

    At ``limit`` the model is checked once more on the input of the last request it answered in
    this process (``runner`` given): a model that still answers it works, so the streak was a run
    of inputs it cannot handle (finite values that overflow inside it, hand-made or hostile
    requests) -- they stay dead-lettered one by one and the streak starts over, with a warning;
    stopping would let anyone who can write to the request topic stop a working consumer. If that
    input fails too, or nothing was answered yet, the model is broken: InferenceBroken.
    """

    def __init__(self, card: ModelCard, limit: int = MAX_CONSECUTIVE_INFERENCE_FAILURES,
                 runner: Runner | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit={limit} must be >= 1")
        self.card, self.limit, self.runner, self.count = card, limit, runner, 0
        self.answered_input: np.ndarray | None = None  # the input of the last record the model answered
        self.rechecks = 0  # streaks the model survived by answering that input again

    def observe(self, results: Sequence[Any]) -> None:
        """Count a batch's :class:`serving.consumer.RecordResult` in order; raises InferenceBroken
        at ``limit`` in a row unless the model still answers a request it answered before."""
        for r in results:
            if r.model_failure:
                self.count += 1
                if self.count >= self.limit:
                    self._recheck()
            elif r.route is not None:
                self.count = 0  # answered: the model works
                if r.model_input is not None:
                    self.answered_input = r.model_input

    def _recheck(self) -> None:
        streak = f"the last {self.count} records in a row failed inference or processing"
        if self.runner is None or self.answered_input is None:
            raise InferenceBroken(self.card.name, self.card.version,
                                  streak + ("" if self.runner is None else ", and it has answered no request yet"))
        rows, _ = infer(self.runner, self.card, [self.answered_input])  # raises if not even the warm-up runs
        if not isinstance(rows[0], Answer):
            raise InferenceBroken(self.card.name, self.card.version,
                                  f"{streak}, and so did a request it answered before ({rows[0]!r})")
        self.rechecks += 1
        log.warning("model %s v%s: %s, but it still answers a request it answered before: they are inputs it "
                    "cannot handle (dead-lettered), not a broken model", self.card.name, self.card.version, streak)
        self.count = 0
