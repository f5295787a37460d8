"""Train the ``zip-reader``: envelope image -> the 5-digit ZIP, with per-character probabilities.

    auditstream train zip-reader --json        # ~5 min on 2 shared, loaded CPU cores
    python -m training.zip_reader.train --steps 1200  # the same, without the auditstream CLI

Flow: args (``ZipReaderArgs``, training/zip_reader/args.py) -> data (fresh envelopes from
*training-split* digits for every batch, training/data/envelopes.py) -> model -> loop (AdamW,
one-cycle LR) -> calibrate (one temperature for all five positions, fitted on envelopes of the
calibration/temperature digits) -> export ONNX (preprocessing and temperature inside the graph)
-> certify the ZIP-level auto-accept threshold on the exported graph's own outputs (a fixed coverage grid on
independent envelopes of the disjoint calibration/certificate digits, at this version's share of
delta on that slice (qc/delta_spending.py), spent across the targets tried, see
``strict_certificates``), with the confidences serving triages on (the sequence kind's
postprocess rounds them to 6 decimals), so the certified accept set is the served one -> measure
on test envelopes (parity-checked on 256 of them) -> publish with card and risk-coverage plot.

Model: a CNN encoder over column frames, a bidirectional GRU, and a fixed-length attention head:
five learned position queries, one per ZIP digit, each attending over the frames (a
non-autoregressive attention decoder). A ZIP always has five digits, so a fixed-length head
gives exactly the per-position probabilities serving needs ([b, 5, 10]) in one pass with no
decoding step. CTC would need a best-path decode and an alignment from frames to positions
before it could emit those probabilities; an autoregressive decoder costs five sequential
passes; a plain fully-connected head over the whole feature map (Goodfellow et al. 2014) did
not leave the chance-level plateau within 300 steps here, while this head reaches ~93% ZIP
accuracy in 400.

Serving contract: input ``image`` uint8 [batch, 32, 96] (grayscale, dark ink on light paper);
output ``char_probs`` float32 [batch, 5, 10], calibrated; confidence = min over positions of the
max probability ("min_char_prob"; product and mean rank envelopes almost identically on the
risk-coverage curve, the card records all three, and the minimum is the one that bounds the ZIP
error through a union bound: docs/training.md).
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auditstream.registry import ModelCard, ModelRegistry, TensorSpec, TriageSpec
from auditstream.tasks.sequence import TASK as SEQUENCE
from qc.calibration import expected_calibration_error, fit_temperature, softmax
from qc.certify import (COVERAGE_GRID, area_under_risk_coverage, certify_coverage_grid, min_certifiable_risk,
                        risk_coverage_curve,
                             selective_risk)
from qc.delta_spending import DeltaSpending
from training.data.envelopes import ENVELOPE_H, ENVELOPE_W, ZIP_LENGTH, Nuisance, make_envelopes
from training.data.loader import TRAIN_NUISANCE, envelope_batches
from training.data.split import FRACTIONS, SPLIT_SEED, load_split, train_subset
from training.zip_reader.args import ZipReaderArgs
from training.export import check_parity, export_onnx, git_revision, run_onnx
from training.family_cli import train_and_report
from training.feedback import Feedback, record_provenance, save_weights
from training.fit import fit_steps
from training.selective import certificate_spending, plot_risk_coverage, reference_statistics, spending_extra

NAME = "zip-reader"
CONFIDENCE_KINDS = ("min_char_prob", "product_char_prob", "mean_char_prob")
# Looser ZIP-level risks tried, in order, when the requested one cannot be certified.
FALLBACK_RISKS = (0.05, 0.1, 0.2)


class ZipReaderNet(nn.Module):
    """uint8 envelopes [b, 32, 96] -> per-position logits [b, 5, 10].

    CNN encoder -> 24 column frames -> bidirectional GRU (a frame learns where it sits among
    the glyphs, e.g. "second glyph from the left") -> five learned position queries attend over
    the frames -> one 10-way classifier shared by the positions.
    """

    def __init__(self, hidden: int = 96) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        # Glyphs are 12-16 px tall upscaled 8x8 scans: one cheap full-resolution layer keeps
        # their detail (averaging down first cost accuracy), the wide layers run at 8 x 24.
        self.encoder = nn.Sequential(*block(1, 16), nn.MaxPool2d(2),  # 16 x 48
                                     *block(16, 32), nn.MaxPool2d(2),  # 8 x 24
                                     *block(32, 64), *block(64, 64))
        self.rnn = nn.GRU(64 * 8, hidden, batch_first=True, bidirectional=True)
        self.queries = nn.Parameter(torch.randn(ZIP_LENGTH, 2 * hidden) * 0.1)
        self.key = nn.Linear(2 * hidden, 2 * hidden)
        self.classify = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * hidden, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Preprocessing in the graph: ink = 1 - grey/255, then per-envelope standardisation, so
        # paper tone, lighting and ink darkness do not matter.
        x = 1.0 - image.float().unsqueeze(1) / 255.0
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).add(1e-4).sqrt()
        features = self.encoder((x - mean) / std)  # [b, 64, 8, 24]
        b, c, h, w = features.shape
        frames, _ = self.rnn(features.permute(0, 3, 1, 2).reshape(b, w, c * h))  # [b, 24, 2 * hidden]
        attention = torch.softmax(torch.einsum("qd,bwd->bqw", self.queries, self.key(frames)), dim=-1)
        return self.classify(torch.einsum("bqw,bwd->bqd", attention, frames))  # [b, 5, 10]


class CalibratedReader(nn.Module):
    """What is exported: softmax(logits / T) per position."""

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("inv_temperature", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(image) * self.inv_temperature, dim=-1)


def training_batches(args: ZipReaderArgs, rng: np.random.Generator, feedback: Feedback | None,
                     split_name: str = "train") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Fresh envelopes of the training digits (or their ``train_fraction`` subset); with verdicts,
    half of every batch is audited envelopes drawn at random (the traffic the model failed on or
    was checked on), the other half rendered as usual."""
    # train_fraction 1.0: the whole split, in its order; train/fit in a tuning trial
    digits = train_subset(args.train_fraction)[0] if split_name == "train" else load_split(split_name)
    nuisance = TRAIN_NUISANCE if args.augment else Nuisance()
    if feedback is None or not len(feedback.targets):
        yield from envelope_batches(digits, args.batch_size, args.steps, rng, nuisance=nuisance)
        return
    half = args.batch_size // 2
    rendered = envelope_batches(digits, args.batch_size - half, args.steps, rng, nuisance=nuisance)
    for images, labels in rendered:
        pick = rng.integers(0, len(feedback.targets), size=half)
        yield (np.concatenate([images, feedback.inputs[pick].astype(np.uint8)]),
               np.concatenate([labels, feedback.targets[pick].astype(np.int64)]))


