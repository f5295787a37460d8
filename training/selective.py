"""What every mail-sorting script reports about its confidence: reference statistics for drift
detection, the risk-coverage plot written next to the model, and the delta its certificate may
spend on the calibration/certificate slice (:func:`certificate_spending`).

The statistics themselves (curve, certificate, ECE) live in ``monitor/`` and ``qc/``; this module
only packages them for the model card and draws the PNG, so it may use matplotlib.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from auditstream.errors import AuditstreamError, ModelRefused
from auditstream.registry import ModelRegistry
from qc.delta_spending import EXTRA_KEY, CertificateSlice, DeltaSpending, plan

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


class CannotSpendDelta(AuditstreamError):
    pass


def certificate_slice(split: str = "calibration/certificate", rendering: dict | None = None) -> CertificateSlice:
    """The digits every mail-sorting certificate is computed on (the digits and zip-reader
    families: the envelopes are made of them; the detector's labels are rendered from them),
    named by the split's seed, fractions and a hash of the indices. ``rendering``: how the
    certificate's items were made from those digits (the detector: its labels' seed and count,
    :class:`qc.delta_spending.CertificateSlice`); None when the digits themselves are certified on."""
    from training.data.split import FRACTIONS, SPLIT_SEED, load_split

    indices = np.ascontiguousarray(load_split(split).indices, dtype=np.int64)
    return CertificateSlice(split, SPLIT_SEED, dict(FRACTIONS), hashlib.sha256(indices.tobytes()).hexdigest(),
                            rendering)


def certificate_spending(models_dir: Path, name: str, family_delta: float,
                         slice_: CertificateSlice | None = None) -> DeltaSpending:
    """The delta the next certificate of ``name`` may spend (qc/delta_spending.py), its index
    counted from the versions already in the registry at ``models_dir`` -- never from the
    caller. A card that cannot be read cannot be counted: refused, before anything is certified."""
    registry = ModelRegistry(models_dir)
    cards = []
    for version in registry.versions(name):
        try:
            cards.append(registry.card(name, version))
        except ModelRefused as e:
            raise CannotSpendDelta(
                f"cannot certify a new version of {name}: {e}. Its delta must be counted among the certificates "
                f"on the same slice (docs/training.md, 'Certificates across versions'): repair that card.json and run "
                "again") from None
    return plan(family_delta, slice_ or certificate_slice(), cards)


def spending_extra(spending: DeltaSpending) -> dict:
    """What the card records of its spending (``extra.delta_spending``)."""
    return {EXTRA_KEY: spending.to_dict()}
