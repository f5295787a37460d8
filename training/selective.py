"""What every mail-sorting script reports about its confidence: reference statistics for drift
detection, the risk-coverage plot written next to the model, and the delta its certificate may
spend on the calibration/certificate slice (:func:`certificate_spending`).

The statistics themselves (curve, certificate, ECE) live in ``monitor/`` and ``qc/``; this module
only packages them for the model card and draws the PNG, so it may use matplotlib.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from auditstream.errors import AuditstreamError, ModelRefused
from auditstream.registry import ModelRegistry
from qc.delta_spending import EXTRA_KEY, CertificateSlice, DeltaSpending, plan
from qc.drift import REFERENCE_DECIMALS

REFERENCE_SAMPLE = 2000
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def reference_statistics(confidences: np.ndarray, seed: int, max_sample: int = REFERENCE_SAMPLE) -> dict:
    """Held-out calibrated confidences for the KS drift test: a sample (<= ``max_sample``) + quantiles.

    The sample is stored rounded to :data:`qc.drift.REFERENCE_DECIMALS` (6) decimals, as every card
    so far; the test rounds the live confidences to the same grid before comparing."""
    conf = np.asarray(confidences, dtype=np.float64)
    if conf.size == 0:
        raise ValueError("reference statistics need at least one confidence")
    rng = np.random.default_rng(seed)
    sample = conf if conf.size <= max_sample else rng.choice(conf, size=max_sample, replace=False)
    return {
        # rounded for a readable card; the KS test rounds the live window to the same grid (qc.drift.ks_drift)
        "confidence_sample": [round(float(c), REFERENCE_DECIMALS) for c in np.sort(sample)],
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


# Beside a model's versions: one file per certificate index drawn (``reserve=True``), so that two
# trainings certifying at once never draw the same index, and a certificate that was computed but
# never published (--no-publish, a crash, a refused publish) still counts as spent: whoever saw it
# may have acted on it. Removing a file would give its delta back, which the schedule never does.
RESERVATIONS_DIR = ".certificates"


def certificate_spending(models_dir: Path, name: str, family_delta: float,
                         slice_: CertificateSlice | None = None, reserve: bool = False) -> DeltaSpending:
    """The delta the next certificate of ``name`` may spend (qc/delta_spending.py), its index
    counted from the versions already in the registry at ``models_dir`` and the indices drawn
    for certificates not (yet) published -- never from the caller. ``reserve``: draw that index
    for the certificate about to be computed (under a lock on the model's folder: a concurrent
    training gets the next one). A card or a drawn index that cannot be read cannot be counted:
    refused, before anything is certified."""
    slice_ = slice_ or certificate_slice()
    if not reserve:
        return plan(family_delta, slice_, _spent_certificates(models_dir, name))
    directory = Path(models_dir) / name / RESERVATIONS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        spending = plan(family_delta, slice_, _spent_certificates(models_dir, name))
        record = json.dumps({EXTRA_KEY: spending.to_dict()}, sort_keys=True)
        slice_key = hashlib.sha256(json.dumps(spending.slice, sort_keys=True).encode()).hexdigest()[:16]
        final = directory / f"{spending.index}-{slice_key}.json"
        partial = final.with_suffix(".partial")
        partial.write_text(record)
        os.replace(partial, final)  # whole or absent: a crash leaves no half-read file
    return spending


def _spent_certificates(models_dir: Path, name: str) -> list[Any]:
    """The model's published cards, and a stand-in card for every drawn index that no card
    records (same index, same slice)."""
    registry = ModelRegistry(models_dir)
    cards: list[Any] = []
    for version in registry.versions(name):
        try:
            cards.append(registry.card(name, version))
        except ModelRefused as e:
            raise CannotSpendDelta(
                f"cannot certify a new version of {name}: {e}. Its delta must be counted among the certificates "
                f"on the same slice (docs/training.md, 'Certificates across versions'): repair that card.json and run "
                "again") from None
    published = {_spending_key(c.extra.get(EXTRA_KEY)) for c in cards if isinstance(c.extra, dict)}
    directory = Path(models_dir) / name / RESERVATIONS_DIR
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        try:
            extra = json.loads(path.read_text())
            spending = extra[EXTRA_KEY]
            delta = float(spending["delta"])
            if not 0.0 < delta < 1.0:  # NaN too: it would make every later sum NaN
                raise ValueError(f"delta {delta!r} is not in (0, 1)")
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise CannotSpendDelta(
                f"cannot certify a new version of {name}: the drawn certificate {path} cannot be read ({e!r}). "
                "Its delta must be counted (docs/training.md, 'Certificates across versions'): restore the file, or "
                "replace it by one with the same index and a delta of at least what it spent") from None
        if _spending_key(spending) not in published:
            cards.append(SimpleNamespace(version=f"drawn {path.stem}", extra=extra, training={},
                                         triage=SimpleNamespace(delta=delta)))
    return cards


def _spending_key(spending: Any) -> str | None:
    if not isinstance(spending, dict):
        return None
    return json.dumps([spending.get("index"), spending.get("slice")], sort_keys=True, default=str)


def spending_extra(spending: DeltaSpending) -> dict:
    """What the card records of its spending (``extra.delta_spending``)."""
    return {EXTRA_KEY: spending.to_dict()}
