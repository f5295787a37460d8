"""Inference for the serving consumer: one ONNX Runtime run per group of equally shaped inputs,
and the line between a bad record and a broken model (STYLE habit 7: a bad record fails alone, a
broken dependency stops the process loudly).

:func:`infer` runs the stacked group; if the run fails it retries row by row to find the
culprit. When every row fails -- also a "group" of one record under light traffic -- the
session's warm-up input is run again (:meth:`Runner.probe`): if the model still runs on it, the
records are bad and each gets its own error (an ``inference_failed`` dead letter); if not, the
model is broken and :class:`~auditstream.errors.InferenceBroken` stops the process with nothing
committed. :class:`FailureStreak`, kept by the app across batches, also stops it when ``limit``
records in a row fail: a model that still runs the warm-up input but no real request is broken
too, and dead-lettering every request would only hide it.

Only the ``run`` calls are timed (``inference-s`` of each record: its own group's ORT time).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from auditstream.errors import InferenceBroken
from auditstream.registry import ModelCard
from auditstream.wire import Reason
from auditstream.tasks import Answer, lookup

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
    try:
        return list(postprocess(card, run(np.stack(arrays)))), ort_s
    except Exception as batch_error:  # noqa: BLE001 - any runtime error: find out whose it is below
        rows: list[Answer | None | Exception] = [batch_error]
    if len(arrays) > 1:
        rows = []
        for a in arrays:
            try:
                rows.append(postprocess(card, run(a[None]))[0])
            except Exception as e:  # noqa: BLE001 - this row's own error, dead-lettered with it
                rows.append(e)
    if all(isinstance(r, Exception) for r in rows):
        try:
            session.probe()
        except Exception as probe_error:  # whatever it is, the model does not run
            raise InferenceBroken(card.name, card.version, f"{len(arrays)} record(s) failed ({rows[0]!r}) and so "
                                  f"did the warm-up input ({probe_error!r})") from probe_error
    return rows, ort_s


class FailureStreak:
    """Records in a row whose inference failed, across batches; at ``limit`` the model is broken.

    The probe in :func:`_infer` catches a model that no longer runs at all; this catches one that
    still runs the warm-up input but fails on every real request (say, a GPU that fails large
    batches only): without it, every request would be dead-lettered one by one.
    """

    def __init__(self, card: ModelCard, limit: int = MAX_CONSECUTIVE_INFERENCE_FAILURES) -> None:
        if limit < 1:
            raise ValueError(f"limit={limit} must be >= 1")
        self.card, self.limit, self.count = card, limit, 0

    def observe(self, results: Sequence[Any]) -> None:
        """Count a batch's :class:`serving.consumer.RecordResult` in order; raises InferenceBroken
        at ``limit`` in a row."""
        for r in results:
            if r.dead_letter_reason in (Reason.INFERENCE_FAILED.value, Reason.PROCESSING_FAILED.value):
                self.count += 1
                if self.count >= self.limit:
                    raise InferenceBroken(self.card.name, self.card.version,
                                          f"the last {self.count} records in a row failed inference or processing")
            elif r.route is not None:
                self.count = 0  # answered: the model works
