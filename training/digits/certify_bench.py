"""``auditstream bench certify``: does the certified threshold keep its promise on fresh data?

One digits model is trained (training split only). Its held-out pool (calibration + test
splits, 899 digits) is re-split at random ``--splits`` times into a calibration part (539) and
a test part (360). On every re-split we fit the temperature on a tenth of the calibration part
and choose two thresholds on the rest of it (as ``auditstream train digits`` does), the
certificate (the coverage grid of qc/certify.py) and the naive rule "largest coverage whose empirical risk is <=
target", and measure the realised risk of each on the test part.
A rule *breaks its promise* on a split when that test risk exceeds the target.

Two models are benchmarked, because the naive rule can only fail where the target binds:

* ``production``: the digits model as ``auditstream train digits`` trains it. Its total error
  is below 2%, so at the 2% target the naive rule accepts everything and rarely fails; what
  the benchmark shows here is the coverage the certificate costs.
* ``weak``: the same network trained for a few epochs without augmentation (error several
  percent), so the 2% target sits inside the risk-coverage curve, where over-fitting the
  calibration sample shows: the naive rule breaks its promise in about half of the splits.
"""

from __future__ import annotations

from auditstream import finite_json
from dataclasses import replace

import numpy as np

from qc.calibration import fit_temperature, softmax
from qc.certify import certify_coverage_grid, naive_threshold, selective_risk
from training.data.split import TEMPERATURE_SHARE
from training.digits.args import CertifyBenchArgs


def held_out_pool(epochs: int | None, augment: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of the calibration + test digits under a freshly trained model."""
    from training.digits.train import logits_of, train
    from training.data.split import load_split
    from training.digits.args import DigitsArgs

    base = DigitsArgs(publish=False)
    args = replace(base, epochs=epochs or base.epochs, augment=augment)
    model, _ = train(args, progress=True)
    cal, test = load_split("calibration"), load_split("test")
    images = np.concatenate([cal.images, test.images])
    return logits_of(model, images), np.concatenate([cal.labels, test.labels])


def resplit_trials(logits: np.ndarray, labels: np.ndarray, args: CertifyBenchArgs, n_cal: int) -> list[dict]:
    """One row per re-split: coverage and test risk of the certified and the naive threshold."""
    rng = np.random.default_rng(args.seed)
    rows = []
    for i in range(args.splits):
        order = rng.permutation(len(labels))
        n_fit = round(n_cal * TEMPERATURE_SHARE)
        fit, cal, test = order[:n_fit], order[n_fit:n_cal], order[n_cal:]
        temperature = fit_temperature(logits[fit], labels[fit])
        probs = softmax(logits, temperature)
        conf, wrong = probs.max(1), (probs.argmax(1) != labels).astype(int)
        cert = certify_coverage_grid(conf[cal], wrong[cal], args.target_risk, args.delta)
        naive = naive_threshold(conf[cal], wrong[cal], args.target_risk)
        row = {"split": i}
        for rule, threshold in (("certified", cert.threshold), ("naive", naive)):
            coverage, risk, _, _ = selective_risk(conf[test], wrong[test], threshold)
            row[rule] = {"threshold": threshold, "test_coverage": coverage, "test_risk": risk,
                         "broken": bool(risk > args.target_risk)}
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict:
    out = {}
    for rule in ("certified", "naive"):
        out[rule] = {"broken_share": float(np.mean([r[rule]["broken"] for r in rows])),
                     "mean_test_coverage": float(np.mean([r[rule]["test_coverage"] for r in rows])),
                     "mean_test_risk": float(np.mean([r[rule]["test_risk"] for r in rows])),
                     "max_test_risk": float(np.max([r[rule]["test_risk"] for r in rows]))}
    return out


def run(args: CertifyBenchArgs) -> dict:
    from training.data.split import load_split

    if args.splits < 1:
        raise ValueError(f"splits={args.splits} must be >= 1")
    n_cal = len(load_split("calibration").labels)
    result = {"target_risk": args.target_risk, "delta": args.delta, "splits": args.splits}
    for name, epochs, augment in (("production", None, True), ("weak", args.weak_epochs, False)):
        logits, labels = held_out_pool(epochs, augment)
        rows = resplit_trials(logits, labels, args, n_cal)
        error = float(np.mean(logits.argmax(1) != labels))
        result[name] = {"pool_error": error, **summarise(rows)}
        print(f"{name} model (held-out error {error:.2%}), target risk {args.target_risk:g}, delta {args.delta:g}:")
        for r in rows:
            c, n = r["certified"], r["naive"]
            print(f"  split {r['split']:2d}: certified coverage {c['test_coverage']:6.1%} risk {c['test_risk']:6.2%}"
                  f"{' BROKEN' if c['broken'] else '       '} | naive coverage {n['test_coverage']:6.1%} "
                  f"risk {n['test_risk']:6.2%}{' BROKEN' if n['broken'] else ''}")
        s = result[name]
        print(f"  => certified broke the target in {s['certified']['broken_share']:.0%} of splits (goal <= 10%), "
              f"naive in {s['naive']['broken_share']:.0%} (expected 40-60% where the target binds); mean coverage "
              f"certified {s['certified']['mean_test_coverage']:.1%}, naive {s['naive']['mean_test_coverage']:.1%}")
    return result


def main(args: CertifyBenchArgs) -> int:
    finite_json.print_summary(run(args), sort_keys=True)
    return 0