def train(args: ZipReaderArgs, progress: bool = True, feedback: Feedback | None = None, split_name: str = "train",
          after_step: Callable[[int, ZipReaderNet], None] | None = None) -> tuple[ZipReaderNet, float]:
    """Fit on fresh envelopes of ``split_name``'s digits (the training split; ``train/fit`` in a
    tuning trial), plus ``feedback``'s verdicts, starting from its weights when given; returns the
    net (eval mode) and the seconds it took. ``after_step(n, model)`` runs after the n-th
    optimizer step."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    model = ZipReaderNet()
    if feedback is not None and feedback.init_state is not None:
        model.load_state_dict(feedback.init_state)
    batches = training_batches(args, rng, feedback, split_name)

    def batch_loss(batch: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(torch.from_numpy(images)).reshape(-1, 10), torch.from_numpy(labels).reshape(-1))

    seconds = fit_steps(model, batches, args.steps, batch_loss, name=NAME, lr=args.lr, weight_decay=args.weight_decay,
                        progress=progress, after_step=None if after_step is None else (lambda n: after_step(n, model)))
    return model, seconds


VALIDATION_ENVELOPES = 512
VALIDATION_CHECKS = 8  # per trial, evenly spaced over its steps
VALIDATION_METRIC = (f"character cross-entropy on {VALIDATION_ENVELOPES} envelopes of the train/validation digits "
                     f"(trials fit on envelopes of train/fit)")


def validation_trial(args: ZipReaderArgs, report: Callable[[int, float], None]) -> float:
    """One hyperparameter-search trial (``auditstream tune zip-reader``): fit on envelopes of
    ``train/fit`` digits, report the :data:`VALIDATION_METRIC` :data:`VALIDATION_CHECKS` times
    (``report`` may stop the trial by raising); returns the last value. Calibration and test
    digits are never touched."""
    images, zips = make_envelopes("train/validation", VALIDATION_ENVELOPES, seed=7004)
    labels = torch.from_numpy(zip_labels(zips).reshape(-1))
    every = max(args.steps // VALIDATION_CHECKS, 1)
    values: list[float] = []

    def check(step: int, model: ZipReaderNet) -> None:
        if step % every == 0 or step == args.steps:
            logits = torch.from_numpy(logits_of(model, images)).reshape(-1, 10)
            values.append(F.cross_entropy(logits, labels).item())
            report(len(values), values[-1])

    train(args, progress=False, split_name="train/fit", after_step=check)
    return values[-1]


@torch.no_grad()
def logits_of(model: nn.Module, images: np.ndarray, batch: int = 512) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(images[i:i + batch])).double().numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, ZIP_LENGTH, 10))


def zip_labels(zips: list[str]) -> np.ndarray:
    return np.array([[int(c) for c in z] for z in zips], dtype=np.int64).reshape(-1, ZIP_LENGTH)


# The card's serving part: what the sequence kind's postprocess reads.
SERVING_CARD = ModelCard(name=NAME, version="0", task="sequence",
                         inputs=[TensorSpec("image", "uint8", [None, ENVELOPE_H, ENVELOPE_W])],
                         outputs=[TensorSpec("char_probs", "float32", [None, ZIP_LENGTH, 10])],
                         triage=TriageSpec(threshold=1.0, confidence_kind="min_char_prob"),
                         labels=[str(d) for d in range(10)])


def served_confidences(char_probs: np.ndarray) -> np.ndarray:
    """The confidence serving triages on for each envelope of the exported graph's
    ``char_probs`` [n, 5, 10]: the sequence kind's own postprocess (the least sure position's
    probability, clipped to [0, 1] and rounded to 6 decimals, auditstream/tasks/base.py) on the
    graph's float32 values. Certifying these makes the certified accept set the served one."""
    answers = SEQUENCE.postprocess(SERVING_CARD, {"char_probs": np.asarray(char_probs).astype(np.float32)})
    assert all(a is not None for a in answers), "the exported graph produced probabilities outside [0, 1]"
    return np.array([a.confidence for a in answers], np.float64)


