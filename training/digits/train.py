"""Train the ``digits`` classifier: a small CNN on scikit-learn's 8x8 handwritten digits.

    auditstream train digits --json            # ~10-30 s on 2 shared CPU cores
    python -m training.digits.train --epochs 40  # the same, without the auditstream CLI

Flow (one readable script, CleanRL style): args (``DigitsArgs``, training/digits/args.py) -> data
(the one split, training/data/split.py) -> model -> training loop (AdamW, one-cycle LR, affine
augmentation, training/data/loader.py) -> calibrate (temperature on the calibration/temperature
slice, qc/calibration.py) -> export ONNX (preprocessing and temperature inside the graph,
parity-checked on 256 test inputs) -> certify the auto-accept threshold on the exported graph's
own outputs (Clopper-Pearson over a fixed coverage grid on the disjoint calibration/certificate
slice, qc/certify.py, at this version's share of delta on that slice, qc/delta_spending.py), with
the confidences serving triages on (the classification kind's postprocess rounds them to 6
decimals), so the certified accept set is the served one -> measure on the test split -> publish
to the model registry with its card and risk-coverage plot.

Serving contract: input ``pixels`` float32 [batch, 8, 8] with scikit-learn's raw 0..16 values;
output ``probs`` float32 [batch, 10], calibrated; confidence = max probability.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from auditstream.errors import TrainingDiverged
from auditstream.registry import ModelCard, ModelRegistry, TensorSpec, TriageSpec
from auditstream.tasks.classification import TASK as CLASSIFICATION
from qc.calibration import classification_ece, fit_temperature, softmax
from qc.certify import area_under_risk_coverage, certify_coverage_grid, risk_coverage_curve, selective_risk
from qc.delta_spending import DeltaSpending
from training.data.loader import DigitAugment, digit_batches
from training.data.split import SPLIT_SEED, FRACTIONS, DigitSplit, load_split, train_subset
from training.digits.args import DigitsArgs
from training.export import check_parity, export_onnx, git_revision, run_onnx
from training.family_cli import train_and_report
from training.feedback import Feedback, record_provenance, save_weights
from training.selective import certificate_spending, plot_risk_coverage, reference_statistics, spending_extra

NAME = "digits"
LABELS = [str(d) for d in range(10)]


class DigitNet(nn.Module):
    """Raw 0..16 pixels [b, 8, 8] -> logits [b, 10]. Scaling to 0..1 happens inside the graph."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*block(1, 32), *block(32, 64), nn.MaxPool2d(2),  # 4x4
                                      *block(64, 128), nn.MaxPool2d(2))  # 2x2
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 4, 10))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels / 16.0 - 0.3) / 0.4  # roughly zero-mean, unit-variance ink
        return self.head(self.features(x.unsqueeze(1)))


class CalibratedClassifier(nn.Module):
    """What is exported: softmax(logits / T). The temperature is a constant of the graph."""

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("inv_temperature", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(pixels) * self.inv_temperature, dim=-1)


def training_digits(args: DigitsArgs, feedback: Feedback | None = None, split_name: str = "train") -> DigitSplit:
    """The training split (its ``train_fraction`` subset; ``train/fit`` in a tuning trial) plus the
    verdicts' digits, if any."""
    # train_fraction 1.0: the whole split, in its order
    split = train_subset(args.train_fraction)[0] if split_name == "train" else load_split(split_name)
    if feedback is None or not len(feedback.targets):
        return split
    return DigitSplit(f"{split.name}+verdicts", np.concatenate([split.images, feedback.inputs.astype(np.float32)]),
                      np.concatenate([split.labels, feedback.targets.astype(np.int64)]),
                      np.concatenate([split.indices, np.full(len(feedback.targets), -1)]))  # -1: not a split digit


