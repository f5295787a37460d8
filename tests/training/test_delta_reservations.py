"""Certificate indices are drawn, not just counted (training/selective.py ``reserve=True``).

Before, each training counted the versions in the registry when it certified: two trainings of one
model certifying at once both got index k and both certified at δ_k, so together they spent more
than the schedule allows; and a certificate computed but never published (``--no-publish``, a
crash) was forgotten, though whoever read its summary may have acted on it."""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path

import pytest

from auditstream.registry import ModelRegistry
from qc.delta_spending import CertificateSlice, delta_at
from tests.conftest import tiny_card, tiny_classifier_onnx
from training.selective import RESERVATIONS_DIR, CannotSpendDelta, certificate_spending, spending_extra

SLICE = CertificateSlice("calibration/certificate", 7, {"calibration": 0.2}, "ab" * 32)


def _draw(models: str, start: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue) -> None:  # type: ignore[name-defined]
    start.wait()
    out.put(certificate_spending(Path(models), "digits", 0.05, SLICE, reserve=True).index)


def test_trainings_certifying_at_once_draw_different_indices(tmp_path: Path) -> None:
    n = 6
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_draw, args=(str(tmp_path), start, out)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(out.get(timeout=5) for _ in range(n)) == list(range(1, n + 1))


def test_a_drawn_certificate_that_was_never_published_still_counts(tmp_path: Path) -> None:
    first = certificate_spending(tmp_path, "digits", 0.05, SLICE, reserve=True)
    assert first.index == 1
    after = certificate_spending(tmp_path, "digits", 0.05, SLICE)
    assert after.index == 2 and after.spent_before == pytest.approx(delta_at(0.05, 1))
    assert after.earlier == [{"version": f"drawn {_only_file(tmp_path).stem}", "index": 1,
                              "delta": pytest.approx(delta_at(0.05, 1))}]


def test_publishing_the_drawn_certificate_does_not_count_it_twice(tmp_path: Path) -> None:
    spending = certificate_spending(tmp_path, "digits", 0.05, SLICE, reserve=True)
    card = dataclasses.replace(tiny_card("digits"), extra=spending_extra(spending), training={})
    card = dataclasses.replace(card, triage=dataclasses.replace(card.triage, delta=spending.delta))
    ModelRegistry(tmp_path).publish(card, tiny_classifier_onnx())
    after = certificate_spending(tmp_path, "digits", 0.05, SLICE)
    assert after.index == 2 and after.spent_before == pytest.approx(delta_at(0.05, 1))
    assert [e["version"] for e in after.earlier] == ["1"]


def test_a_drawn_index_on_another_slice_starts_its_own_count(tmp_path: Path) -> None:
    certificate_spending(tmp_path, "digits", 0.05, SLICE, reserve=True)
    other = dataclasses.replace(SLICE, indices_sha256="cd" * 32)
    assert certificate_spending(tmp_path, "digits", 0.05, other).index == 1
    assert certificate_spending(tmp_path, "digits", 0.05, SLICE).index == 2


@pytest.mark.parametrize("content", ["", "{", "[]", '{"delta_spending": {"index": 1}}', '{"delta_spending": 3}',
                                     '{"delta_spending": {"index": 1, "delta": NaN}}',
                                     '{"delta_spending": {"index": 1, "delta": 0}}'])
def test_a_damaged_drawn_certificate_is_refused_not_ignored(tmp_path: Path, content: str) -> None:
    certificate_spending(tmp_path, "digits", 0.05, SLICE, reserve=True)
    _only_file(tmp_path).write_text(content)
    with pytest.raises(CannotSpendDelta, match="drawn certificate .* cannot be read"):
        certificate_spending(tmp_path, "digits", 0.05, SLICE)


def test_the_drawn_indices_do_not_look_like_versions(tmp_path: Path) -> None:
    certificate_spending(tmp_path, "digits", 0.05, SLICE, reserve=True)
    assert ModelRegistry(tmp_path).versions("digits") == []


def _only_file(models: Path) -> Path:
    (found,) = (models / "digits" / RESERVATIONS_DIR).glob("*.json")
    return found
