"""Simulation: how often the served FDR of a detector certificate exceeds alpha, the current rule
(qc/detection_certify.py: the served FDR, ``t_low`` from the selection labels) against the rule
before it (the pooled FDR of every box >= t_high, ``t_low`` from CRC on all the labels, ``t_high``
lifted to it). docs/detector.md, "Certification", has the table this prints.

``python -m training.detector.served_fdr_sim POPULATION RUNS [N_CERT N_PILOT ALPHA BETA DELTA]``
with POPULATION one of :data:`POPULATIONS`. Each run draws fresh certificate and pilot labels,
certifies with both rules, and measures the served FDR at each served pair on a large population
of labels. Pure numpy; about 0.3 s a run on one core.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np

from qc.detection_certify import (HIGH_GRID, NOT_CERTIFIED, ScoredBoxes, certify_detection, certify_low,
                                  fdr_losses, miss_losses, served_counts, start_threshold, wsr_p)

K = 16


def _labels(s: np.ndarray, t: np.ndarray, objects: np.ndarray | None = None) -> ScoredBoxes:
    n = len(s)
    return ScoredBoxes(s.ravel(), t.ravel(), np.repeat(np.arange(n), K), t.sum(1) if objects is None else objects)


def reviewer(n: int, rng: np.random.Generator) -> ScoredBoxes:
    """A review's population: half the labels one box at 0.95 (false w.p. 4%); half
    eight boxes at 0.95 (false w.p. 0.5%) and one at 0.5 (false w.p. 30%); junk rows at 0.01."""
    one = rng.random(n) < 0.5
    s, t = np.full((n, K), 0.01), np.zeros((n, K), bool)
    s[:, 0], t[:, 0] = 0.95, rng.random(n) >= np.where(one, 0.04, 0.005)
    s[~one, 1:8], t[~one, 1:8] = 0.95, rng.random(((~one).sum(), 7)) >= 0.005
    s[~one, 8], t[~one, 8] = 0.5, rng.random((~one).sum()) >= 0.3
    return _labels(s, t)


def three_kinds(n: int, rng: np.random.Generator) -> ScoredBoxes:
    """A (30%): one box at 0.95, false w.p. 12%. B (30%): eight boxes at 0.95 (false w.p. 0.5%) and a
    doubtful one at 0.5 (false w.p. 30%) that the miss budget keeps, so B always goes to an
    auditor. C (40%): four boxes at 0.97 (false w.p. 0.3%). Junk rows at 0.01 fill to K. Served FDR:
    0.3% with t_high in (0.95, 0.97] (C alone is auto), 2.15% with t_high <= 0.95 (A and C); every
    box >= t_high pooled, for t_high in (0.5, 0.95]: 1.23%. Only the 4-box kind serves clean."""
    u = rng.random(n)
    a, b, c = u < 0.3, (u >= 0.3) & (u < 0.6), u >= 0.6
    s, t = np.full((n, K), 0.01), np.zeros((n, K), bool)
    s[a, 0], t[a, 0] = 0.95, rng.random(a.sum()) >= 0.12
    s[b, :8], t[b, :8] = 0.95, rng.random((b.sum(), 8)) >= 0.005
    s[b, 8], t[b, 8] = 0.5, rng.random(b.sum()) >= 0.3
    s[c, :4], t[c, :4] = 0.97, rng.random((c.sum(), 4)) >= 0.003
    return _labels(s, t)


def flat(n: int, rng: np.random.Generator, q: float = 0.021) -> ScoredBoxes:
    """1-8 objects found by boxes scoring U(0.5, 1), each false w.p. ``q`` whatever its score; junk
    rows U(0, 0.2): the served FDR is ``q`` at every pair (the null's edge for alpha = 2%)."""
    m = rng.integers(1, 9, n)
    has = np.arange(8)[None, :] < m[:, None]
    s = np.where(has, rng.uniform(0.5, 1.0, (n, 8)), rng.uniform(0.0, 0.2, (n, 8)))
    t = has & (rng.random((n, 8)) >= q)
    return _labels(np.concatenate([s, rng.uniform(0.0, 0.2, (n, K - 8))], 1),
                   np.concatenate([t, np.zeros((n, K - 8), bool)], 1))


def synthetic(n: int, rng: np.random.Generator) -> ScoredBoxes:
    """Images with 1-8 objects; each object is found (p = 0.97) by a true box scoring ~Beta(9, 1);
    false boxes (Poisson 3 per image) score ~Beta(1.3, 3), so the FDR of ``score >= t`` climbs past
    a few percent as ``t`` falls; at most K boxes per image (the highest)."""
    scores, true, image = [], [], []
    n_objects = rng.integers(1, 9, size=n)
    for i, m in enumerate(n_objects):
        found = rng.random(m) < 0.97
        s = np.concatenate([rng.beta(9, 1, size=found.sum()), rng.beta(1.3, 3, size=rng.poisson(3))])
        t = np.concatenate([np.ones(found.sum(), bool), np.zeros(len(s) - found.sum(), bool)])
        top = np.argsort(-s)[:K]
        scores.append(s[top]), true.append(t[top]), image.append(np.full(len(top), i))
    return ScoredBoxes(np.concatenate(scores), np.concatenate(true), np.concatenate(image), n_objects)


POPULATIONS: dict[str, Callable[[int, np.random.Generator], ScoredBoxes]] = {
    "reviewer": reviewer, "three_kinds": three_kinds, "flat": flat, "synthetic": synthetic}


def old_rule(data: ScoredBoxes, pilot: ScoredBoxes, alpha: float, beta: float, delta: float) -> tuple[float, float]:
    """(t_high, t_low) by the rule before the served-FDR certificate: fixed sequence on the pooled
    FDR of every box >= t from the pilot's start, CRC on all the labels, ``t_high`` lifted to the
    lowest rejected threshold >= ``t_low`` (or ``t_low`` lowered to ``t_high``)."""
    start = start_threshold(pilot, alpha)
    rejected = []
    for t in (t for t in HIGH_GRID if t <= start):
        if wsr_p(fdr_losses(data, t, alpha, K), alpha, delta) > delta:
            break
        rejected.append(float(t))
    low = certify_low(data, beta).threshold
    if not rejected:
        return NOT_CERTIFIED, low
    high = min(rejected)
    if low <= high:
        return high, low
    above = [t for t in rejected if t >= low]
    return (min(above), low) if above else (high, high)


def served_fdr(population: ScoredBoxes, t_high: float, t_low: float) -> tuple[float, float]:
    """(served FDR, share of labels auto-accepted) at the pair; nothing certified: (0, 0)."""
    if t_high > 1.0:
        return 0.0, 0.0
    accepted, false, auto = served_counts(population, t_high, t_low)
    return float(false.sum() / max(accepted.sum(), 1)), float(auto.mean())


def main(argv: list[str]) -> None:
    name, runs = argv[0], int(argv[1])
    n_cert, n_pilot, alpha, beta, delta = (int(argv[2]), int(argv[3]), *map(float, argv[4:7])) if len(argv) > 2 else (
        3000, 1000, 0.02, 0.01, 0.05)
    draw = POPULATIONS[name]
    population = draw(200_000 if name != "synthetic" else 60_000, np.random.default_rng(123))
    started, rows = time.perf_counter(), {"old rule": [], "served rule": []}
    for r in range(runs):
        rng = np.random.default_rng(1000 + r)
        data, pilot = draw(n_cert, rng), draw(n_pilot, rng)
        new = certify_detection(data, alpha, beta, delta, K, "wsr", pilot=pilot)
        for rule, (t_high, t_low) in (("old rule", old_rule(data, pilot, alpha, beta, delta)),
                                      ("served rule", (new.threshold_high, new.threshold_low))):
            fdr, auto = served_fdr(population, t_high, t_low)
            rows[rule].append((fdr > alpha, fdr, auto, float(miss_losses(population, t_low).mean()), t_high <= 1.0))
    for rule, r in rows.items():
        broken, certified = sum(x[0] for x in r), sum(x[4] for x in r)
        print(f"{name}, {rule}: served FDR > alpha={alpha} in {broken}/{runs} (delta {delta}); certified "
              f"{certified}/{runs}; mean served FDR {np.mean([x[1] for x in r]):.4f}; mean share of labels without "
              f"a human {np.mean([x[2] for x in r]):.3f}; mean miss share {np.mean([x[3] for x in r]):.4f} (beta {beta})")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
