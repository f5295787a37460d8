"""Temperature scaling and expected calibration error (ECE): numpy + scipy only.

Training fits one temperature ``T`` on the calibration split (Guo et al. 2017: minimise the
negative log-likelihood of ``softmax(logits / T)``), bakes ``1 / T`` into the exported ONNX graph,
and records ECE before and after in the model card. Serving never sees a logit; monitoring may
recompute ECE from audited predictions with :func:`expected_calibration_error`.

A sequence model (one softmax per character position) shares one temperature across positions:
pass its logits flattened to ``[n * positions, classes]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

# log T is searched in this bracket: T from e^-4 ~ 0.02 to e^4 ~ 55 covers any sane network.
_LOG_T_BOUNDS = (-4.0, 4.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (last axis), numerically stable."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1))


def _check_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"need logits [n, classes] and labels [n], got {logits.shape} and {labels.shape}")
    if logits.shape[0] == 0:
        raise ValueError("need at least one calibration item, got 0")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1]}), got range [{labels.min()}, {labels.max()}]")
    if not np.all(np.isfinite(logits)):
        raise ValueError(f"logits contain {int(np.sum(~np.isfinite(logits)))} non-finite values")
    return logits, labels.astype(np.int64)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    logits, labels = _check_logits(logits, labels)
    logp = log_softmax(logits / temperature, axis=1)
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, log_prior_sd: float | None = 1.0) -> float:
    """The temperature ``T > 0`` maximising the posterior of ``softmax(logits / T)`` on held-out
    data: total NLL plus ``(log T)^2 / (2 sd^2)``, a weak log-normal prior centred on T = 1.

    Without the prior (``log_prior_sd=None``: plain maximum likelihood), a held-out set the model
    classifies perfectly drives T to 0 — every probability 1, no ranking left for the threshold —
    which a small calibration slice easily is. With hundreds of errors the prior changes nothing.
    A one-dimensional problem solved on ``log T`` with a bounded scalar search: deterministic and
    always positive.
    """
    logits, labels = _check_logits(logits, labels)
    n = len(labels)

    def objective(log_t: float) -> float:
        prior = 0.0 if log_prior_sd is None else 0.5 * (log_t / log_prior_sd) ** 2
        return n * nll(logits, labels, float(np.exp(log_t))) + prior

    result = minimize_scalar(objective, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    mean_confidence: float
    accuracy: float


def reliability_bins(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> list[ReliabilityBin]:
    """Equal-width confidence bins ``(lower, upper]`` with their mean confidence and accuracy."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidences.shape != correct.shape or confidences.ndim != 1:
        raise ValueError(f"need confidences [n] and correct [n], got {confidences.shape} and {correct.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be >= 1")
    # NaN compares false with everything: checked first, or a NaN confidence would pass the range
    # check, fall into the first bin and make the ECE NaN without a word
    if not np.isfinite(confidences).all():
        bad = int((~np.isfinite(confidences)).sum())
        raise ValueError(f"confidences must be finite numbers in [0, 1]; {bad} of {confidences.size} are NaN or "
                         f"infinite (first at index {int(np.flatnonzero(~np.isfinite(confidences))[0])})")
    if not np.isfinite(correct).all() or ((correct < 0) | (correct > 1)).any():
        raise ValueError("correct must be 0/1 (or shares in [0, 1]); it holds NaN, an infinity or a value outside")
    if confidences.size and (confidences.min() < 0 or confidences.max() > 1):
        raise ValueError(f"confidences must be in [0, 1], got [{confidences.min()}, {confidences.max()}]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes into the first bin.
    index = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        mask = index == i
        count = int(mask.sum())
        bins.append(ReliabilityBin(float(edges[i]), float(edges[i + 1]), count,
                                   float(confidences[mask].mean()) if count else 0.0,
                                   float(correct[mask].mean()) if count else 0.0))
    return bins


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum over bins of (bin share) * |accuracy - mean confidence| (Naeini et al. 2015)."""
    bins = reliability_bins(confidences, correct, n_bins)
    total = sum(b.count for b in bins)
    if total == 0:
        raise ValueError("ECE of zero items is undefined")
    return float(sum(b.count / total * abs(b.accuracy - b.mean_confidence) for b in bins))


def classification_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE of a probability matrix ``[n, classes]`` against integer labels."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"need probs [n, classes] and labels [n], got {probs.shape} and {labels.shape}")
    return expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == labels, n_bins)
