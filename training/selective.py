"""What every mail-sorting script reports about its confidence: reference statistics for drift
detection and the risk-coverage plot written next to the model.

The statistics themselves (curve, certificate, ECE) live in ``monitor/``; this module only
packages them for the model card and draws the PNG, so it may use matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REFERENCE_SAMPLE = 2000
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def reference_statistics(confidences: np.ndarray, seed: int, max_sample: int = REFERENCE_SAMPLE) -> dict:
    """Held-out calibrated confidences for the KS drift test: a sample (<= ``max_sample``) + quantiles."""
    conf = np.asarray(confidences, dtype=np.float64)
    if conf.size == 0:
        raise ValueError("reference statistics need at least one confidence")
    rng = np.random.default_rng(seed)
    sample = conf if conf.size <= max_sample else rng.choice(conf, size=max_sample, replace=False)
    return {
        "confidence_sample": [round(float(c), 6) for c in np.sort(sample)],
        "quantiles": {f"{q:g}": float(np.quantile(conf, q)) for q in QUANTILES},
        "mean": float(conf.mean()),
        "n": int(conf.size),
    }


def plot_risk_coverage(curves: dict[str, list[dict[str, float]]], path: Path, target_risk: float,
                       operating_point: tuple[float, float] | None, title: str) -> Path:
    """Risk (y) against coverage (x) for each named confidence; mark the target and the certified point."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, curve in curves.items():
        ax.plot([p["coverage"] for p in curve], [p["risk"] for p in curve], label=name)
    ax.axhline(target_risk, color="grey", linestyle="--", linewidth=1, label=f"target risk {target_risk:g}")
    if operating_point is not None:
        ax.plot(*operating_point, "o", color="black", label=f"certified threshold, on this data (coverage {operating_point[0]:.1%})")
    ax.set_xlabel("coverage (share auto-accepted)")
    ax.set_ylabel("risk (error rate of auto-accepted)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