def train(args: DigitsArgs, progress: bool = True, feedback: Feedback | None = None, split_name: str = "train",
          after_epoch: Callable[[int, DigitNet], None] | None = None) -> tuple[DigitNet, float]:
    """Fit a DigitNet on ``split_name`` (the training split; ``train/fit`` in a tuning trial), plus
    ``feedback``'s verdicts, starting from its weights when given; returns it (eval mode) and the
    seconds it took. ``after_epoch(n, model)`` runs after the n-th epoch (the model is put back in
    training mode afterwards)."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    split = training_digits(args, feedback, split_name)
    model = DigitNet()
    if feedback is not None and feedback.init_state is not None:
        model.load_state_dict(feedback.init_state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = -(-len(split.labels) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    augment = DigitAugment(enabled=args.augment)
    start, step = time.perf_counter(), 0
    model.train()
    bar = tqdm(range(args.epochs), desc="train digits", unit="epoch", disable=not progress, file=sys.stderr)
    for epoch in bar:
        total, count = 0.0, 0
        for images, labels in digit_batches(split, args.batch_size, rng, augment):
            loss = F.cross_entropy(model(torch.from_numpy(images)), torch.from_numpy(labels))
            if not torch.isfinite(loss):
                raise TrainingDiverged(NAME, step, loss.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            total, count = total + loss.item() * len(labels), count + len(labels)
        bar.set_postfix(loss=f"{total / count:.4f}")
        if after_epoch is not None:
            after_epoch(epoch + 1, model)
            model.train()
    model.eval()
    return model, time.perf_counter() - start


VALIDATION_METRIC = "cross-entropy on the train/validation digits (trials fit on train/fit)"


def validation_trial(args: DigitsArgs, report: Callable[[int, float], None]) -> float:
    """One hyperparameter-search trial (``auditstream tune digits``): fit on ``train/fit``, report
    the :data:`VALIDATION_METRIC` after every epoch (``report`` may stop the trial by raising);
    returns the last value. Calibration and test digits are never touched."""
    validation = load_split("train/validation")
    labels = torch.from_numpy(validation.labels)
    values: list[float] = []

    def check(epoch: int, model: DigitNet) -> None:
        values.append(F.cross_entropy(torch.from_numpy(logits_of(model, validation.images)), labels).item())
        report(epoch, values[-1])

    train(args, progress=False, split_name="train/fit", after_epoch=check)
    return values[-1]


@torch.no_grad()
def logits_of(model: nn.Module, images: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).double().numpy()


def fit_calibration(model: nn.Module) -> float:
    """The temperature, fitted on the calibration digits the certificate does not use."""
    slice_ = load_split("calibration/temperature")
    return fit_temperature(logits_of(model, slice_.images), slice_.labels)


# The card's serving part: what the classification kind's postprocess reads.
SERVING_CARD = ModelCard(name=NAME, version="0", task="classification",
                         inputs=[TensorSpec("pixels", "float32", [None, 8, 8])],
                         outputs=[TensorSpec("probs", "float32", [None, 10])], triage=TriageSpec(threshold=1.0),
                         labels=LABELS)


def served(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, predicted class) of each row of the exported graph's float32 ``probs``, as
    serving computes them: the classification kind's own postprocess (the top probability,
    clipped to [0, 1] and rounded to 6 decimals, auditstream/tasks/base.py). Certifying these
    makes the certified accept set the one serving accepts."""
    answers = CLASSIFICATION.postprocess(SERVING_CARD, {"probs": probs})
    assert all(a is not None for a in answers), "the exported graph produced probabilities outside [0, 1]"
    return (np.array([a.confidence for a in answers], np.float64),
            np.array([a.details["index"] for a in answers], np.int64))