def confidences(char_probs: np.ndarray) -> dict[str, np.ndarray]:
    """ZIP-level confidence candidates from per-position probabilities [n, 5, 10]: the served one,
    ``min_char_prob``, exactly as serving computes it (:func:`served_confidences`); the product and
    the mean, compared on the card but never served, unrounded."""
    top = char_probs.max(axis=2)
    return {"min_char_prob": served_confidences(char_probs), "product_char_prob": top.prod(1),
            "mean_char_prob": top.mean(1)}


def read(char_probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ZIP wrong [n] 0/1, character wrong [n, 5] bool)."""
    char_wrong = char_probs.argmax(2) != labels
    return char_wrong.any(1).astype(int), char_wrong


def fit_calibration(model: nn.Module, args: ZipReaderArgs) -> float:
    """One temperature for all positions, fitted on envelopes of the calibration digits the
    certificate does not use (a point estimate, not a guarantee: reusing those digits only costs
    precision)."""
    images, zips = make_envelopes("calibration/temperature", args.n_calibration, seed=7001)
    return fit_temperature(logits_of(model, images).reshape(-1, 10), zip_labels(zips).reshape(-1))


def onnx_char_probs(onnx_bytes: bytes, images: np.ndarray) -> np.ndarray:
    """What serving computes: the exported graph's probabilities, in float64 for the statistics
    (exactly the float32 values: :func:`served_confidences` casts them back)."""
    return run_onnx(onnx_bytes, images)[0].astype(np.float64)


def evaluate(model: ZipReaderNet, onnx_bytes: bytes, temperature: float, args: ZipReaderArgs,
             spending: DeltaSpending) -> dict:
    """Certify on calibration/certificate envelopes and measure on test envelopes, all on the
    exported graph's outputs (torch differs by ~1e-7: enough to move an envelope across the
    threshold). Certificates are made at ``spending.delta``, this version's share of
    ``args.delta`` on the certificate slice (qc/delta_spending.py)."""
    # Seeds are fixed (not args.seed): every model version is judged on the same envelopes.
    cal_images, cal_zips = make_envelopes("calibration/certificate", args.n_calibration, seed=7001)
    cal_probs = onnx_char_probs(onnx_bytes, cal_images)
    cal_wrong, _ = read(cal_probs, zip_labels(cal_zips))
    pooled = certify_coverage_grid(confidences(cal_probs)["min_char_prob"], cal_wrong, args.target_risk,
                                   spending.delta)
    strict = strict_certificates(onnx_bytes, args, spending.delta)

    test_images, test_zips = make_envelopes("test", args.n_test, seed=7002)
    test_labels = zip_labels(test_zips)
    raw, probs = softmax(logits_of(model, test_images)), onnx_char_probs(onnx_bytes, test_images)
    wrong, char_wrong = read(probs, test_labels)
    _, raw_char_wrong = read(raw, test_labels)
    kinds = confidences(probs)
    conf = kinds["min_char_prob"]
    cert = strict["shipped"]
    coverage, risk, n_acc, e_acc = selective_risk(conf, wrong, cert.threshold)
    pooled_coverage, pooled_risk, _, _ = selective_risk(conf, wrong, pooled.threshold)
    return {
        "temperature": temperature, "certificate": cert, "strict": strict, "delta_spending": spending,
        "pool_conditional": {**pooled.to_dict(), "test_coverage": pooled_coverage, "test_risk": pooled_risk,
                             "broken_on_test": bool(pooled_risk > args.target_risk)},
        "test_error": float(wrong.mean()), "zip_accuracy": float(1 - wrong.mean()),
        "char_error": float(char_wrong.mean()),
        "ece_before": expected_calibration_error(raw.max(2).ravel(), ~raw_char_wrong.ravel()),
        "ece_after": expected_calibration_error(probs.max(2).ravel(), ~char_wrong.ravel()),
        "zip_ece_min_char_prob": expected_calibration_error(conf, wrong == 0),
        "test_coverage_at_threshold": coverage, "test_risk_at_threshold": risk,
        "test_accepted": n_acc, "test_errors_accepted": e_acc,
        "confidence_choice": {k: {"aurc": area_under_risk_coverage(v, wrong),
                                  "coverage_at_empirical_risk_target": _coverage_at_risk(v, wrong, args.target_risk)}
                              for k, v in kinds.items()},
        "curves": {k: risk_coverage_curve(v, wrong) for k, v in kinds.items()},
        "test_confidences": conf, "parity_images": test_images[:256],
    }


def strict_certificates(onnx_bytes: bytes, args: ZipReaderArgs, delta: float) -> dict:
    """Certificates (coverage grid) on calibration/certificate envelopes that use each of those
    digits at most once.

    Such envelopes are independent given the split, so the Clopper-Pearson bound is exact. The
    486 certificate digits make only 97 of them, and 97 clean envelopes prove no less than ~6%:
    a 2% ZIP-level target cannot be certified from this data. So the targets
    ``args.target_risk`` and the looser ``FALLBACK_RISKS`` are considered, fixed before looking
    at the data; those no outcome on 97 envelopes could certify are dropped (from the count
    alone, :func:`targets_worth_trying`), and ``delta`` (this version's share of ``args.delta``) is
    spent across the rest (``delta / k``
    each, a union bound over the k targets): whichever certifies first is shipped, and the chance
    that any certificate tried is wrong stays at most ``delta``. The card records the targets
    considered and tried and the delta each had.
    """
    n = len(load_split("calibration/certificate").labels) // ZIP_LENGTH
    images, zips = make_envelopes("calibration/certificate", n, seed=7003, sampling="disjoint")
    probs = onnx_char_probs(onnx_bytes, images)
    wrong, _ = read(probs, zip_labels(zips))
    conf = confidences(probs)["min_char_prob"]
    considered = [args.target_risk] + [r for r in FALLBACK_RISKS if r > args.target_risk]
    tried = targets_worth_trying(considered, n, delta)
    delta_each = delta / len(tried)
    certificates = {target: certify_coverage_grid(conf, wrong, target, delta_each) for target in tried}
    shipped = next((c for c in certificates.values() if c.certified), certificates[tried[-1]])
    # Every bound computed above holds at once with probability >= 1 - delta (the union bound), so
    # the shipped bound also proves any looser target: the card promises the tightest considered
    # target at or above it.
    promised = min((t for t in considered if shipped.certified and t >= shipped.certified_risk),
                   default=shipped.target_risk)
    by_target = {f"{t:g}": {"threshold": c.threshold, "certified_risk": c.certified_risk, "coverage": c.coverage}
                 for t, c in certificates.items()}
    by_target.update({f"{t:g}": {"threshold": None, "certified_risk": 1.0, "coverage": 0.0, "not_tried": True}
                      for t in considered if t not in tried})
    return {"n_envelopes": n, "errors": int(wrong.sum()), "targets_considered": considered, "targets_tried": tried,
            "delta_per_target": delta_each,
            "min_certifiable_risk": min_certifiable_risk(n, delta_each, len(COVERAGE_GRID)),
            "shipped": shipped, "promised_target_risk": promised,
            "by_target": by_target}


def targets_worth_trying(targets: list[float], n: int, delta: float) -> list[float]:
    """The targets that *some* outcome on ``n`` items could certify when delta is split over them:
    one below the smallest certifiable risk (all ``n`` clean) would spend delta for nothing.
    Decided from ``n`` alone, before any error is seen, so it costs the guarantee nothing."""
    tried = list(targets)
    while len(tried) > 1:
        floor = min_certifiable_risk(n, delta / len(tried), len(COVERAGE_GRID))
        keep = [t for t in tried if t >= floor] or tried[-1:]
        if keep == tried:
            break
        tried = keep
    return tried


def _coverage_at_risk(conf: np.ndarray, wrong: np.ndarray, target: float) -> float:
    """Largest test coverage whose empirical risk is <= target (a ranking measure, not a certificate)."""
    points = [p["coverage"] for p in risk_coverage_curve(conf, wrong, max_points=len(conf)) if p["risk"] <= target]
    return max(points, default=0.0)


def build_card(args: ZipReaderArgs, result: dict, parity: float, train_seconds: float) -> ModelCard:
    cert, strict, spending = result["certificate"], result["strict"], result["delta_spending"]
    metrics = {k: result[k] for k in ("test_error", "zip_accuracy", "char_error", "ece_before", "ece_after",
                                      "zip_ece_min_char_prob", "test_coverage_at_threshold", "test_risk_at_threshold",
                                      "test_accepted", "test_errors_accepted")}
    metrics.update(parity_max_abs_diff=parity, n_test=args.n_test, confidence_choice=result["confidence_choice"],
                   coverage_at_requested_target=strict["by_target"][f"{args.target_risk:g}"]["coverage"])
    return ModelCard(
        name=NAME, version="0", task="sequence",
        inputs=[TensorSpec("image", "uint8", [None, ENVELOPE_H, ENVELOPE_W])],
        outputs=[TensorSpec("char_probs", "float32", [None, ZIP_LENGTH, 10])],
        triage=TriageSpec(threshold=cert.threshold, confidence_kind="min_char_prob",
                          target_risk=strict["promised_target_risk"],
                          delta=spending.delta, certified_risk=cert.certified_risk, coverage=cert.coverage,
                          method=f"coverage-grid clopper-pearson on {strict['n_envelopes']} independent certificate envelopes, "
                                 f"delta/{len(strict['targets_tried'])} per target tried"),
        preprocessing={"input": f"grayscale envelope uint8 {ENVELOPE_H}x{ENVELOPE_W}, dark ink on light paper",
                       "inside_graph": ["ink = 1 - x / 255", "per-envelope standardisation",
                                        f"softmax(logits / T) per position, T={result['temperature']:.4f}"]},
        labels=[str(d) for d in range(10)], metrics=metrics,
        calibration={"method": "temperature scaling, one T for all positions (NLL on envelopes of the "
                               "calibration/temperature digits)",
                     "temperature": result["temperature"], "ece_before": result["ece_before"],
                     "ece_after": result["ece_after"], "ece_level": "character", "ece_bins": 15, "ece_split": "test"},
        reference=reference_statistics(result["test_confidences"], args.seed) | {"split": "test"},
        risk_coverage=result["curves"]["min_char_prob"],
        training={"args": asdict(args), "seed": args.seed, "git_revision": git_revision(),
                  "train_seconds": train_seconds, "split_seed": SPLIT_SEED, "split_fractions": FRACTIONS},
        extra={"certificate": cert.to_dict(), "requested_target_risk": args.target_risk,
               "strict_certificates": {k: v for k, v in strict.items() if k != "shipped"},
               "pool_conditional_diagnostic": result["pool_conditional"],
               "certificate_scope": (
                   "each calibration/certificate digit image appears in at most one certificate envelope, so the "
                   "envelopes are independent given the split and the bound is exact, for envelopes of new digit "
                   "images by the same 13 writers (scikit-learn's digits are the UCI test set of 13 writers, split "
                   "per image: every writer is in every split), not for handwriting of new writers; the certificate "
                   "is computed on the published ONNX graph's outputs, with the confidences serving computes from "
                   "them (the sequence kind's postprocess, rounded to 6 decimals); the temperature was fitted on the "
                   "disjoint calibration/temperature digits; this version's delta (extra.delta_spending: its share "
                   "of the family's delta on the certificate slice) is split evenly over the targets tried "
                   "(strict_certificates.targets_tried, delta_per_target); the pool-conditional diagnostic reuses "
                   "digits (i.i.d. only given the calibration pool) and is no guarantee even for new digits of "
                   "those writers"),
               "risk_coverage_by_confidence": {k: v for k, v in result["curves"].items() if k != "min_char_prob"},
               **spending_extra(spending)},
    )


def run(args: ZipReaderArgs, models_dir: Path, progress: bool = True, feedback: Feedback | None = None,
        tuning: dict | None = None) -> dict:
    """Train, calibrate, certify, export, publish (with the torch weights beside the ONNX file,
    for fine-tuning); returns the JSON summary. ``feedback``: retraining from verdicts
    (training/feedback.py); ``tuning``: the hyperparameter search that chose ``args``
    (training/tuning/), for the card."""
    certificate_spending(models_dir, NAME, args.delta)  # refuse an unreadable registry before training
    model, train_seconds = train(args, progress, feedback)
    temperature = fit_calibration(model, args)
    exported = CalibratedReader(model, temperature).eval()
    onnx_bytes = export_onnx(exported, torch.zeros(2, ENVELOPE_H, ENVELOPE_W, dtype=torch.uint8), "image", ["char_probs"])
    # counted now, just before certifying: the versions published while this one trained count too
    spending = certificate_spending(models_dir, NAME, args.delta, reserve=True)
    result = evaluate(model, onnx_bytes, temperature, args, spending)
    parity = check_parity(exported, onnx_bytes, result["parity_images"])
    card = build_card(args, result, parity, train_seconds)
    card = record_provenance(card, feedback, tuning, **(
        {} if feedback is None else {"n_verdict_envelopes": len(feedback.targets)}))
    cert, strict = result["certificate"], result["strict"]
    summary = {"model": NAME, **{k: result[k] for k in ("test_error", "zip_accuracy", "char_error", "ece_before",
                                                        "ece_after", "test_risk_at_threshold",
                                                        "test_coverage_at_threshold", "pool_conditional",
                                                        "confidence_choice")},
               "strict": {k: v for k, v in strict.items() if k != "shipped"},
               "target_risk": strict["promised_target_risk"], "requested_target_risk": args.target_risk,
               "delta": spending.delta, "family_delta": args.delta, "delta_spending": spending.to_dict(),
               "delta_note": spending.describe(),
               "certified_risk": cert.certified_risk, "coverage": cert.coverage, "threshold": cert.threshold,
               "coverage_at_requested_target": card.metrics["coverage_at_requested_target"],
               "temperature": result["temperature"], "parity_max_abs_diff": parity, "train_seconds": train_seconds}
    if args.publish:
        published = ModelRegistry(models_dir).publish(card, onnx_bytes)
        save_weights(model, published.directory)
        plot_risk_coverage(result["curves"], published.directory / "risk_coverage.png", strict["promised_target_risk"],
                           (result["test_coverage_at_threshold"], result["test_risk_at_threshold"]),
                           f"zip-reader v{published.card.version}: ZIP-level risk-coverage, test envelopes")
        summary.update(version=published.card.version, path=str(published.directory))
    return summary


def print_summary(s: dict) -> None:
    print(f"zip-reader: full-ZIP accuracy {s['zip_accuracy']:.2%} (target >= 93%), character error {s['char_error']:.2%}")
    print(f"  character ECE {s['ece_before']:.2%} -> {s['ece_after']:.2%} after T={s['temperature']:.3f} (target <= 2%)")
    st = s["strict"]
    print(f"  {st['n_envelopes']} independent certificate envelopes (each digit once), {st['errors']} misread; targets "
          f"{', '.join(f'{t:.0%}' for t in st['targets_tried'])} tried at delta {st['delta_per_target']:.4g} each: "
          f"smallest provable ZIP risk {st['min_certifiable_risk']:.2%}")
    print(f"  coverage at certified ZIP risk {s['requested_target_risk']:.0%}: {s['coverage_at_requested_target']:.1%}; "
          + ", ".join(f"at {float(t):.0%}: {v['coverage']:.1%}" for t, v in st["by_target"].items()))
    print(f"  shipped: risk <= {s['certified_risk']:.2%} (target {s['target_risk']:.0%}, {s['delta_note']}, over all "
          f"targets tried) at "
          f"threshold {s['threshold']:.4f}; on test envelopes coverage {s['test_coverage_at_threshold']:.1%}, "
          f"ZIP risk {s['test_risk_at_threshold']:.2%}")
    pc = s["pool_conditional"]
    print(f"  diagnostic, digits reused (no guarantee): 'certified' {pc['certified_risk']:.2%} at coverage "
          f"{pc['coverage']:.1%}; on test: coverage {pc['test_coverage']:.1%}, risk {pc['test_risk']:.2%}"
          f"{' -> promise broken' if pc['broken_on_test'] else ''}")
    for kind, c in s["confidence_choice"].items():
        print(f"  confidence {kind}: AURC {c['aurc']:.4f}, test coverage at empirical risk <= "
              f"{s['requested_target_risk']:.0%}: {c['coverage_at_empirical_risk_target']:.1%}")
    print(f"  ONNX parity {s['parity_max_abs_diff']:.2g}, trained in {s['train_seconds']:.0f} s (target < 600 s)")
    if "path" in s:
        print(f"  published {s['path']}")


def main(args: ZipReaderArgs, as_json: bool = False) -> int:
    return train_and_report(run, print_summary, args, as_json)


if __name__ == "__main__":
    from training.zip_reader.cli import COMMAND

    sys.exit(main(*COMMAND.parse(sys.argv[1:])))
