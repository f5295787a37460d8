"""The re-split protocol of ``auditstream bench certify`` on synthetic logits with a known answer."""

from __future__ import annotations

import numpy as np

from qc.calibration import softmax
from training.digits.certify_bench import resplit_trials, summarise
from training.digits.args import CertifyBenchArgs


def test_certified_rule_keeps_the_target_where_the_naive_rule_breaks_it():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.7, size=(4000, 10))  # calibrated logits: labels drawn from softmax(z)
    labels = (rng.random((4000, 1)) > softmax(z).cumsum(1)).sum(1).clip(0, 9)
    rows = resplit_trials(z, labels, CertifyBenchArgs(splits=20, target_risk=0.05), n_cal=2000)
    summary = summarise(rows)
    assert len(rows) == 20
    assert summary["certified"]["broken_share"] <= 0.1
    assert summary["naive"]["broken_share"] >= 0.25
    assert summary["naive"]["mean_test_coverage"] > summary["certified"]["mean_test_coverage"]