def evaluate(model: DigitNet, onnx_bytes: bytes, temperature: float, args: DigitsArgs, spending: DeltaSpending) -> dict:
    """Certify and measure on the exported model's own outputs, with the confidences serving
    triages on (:func:`served`: torch differs by ~1e-7 and serving rounds to 6 decimals, either
    enough to move an item across the threshold). The certificate is made at ``spending.delta``:
    this version's share of ``args.delta`` on the certificate slice (qc/delta_spending.py)."""
    cert_split, test = load_split("calibration/certificate"), load_split("test")
    (cal_probs,) = run_onnx(onnx_bytes, cert_split.images)
    cal_conf, cal_predicted = served(cal_probs)
    cert = certify_coverage_grid(cal_conf, (cal_predicted != cert_split.labels).astype(int),
                                 args.target_risk, spending.delta)
    raw = softmax(logits_of(model, test.images))
    (calibrated,) = run_onnx(onnx_bytes, test.images)
    conf, predicted = served(calibrated)
    calibrated = calibrated.astype(np.float64)
    errors = (predicted != test.labels).astype(int)
    coverage, risk, n_acc, e_acc = selective_risk(conf, errors, cert.threshold)
    return {
        "temperature": temperature, "certificate": cert, "delta_spending": spending,
        "n_temperature": len(load_split("calibration/temperature").labels),
        "n_certificate": len(cert_split.labels),
        "test_error": float(errors.mean()),
        "ece_before": classification_ece(raw, test.labels), "ece_after": classification_ece(calibrated, test.labels),
        "test_coverage_at_threshold": coverage, "test_risk_at_threshold": risk,
        "test_accepted": n_acc, "test_errors_accepted": e_acc,
        "aurc": area_under_risk_coverage(conf, errors),
        "curve": risk_coverage_curve(conf, errors), "test_confidences": conf,
    }


def build_card(args: DigitsArgs, result: dict, parity: float, train_seconds: float) -> ModelCard:
    cert, spending = result["certificate"], result["delta_spending"]
    metrics = {k: result[k] for k in ("test_error", "ece_before", "ece_after", "test_coverage_at_threshold",
                                      "test_risk_at_threshold", "test_accepted", "test_errors_accepted", "aurc")}
    metrics.update(test_accuracy=1 - result["test_error"], parity_max_abs_diff=parity,
                   n_test=len(result["test_confidences"]))
    return ModelCard(
        name=NAME, version="0", task="classification",
        inputs=[TensorSpec("pixels", "float32", [None, 8, 8])],
        outputs=[TensorSpec("probs", "float32", [None, 10])],
        triage=TriageSpec(threshold=cert.threshold, confidence_kind="max_prob", target_risk=args.target_risk,
                          delta=spending.delta, certified_risk=cert.certified_risk, coverage=cert.coverage,
                          method="coverage-grid clopper-pearson on the exported model's outputs, "
                                 "as serving's confidences"),
        preprocessing={"input": "scikit-learn load_digits() pixel values 0..16, float32, 8x8",
                       "inside_graph": ["x / 16", "(x - 0.3) / 0.4", f"softmax(logits / T), T={result['temperature']:.4f}"]},
        labels=LABELS, metrics=metrics,
        calibration={"method": "temperature scaling (NLL on the calibration/temperature slice)",
                     "temperature": result["temperature"], "ece_before": result["ece_before"],
                     "ece_after": result["ece_after"], "ece_bins": 15, "ece_split": "test"},
        reference=reference_statistics(result["test_confidences"], args.seed) | {"split": "test"},
        risk_coverage=result["curve"],
        training={"args": asdict(args), "seed": args.seed, "git_revision": git_revision(),
                  "train_seconds": train_seconds, "split_seed": SPLIT_SEED, "split_fractions": FRACTIONS},
        extra={"certificate": cert.to_dict(), "certificate_data": (
            f"calibration/certificate slice ({result['n_certificate']} digits), ONNX Runtime outputs of the published "
            f"graph, confidences as serving computes them (the classification kind's postprocess: rounded to 6 "
            f"decimals); the temperature was fitted on the disjoint calibration/temperature slice "
            f"({result['n_temperature']} digits); one target tried, at this version's delta: certificate "
            f"{spending.index} on this slice, {spending.delta:.4g} of the family's {spending.family_delta:g} "
            f"(extra.delta_spending)"), **spending_extra(spending)},
    )


def run(args: DigitsArgs, models_dir: Path, progress: bool = True, feedback: Feedback | None = None,
        tuning: dict | None = None) -> dict:
    """Train, calibrate, certify, export, publish (with the torch weights beside the ONNX file,
    for fine-tuning); returns the JSON summary. ``feedback``: retraining from verdicts
    (training/feedback.py); ``tuning``: the hyperparameter search that chose ``args``
    (training/tuning/), for the card."""
    certificate_spending(models_dir, NAME, args.delta)  # refuse an unreadable registry before training
    model, train_seconds = train(args, progress, feedback)
    temperature = fit_calibration(model)
    exported = CalibratedClassifier(model, temperature).eval()
    onnx_bytes = export_onnx(exported, torch.zeros(2, 8, 8), "pixels", ["probs"])
    parity = check_parity(exported, onnx_bytes, load_split("test").images[:256])
    # counted now, just before certifying: the versions published while this one trained count too
    spending = certificate_spending(models_dir, NAME, args.delta, reserve=True)
    result = evaluate(model, onnx_bytes, temperature, args, spending)
    card = build_card(args, result, parity, train_seconds)
    card = record_provenance(card, feedback, tuning, n_train=len(training_digits(args, feedback).labels))
    cert = result["certificate"]
    summary = {"model": NAME, **{k: card.metrics[k] for k in ("test_error", "ece_before", "ece_after",
                                                               "test_risk_at_threshold", "test_coverage_at_threshold")},
               "target_risk": args.target_risk, "delta": spending.delta, "family_delta": args.delta,
               "delta_spending": spending.to_dict(), "delta_note": spending.describe(),
               "certified_risk": cert.certified_risk,
               "coverage": cert.coverage, "threshold": cert.threshold, "temperature": result["temperature"],
               "parity_max_abs_diff": parity, "train_seconds": train_seconds}
    if args.publish:
        published = ModelRegistry(models_dir).publish(card, onnx_bytes)
        save_weights(model, published.directory)
        plot_risk_coverage({"max prob (test)": result["curve"]}, published.directory / "risk_coverage.png",
                           args.target_risk, (result["test_coverage_at_threshold"], result["test_risk_at_threshold"]),
                           f"digits v{published.card.version}: risk-coverage on the test split")
        summary.update(version=published.card.version, path=str(published.directory))
    return summary


def print_summary(summary: dict) -> None:
    """Human-readable lines with the targets of issue 3 next to the numbers."""
    print(f"digits: test error {summary['test_error']:.2%} (target <= 1.5%)")
    print(f"  ECE {summary['ece_before']:.2%} -> {summary['ece_after']:.2%} after T={summary['temperature']:.3f} (target <= 2%)")
    print(f"  certified: risk <= {summary['certified_risk']:.2%} at coverage {summary['coverage']:.1%} on calibration "
          f"(target risk {summary['target_risk']:.0%}, {summary['delta_note']}; coverage target >= 90%, stretch 95%)")
    print(f"  test at the threshold {summary['threshold']:.4f}: coverage {summary['test_coverage_at_threshold']:.1%}, "
          f"risk {summary['test_risk_at_threshold']:.2%}")
    print(f"  ONNX parity {summary['parity_max_abs_diff']:.2g}, trained in {summary['train_seconds']:.1f} s (target < 60 s)")
    if "path" in summary:
        print(f"  published {summary['path']}")


def main(args: DigitsArgs, as_json: bool = False) -> int:
    return train_and_report(run, print_summary, args, as_json)


if __name__ == "__main__":
    from training.digits.cli import COMMAND

    sys.exit(main(*COMMAND.parse(sys.argv[1:])))
