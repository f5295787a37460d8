"""Train the ``detector``: a parcel label image -> scored boxes around its handwritten digits.

    auditstream train detector --json        # 3,400 steps, ~10 min on 2 CPU cores (docs/detector.md)
    python -m training.detector.train        # the same, without the auditstream CLI

Flow (one readable script): args (``DetectorArgs``, training/detector/args.py) -> data (fresh
labels from *training-split* digits for every batch, standard and hard mixed,
training/detector/data.py, made in a worker process) -> model (a small CenterNet and a reader
that reads each box again, training/detector/model.py) -> loop (both together, AdamW, one-cycle
LR) -> calibrate the scores (Platt scaling of the peak logit, its rival
and the reader's log-probability on labels of the calibration/temperature digits) -> export ONNX
(preprocessing, peak extraction, top-K, boxes, the reader and the calibrated scores inside the
graph; parity-checked on the test labels) -> measure COCO mAP
(pycocotools) on test labels of both variants -> certify the two score thresholds on labels of the
disjoint calibration/certificate digits (Learn-then-Test on the FDR of auto-accepted boxes and
conformal risk control of the miss rate, qc/detection_certify.py; the FDR test at this version's
share of delta on those labels, qc/delta_spending.py) on the exported graph's own outputs, as the
detection kind's postprocess serves them (:func:`served`: the boxes it keeps and the scores it
publishes, rounded to 6 decimals, which both thresholds compare) -> measure the triage on the test
labels -> publish with card and risk-coverage plot.

Serving contract: input ``image`` float32 [batch, 64, 64] (grayscale 0..1, dark ink on light
paper); outputs ``boxes`` float32 [batch, 16, 4] (x0, y0, x1, y1 in pixels), ``labels`` int64
[batch, 16] (the digit), ``scores`` float32 [batch, 16] (calibrated, descending). The card's
triage threshold is the certified high threshold, ``extra.threshold_low`` the low one.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Iterator

# Before torch loads OpenMP: its waiting workers sleep instead of spinning. On a machine whose 2
# cores other jobs share, two spinning workers wait on each other for whole time slices (20
# steps under load 6: 1.55 s a step spinning, 0.34 s sleeping, 0.30 s with one thread).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from scipy.optimize import linear_sum_assignment, minimize
from scipy.special import expit
from tqdm import tqdm

from auditstream.errors import ExportParityError
from auditstream.registry import ModelCard, ModelRegistry, TensorSpec, TriageSpec
from auditstream.tasks.base import Answer
from auditstream.tasks.detection import TASK as DETECTION
from qc.calibration import expected_calibration_error
from qc.certify import risk_coverage_curve
from qc.detection_certify import (HIGH_GRID, DetectionCertificate, ScoredBoxes, certify_detection,
                                  score_images, triage_outcome)
from training.data.split import FRACTIONS, SPLIT_SEED, load_split
from training.detector.args import DetectorArgs
from training.detector.data import (CLASSES, IMAGE_SIZE, VARIANTS, DetectionSet, make_detection_set, to_coco,
                                   training_batches)
from training.detector.model import (OUTPUT_NAMES, READ_MARGIN, READ_SIZE, TOP_K, DetectorNet, ExportedDetector,
                                     ReaderNet, candidate_rows, loss, reading_examples, reading_loss, snap_to_pixels,
                                     targets)
from training.export import export_onnx, git_revision, output_difference, run_onnx
from training.family_cli import train_and_report
from training.fit import fit_steps, in_background
from qc.delta_spending import CertificateSlice, DeltaSpending
from training.selective import (certificate_slice, certificate_spending, plot_risk_coverage, reference_statistics,
                                spending_extra)

NAME = "detector"
LABELS = [str(d) for d in range(CLASSES)]
# Fixed seeds (not args.seed): every model version is judged on the same labels.
SEEDS = {"platt": 9001, "certificate": 9002, "standard": 9003, "hard": 9004}
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [n, K, 4], labels [n, K], scores [n, K]
ServedRows = list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per image: boxes [k, 4], labels [k], scores [k]


def training_stream(args: DetectorArgs) -> Iterator[tuple[DetectionSet, dict, tuple]]:
    """Per step: fresh training labels, the detector's targets and the reader's examples (the
    numpy part of a step, ~0.055 s; made in a worker process when ``args.background_data``)."""
    rng, reading_rng = np.random.default_rng(args.seed), np.random.default_rng([args.seed, 1])
    for batch in training_batches("train", args.batch_size, args.steps, rng, args.hard_share, args.elastic):
        yield batch, targets(batch), reading_examples(batch, reading_rng)


def train(args: DetectorArgs, progress: bool = True) -> tuple[DetectorNet, ReaderNet, float]:
    """Fit the detector and its reader together on fresh training labels (the sum of both losses:
    their weights are disjoint, so each learns as if alone); returns both (eval mode) and the
    seconds it took."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    net, reader = DetectorNet(), ReaderNet()

    def batch_loss(step: tuple[DetectionSet, dict, tuple]) -> torch.Tensor:
        batch, target, examples = step  # from a worker, the arrays of target and examples arrive as tensors
        images = torch.as_tensor(batch.images)
        return loss(net(images), target) + reading_loss(reader, images, examples)

    make_stream = partial(training_stream, args)
    stream = in_background(make_stream) if args.background_data else make_stream()
    seconds = fit_steps(nn.ModuleDict({"detector": net, "reader": reader}), stream, args.steps, batch_loss, name=NAME,
                        lr=args.lr, weight_decay=args.weight_decay, pct_start=0.15, progress=progress)
    return net, reader, seconds


@torch.no_grad()
def raw_detections(net: DetectorNet, reader: ReaderNet, images: np.ndarray,
                   batch: int = 256) -> tuple[Detections, np.ndarray, np.ndarray]:
    """Torch's decoded rows (boxes snapped to pixels, as the graph does) with the *raw* peak logits
    in place of scores (before calibration), and each row's rival logit and reading [n, K]
    (training/detector/model.py)."""
    net.eval()
    reader.eval()
    parts = []
    for i in range(0, len(images), batch):
        logits, labels, boxes, rivals, readings = candidate_rows(net, reader, torch.from_numpy(images[i:i + batch]))
        parts.append((snap_to_pixels(boxes).numpy(), labels.numpy(), logits.double().numpy(), rivals.double().numpy(),
                      readings.double().numpy()))
    boxes, labels, logits, rivals, readings = (np.concatenate([p[k] for p in parts]) for k in range(5))
    return (boxes, labels, logits), rivals, readings


def onnx_detections(onnx_bytes: bytes, images: np.ndarray) -> Detections:
    """What serving runs: the exported graph's rows under ONNX Runtime, as it outputs them
    (float32 scores). Thresholds are compared with :func:`served` scores, never with these."""
    boxes, labels, scores = run_onnx(onnx_bytes, images)
    return boxes, labels, scores


def serving_card(threshold_low: float, match_iou: float) -> ModelCard:
    """The card's serving part: what the detection kind's postprocess reads (the published card
    is :func:`build_card`'s, with these outputs, labels and ``extra``)."""
    return ModelCard(name=NAME, version="0", task="detection",
                     inputs=[TensorSpec("image", "float32", [None, IMAGE_SIZE, IMAGE_SIZE])],
                     outputs=[TensorSpec("boxes", "float32", [None, TOP_K, 4]),
                              TensorSpec("labels", "int64", [None, TOP_K]),
                              TensorSpec("scores", "float32", [None, TOP_K])],
                     triage=TriageSpec(threshold=1.0), labels=LABELS,
                     extra={"threshold_low": threshold_low, "match_iou": match_iou, "max_boxes": TOP_K})


def served(detections: Detections, threshold_low: float, match_iou: float) -> list[Answer]:
    """Each image's answer as serving makes it from the exported graph's float32 rows: the
    detection kind's own postprocess (auditstream/tasks/detection.py) at ``threshold_low``. It keeps
    the rows whose published score (clipped to [0, 1], rounded to 6 decimals) clears
    ``threshold_low``, and triage compares the kept boxes' published scores with the high
    threshold; certifying these makes the certified accept set the one serving accepts."""
    boxes, labels, scores = detections
    answers = DETECTION.postprocess(serving_card(threshold_low, match_iou),
                                    {"boxes": boxes, "labels": labels, "scores": scores})
    if any(a is None for a in answers):
        raise ValueError(f"the exported graph made {sum(a is None for a in answers)} rows serving cannot answer "
                         "(scores outside [0, 1], boxes drawn backwards or labels out of range)")
    return answers  # type: ignore[return-value]


def served_rows(detections: Detections, match_iou: float) -> ServedRows:
    """Every row of every image as serving publishes it (:func:`served` at ``threshold_low`` 0,
    which keeps them all): boxes, labels and the published scores, best first. What the
    certificate, the threshold choice and the test figures count: a box is kept at ``t_low`` and
    gates at ``t_high`` exactly when its score here clears them, as in serving."""
    rows = []
    for answer in served(detections, 0.0, match_iou):
        dets = answer.output
        rows.append((np.array([d["box"] for d in dets], np.float64).reshape(len(dets), 4),
                     np.array([d["label"] for d in dets], np.int64), np.array([d["score"] for d in dets], np.float64)))
    return rows


def scored(data: DetectionSet, rows: ServedRows | Detections, iou: float) -> ScoredBoxes:
    """The boxes of ``rows`` (per image: boxes, labels, scores; :func:`served_rows` for anything
    compared with a threshold) scored against ``data``'s objects."""
    boxes, labels, scores = zip(*rows) if isinstance(rows, list) else rows
    return score_images(list(zip(boxes, labels, scores)), list(zip(data.boxes, data.labels)), iou)


PLATT_INPUTS = ("a", "a_rival", "a_read")  # the coefficients of the peak logit, its rival and its reading


def fit_platt(logits: np.ndarray, rivals: np.ndarray, readings: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Platt scaling with three inputs: ``a``, ``a_rival``, ``a_read`` and ``b`` of
    ``P(box is true) = sigmoid(a * logit + a_rival * rival + a_read * reading + b)`` by maximum
    likelihood, with ``a > 0``, ``a_rival <= 0`` (a stronger rival never makes a box more
    believable) and ``a_read >= 0`` (nor does the reader doubting the row's class)."""
    x = np.stack([np.clip(v.astype(np.float64).reshape(-1), -50, 50) for v in (logits, rivals, readings)]
                 + [np.ones(true.size)], axis=1)
    y = true.astype(np.float64).reshape(-1)

    def nll(params: np.ndarray) -> tuple[float, np.ndarray]:
        s = x @ params
        return float(np.sum(np.logaddexp(0, s) - y * s)), x.T @ (expit(s) - y)

    result = minimize(nll, np.array([1.0, 0.0, 0.0, 0.0]), jac=True, method="L-BFGS-B",
                      bounds=[(1e-3, 100.0), (-100.0, 0.0), (0.0, 100.0), (-50.0, 50.0)])
    return {**dict(zip(PLATT_INPUTS, map(float, result.x[:3]))), "b": float(result.x[3])}


def calibrate(net: DetectorNet, reader: ReaderNet, args: DetectorArgs) -> dict:
    """Platt constants fitted on labels of the calibration/temperature digits, which the
    certificate does not use (a point estimate, not a guarantee: digit reuse only costs precision)."""
    data = make_detection_set("calibration/temperature", args.n_platt, SEEDS["platt"])
    raw, rivals, readings = raw_detections(net, reader, data.images)
    boxes = scored(data, raw, args.match_iou)  # scored keeps the rows' order: rivals and readings line up
    return {**fit_platt(boxes.scores, rivals, readings, boxes.true), "n_images": len(data),
            "n_boxes": len(boxes.scores)}


def detection_parity(module: ExportedDetector, onnx_bytes: bytes, images: np.ndarray, atol: float = 1e-4) -> float:
    """Max |ONNX Runtime - torch| over the rows of each image matched one to one (same label).

    :func:`training.export.check_parity` compares row by row; a top-K list is a set in score
    order, and two peaks whose logits differ by less than the runtimes' ~1e-6 may swap places
    (then both rows are still there). The graph rounds box edges to whole pixels, and two
    runtimes that differ by 1e-6 may round an edge at x.5 apart; so each of ONNX Runtime's edges
    is compared with torch's *unrounded* edge, as its distance from the pixel ONNX Runtime rounded
    to (``[edge - 0.5, edge + 0.5]``; 0 when it is the same rounding). Raises
    :class:`ExportParityError` above ``atol``."""
    module.eval()
    with torch.no_grad():
        chunks = [tuple(t.numpy() for t in module.rows(torch.from_numpy(images[i:i + 256]), snap=False))
                  for i in range(0, len(images), 256)]
    expected = [np.concatenate(x) for x in zip(*chunks)]
    actual = run_onnx(onnx_bytes, images)
    if len(actual) != len(expected):
        raise ExportParityError(float("inf"), atol, len(images),
                                f"ONNX Runtime gives {len(actual)} outputs, torch {len(expected)}")
    for name, a, e in zip(("boxes", "labels", "scores"), actual, expected):
        output_difference(a, e, name, atol, len(images))  # same shapes, no NaN or inf on either side
    if not np.array_equal(actual[0], np.round(actual[0])):
        raise ExportParityError(float(np.abs(actual[0] - np.round(actual[0])).max()), atol, len(images))
    worst = 0.0
    for (eb, el, es), (ab, al, as_) in zip(zip(*expected), zip(*actual)):
        edges = np.maximum(np.abs(eb[:, None, :] - ab[None, :, :]) - 0.5, 0.0).max(-1)
        cost = np.maximum(np.abs(es[:, None] - as_[None, :]), edges)
        cost = np.where(el[:, None] == al[None, :], cost.astype(np.float64), np.inf)
        if not np.isfinite(cost).any(axis=1).all():
            raise ExportParityError(float("inf"), atol, len(images))
        rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e9))
        matched = float(cost[rows, cols].max()) if len(rows) else 0.0
        if not matched <= atol:  # NaN too (Python's max(worst, nan) would keep worst)
            raise ExportParityError(matched, atol, len(images))
        worst = max(worst, matched)
    if not worst <= atol:
        raise ExportParityError(worst, atol, len(images))
    return worst


def coco_map(data: DetectionSet, detections: Detections) -> dict[str, float]:
    """COCO box AP (pycocotools' COCOeval, every graph row a detection): mAP@[.5:.95], @.5, @.75."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    boxes, labels, scores = detections
    results = [{"image_id": i + 1, "category_id": int(label), "score": float(score),
                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]}
               for i in range(len(boxes)) for box, label, score in zip(boxes[i], labels[i], scores[i])]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        truth = COCO()
        truth.dataset = to_coco(data)
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map_50_95": float(evaluation.stats[0]), "map_50": float(evaluation.stats[1]),
            "map_75": float(evaluation.stats[2])}


def certificate_labels(args: DetectorArgs) -> CertificateSlice:
    """The certificate's data as the δ spending counts it (qc/delta_spending.py): the
    calibration/certificate digits and the labels rendered from them (seed, count, variant).
    Versions certified on labels of the same seed share the slice, whatever their count."""
    return certificate_slice("calibration/certificate", {
        "kind": "detector labels (training/detector/data.py render)", "variant": "standard",
        "seed": SEEDS["certificate"], "count": args.n_certificate})


def evaluate(exported: ExportedDetector, onnx_bytes: bytes, args: DetectorArgs, spending: DeltaSpending,
             progress: bool = True) -> dict:
    """mAP on test labels of both variants, certificate on calibration/certificate labels, triage
    on the test labels, all on the exported graph's outputs; every score compared with a threshold
    (certificate, threshold choice, test figures, risk curve, drift reference) is the one serving
    compares (:func:`served_rows`, :func:`served`). The FDR test spends
    ``spending.delta``: this version's share of ``args.delta`` on the certificate labels
    (qc/delta_spending.py)."""
    bar = tqdm(total=2 + len(VARIANTS), desc="certify and measure", unit="set", disable=not progress, file=sys.stderr)
    # The score-calibration labels are independent of the certificate's: they choose where the
    # fixed sequence of FDR tests starts (qc/detection_certify.py).
    pilot_data = make_detection_set("calibration/temperature", args.n_platt, SEEDS["platt"])
    pilot = scored(pilot_data, served_rows(onnx_detections(onnx_bytes, pilot_data.images), args.match_iou),
                   args.match_iou)
    bar.update()
    cert_data = make_detection_set("calibration/certificate", args.n_certificate, SEEDS["certificate"])
    cert_boxes = scored(cert_data, served_rows(onnx_detections(onnx_bytes, cert_data.images), args.match_iou),
                        args.match_iou)
    certificate = certify_detection(cert_boxes, args.target_fdr, args.target_miss, spending.delta, TOP_K,
                                    args.p_value, pilot=pilot)
    bar.update()
    result: dict = {"certificate": certificate, "n_certificate_objects": cert_data.n_objects,
                    "delta_spending": spending,
                    "certificate_outcome": triage_outcome(cert_boxes, certificate.threshold_high,
                                                          certificate.threshold_low)}
    for variant in VARIANTS:
        data = make_detection_set("test", args.n_test, SEEDS[variant], variant)
        detections = onnx_detections(onnx_bytes, data.images)
        boxes = scored(data, served_rows(detections, args.match_iou), args.match_iou)
        # mAP ranks the graph's rows (no threshold); the triage figures count the served ones
        result[variant] = {**coco_map(data, detections), "n_images": len(data), "n_objects": data.n_objects,
                           **triage_outcome(boxes, certificate.threshold_high, certificate.threshold_low)}
        if variant == "standard":
            result["parity"] = detection_parity(exported, onnx_bytes, data.images)
            raw = scored(data, raw_detections(exported.net, exported.reader, data.images)[0], args.match_iou)
            result["ece_before"] = expected_calibration_error(1 / (1 + np.exp(-raw.scores)), raw.true)
            result["ece_after"] = expected_calibration_error(boxes.scores, boxes.true)
            kept = boxes.scores >= certificate.threshold_low
            result["curve"] = (risk_coverage_curve(boxes.scores[kept], (~boxes.true[kept]).astype(int))
                               if kept.any() else [])
            result["test_confidences"] = np.array([a.confidence for a in served(
                detections, certificate.threshold_low, args.match_iou)], np.float64)  # serving's, at t_low
        bar.update()
    bar.close()
    return result


def build_card(args: DetectorArgs, result: dict, calibration: dict, train_seconds: float) -> ModelCard:
    cert: DetectionCertificate = result["certificate"]
    spending: DeltaSpending = result["delta_spending"]
    std, hard = result["standard"], result["hard"]
    metrics = {**{k: std[k] for k in ("map_50_95", "map_50", "map_75")},
               **{f"hard_{k}": hard[k] for k in ("map_50_95", "map_50", "map_75")},
               "parity_max_abs_diff": result["parity"], "n_test": std["n_images"], "n_test_objects": std["n_objects"],
               "test_triage": {k: v for k, v in std.items() if not k.startswith("map")},
               "hard_test_triage": {k: v for k, v in hard.items() if not k.startswith("map")},
               "ece_before": result["ece_before"], "ece_after": result["ece_after"]}
    return ModelCard(
        name=NAME, version="0", task="detection",
        inputs=[TensorSpec("image", "float32", [None, IMAGE_SIZE, IMAGE_SIZE])],
        outputs=[TensorSpec("boxes", "float32", [None, TOP_K, 4]), TensorSpec("labels", "int64", [None, TOP_K]),
                 TensorSpec("scores", "float32", [None, TOP_K])],
        triage=TriageSpec(threshold=cert.threshold_high, confidence_kind="min_box_score", target_risk=args.target_fdr,
                          delta=spending.delta, certified_risk=args.target_fdr if cert.certified else 1.0,
                          coverage=result["certificate_outcome"]["images_without_human"],
                          method=f"learn-then-test on the served FDR (the boxes of labels whose every kept box "
                                 f"clears the threshold) on {cert.high.n_images} certificate labels, at the drop "
                                 f"threshold conformal risk control chose on {cert.n_select} others: fixed sequence "
                                 f"down a grid of {len(HIGH_GRID)} thresholds from {cert.high.start} (chosen on "
                                 f"those and the score-calibration labels), {args.p_value} p-values"),
        preprocessing={"input": f"grayscale label float32 {IMAGE_SIZE}x{IMAGE_SIZE}, 0..1, dark ink on light paper",
                       "inside_graph": ["ink = 1 - x", "per-image standardisation", "CenterNet heads (stride 4)",
                                        "peaks: logit == 3x3 max pool", f"top-{TOP_K} peaks over classes and cells",
                                        "boxes from size and offset at the peak",
                                        "rival = the highest other-class logit in the 3x3 cells around the peak",
                                        f"reading = the reader's log-probability of the row's class on its box "
                                        f"(resampled to {READ_SIZE}x{READ_SIZE} with a {READ_MARGIN:.0%} margin)",
                                        f"score = sigmoid({calibration['a']:.4f} * logit "
                                        f"{calibration['a_rival']:+.4f} * rival {calibration['a_read']:+.4f} * reading "
                                        f"{calibration['b']:+.4f}), rows re-ordered by it",
                                        "box edges rounded to whole pixels"]},
        labels=LABELS, metrics=metrics,
        calibration={"method": "Platt scaling of the peak logit, its rival logit and the reader's log-probability of "
                               "the row's class (P(box is true), greedy IoU >= match_iou matching), fitted on labels "
                               "of the calibration/temperature digits",
                     **calibration,
                     "ece_before": result["ece_before"], "ece_after": result["ece_after"], "ece_level": "box",
                     "ece_bins": 15, "ece_split": "test (standard)"},
        reference=reference_statistics(result["test_confidences"], args.seed) | {"split": "test (standard)"},
        risk_coverage=result["curve"],
        training={"args": asdict(args), "seed": args.seed, "git_revision": git_revision(),
                  "train_seconds": train_seconds, "split_seed": SPLIT_SEED, "split_fractions": FRACTIONS,
                  "data": {"train": f"fresh labels every step, hard share {args.hard_share}, elastic {args.elastic}",
                           "seeds": SEEDS}},
        extra={"threshold_low": cert.threshold_low, "threshold_high": cert.threshold_high, "match_iou": args.match_iou,
               "max_boxes": TOP_K, "target_fdr": args.target_fdr, "target_miss": args.target_miss,
               "certificate": cert.to_dict(), "certificate_outcome": result["certificate_outcome"],
               "certificate_data": (
                   f"{args.n_certificate} standard labels ({result['n_certificate_objects']} digits) rendered from the "
                   f"{len(load_split('calibration/certificate').labels)} calibration/certificate digits, ONNX Runtime "
                   f"outputs of the published graph as serving keeps and scores them (the detection kind's "
                   f"postprocess: scores rounded to 6 decimals, both thresholds compared with them); the Platt constants were fitted on labels of the disjoint "
                   f"calibration/temperature digits; the FDR test at this version's delta: certificate "
                   f"{spending.index} on these labels, {spending.delta:.4g} of the family's "
                   f"{spending.family_delta:g} (extra.delta_spending)"),
               "certificate_scope": (
                   "labels are i.i.d. given the pool of certificate digits (a digit image may appear in several "
                   "labels), so the FDR certificate (probability >= 1 - delta) and the miss-rate bound (in "
                   "expectation) hold for new labels written with that handwriting; metrics.test_triage measures "
                   "them on labels of the disjoint test digits. The FDR is that of the boxes serving auto-accepts "
                   "(labels whose every kept box clears threshold_high), what the monitor estimates from audits. "
                   "delta is spent once, on the FDR test of the test labels at the threshold_low the selection "
                   "labels (every 4th certificate label) chose; conformal risk control spends none"),
               **spending_extra(spending)},
    )


def run(args: DetectorArgs, models_dir: Path, progress: bool = True) -> dict:
    """Train, calibrate, export, measure, certify, publish; returns the JSON summary."""
    certificate_spending(models_dir, NAME, args.delta, certificate_labels(args))  # an unreadable registry: refused now
    net, reader, train_seconds = train(args, progress)
    return finish(net, reader, train_seconds, args, models_dir, progress)


def finish(net: DetectorNet, reader: ReaderNet, train_seconds: float, args: DetectorArgs, models_dir: Path,
           progress: bool = True) -> dict:
    """Everything after the training loop (:func:`run`): calibrate, export, certify, measure, publish."""
    calibration = calibrate(net, reader, args)
    exported = ExportedDetector(net, reader, calibration["a"], calibration["b"], calibration["a_rival"],
                                calibration["a_read"]).eval()
    onnx_bytes = export_onnx(exported, torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE), "image", list(OUTPUT_NAMES))
    # counted now, just before certifying: the versions published while this one trained count too
    spending = certificate_spending(models_dir, NAME, args.delta, certificate_labels(args), reserve=True)
    result = evaluate(exported, onnx_bytes, args, spending, progress)
    card = build_card(args, result, calibration, train_seconds)
    cert: DetectionCertificate = result["certificate"]
    std, hard = result["standard"], result["hard"]
    summary = {"model": NAME, "map_50_95": std["map_50_95"], "map_50": std["map_50"], "map_75": std["map_75"],
               "hard_map_50_95": hard["map_50_95"], "hard_map_50": hard["map_50"], "hard_map_75": hard["map_75"],
               "parity_max_abs_diff": result["parity"], "train_seconds": train_seconds,
               "accepted_fdr_target": args.target_fdr, "accepted_fdr_test": std["accepted_fdr"],
               "objects_auto_accepted": std["objects_auto_accepted"], "miss_rate_target": args.target_miss,
               "miss_rate_test": std["miss_rate"], "auditor_boxes_per_image": std["auditor_boxes_per_image"],
               "images_without_human": std["images_without_human"],
               "hard_accepted_fdr_test": hard["accepted_fdr"],
               "hard_objects_auto_accepted": hard["objects_auto_accepted"], "hard_miss_rate_test": hard["miss_rate"],
               "hard_auditor_boxes_per_image": hard["auditor_boxes_per_image"],
               "threshold_high": cert.threshold_high, "threshold_low": cert.threshold_low,
               "high_certified": cert.certified, "low_certified": cert.low.certified,
               "delta": spending.delta, "family_delta": args.delta, "delta_spending": spending.to_dict(),
               "delta_note": spending.describe(), "p_value": args.p_value, "n_certificate": args.n_certificate,
               "certificate_fdr": result["certificate_outcome"]["accepted_fdr"], "ece_before": result["ece_before"],
               "ece_after": result["ece_after"], "platt_a": calibration["a"], "platt_b": calibration["b"],
               "platt_a_rival": calibration["a_rival"], "platt_a_read": calibration["a_read"]}
    if args.publish:
        published = ModelRegistry(models_dir).publish(card, onnx_bytes)
        plot_risk_coverage({"box score (test, kept boxes)": result["curve"]}, published.directory / "risk_coverage.png",
                           args.target_fdr, (std["accepted_boxes_per_image"] / max(
                               std["accepted_boxes_per_image"] + std["auditor_boxes_per_image"], 1e-12),
                               std["accepted_fdr"]),
                           f"detector v{published.card.version}: FDR vs share of kept boxes auto-accepted")
        summary.update(version=published.card.version, path=str(published.directory))
    return summary


def print_summary(s: dict) -> None:
    print(f"detector: COCO mAP@[.5:.95] {s['map_50_95']:.3f} (target >= 0.85), mAP@.5 {s['map_50']:.4f} "
          f"(target >= 0.99) on standard test labels")
    print(f"  hard labels (same model): mAP@[.5:.95] {s['hard_map_50_95']:.3f}, mAP@.5 {s['hard_map_50']:.4f}")
    print(f"  box scores: Platt a={s['platt_a']:.3f} a_rival={s['platt_a_rival']:.3f} a_read={s['platt_a_read']:.3f} "
          f"b={s['platt_b']:.3f}; box ECE {s['ece_before']:.2%} -> {s['ece_after']:.2%}")
    print(f"  certified on {s['n_certificate']} labels ({s['p_value']} p-values, {s['delta_note']}): "
          f"auto-accept boxes "
          f">= {s['threshold_high']:.4f} (FDR <= {s['accepted_fdr_target']:.0%}"
          f"{'' if s['high_certified'] else ', NOT certified: nothing auto-accepted'}), drop boxes < "
          f"{s['threshold_low']:.4f} (expected miss share <= {s['miss_rate_target']:.0%}"
          f"{'' if s['low_certified'] else ', not met: every row kept'})")
    print(f"  test: FDR of auto-accepted boxes {s['accepted_fdr_test']:.2%} (target <= 2%), objects auto-accepted "
          f"{s['objects_auto_accepted']:.1%} (target >= 95%), miss share {s['miss_rate_test']:.2%}, "
          f"auditor boxes per label {s['auditor_boxes_per_image']:.3f}, labels without a human "
          f"{s['images_without_human']:.1%}")
    print(f"  hard test: FDR {s['hard_accepted_fdr_test']:.2%}, objects auto-accepted "
          f"{s['hard_objects_auto_accepted']:.1%}, miss share {s['hard_miss_rate_test']:.2%} (no promise: "
          "certified on standard labels)")
    print(f"  ONNX parity {s['parity_max_abs_diff']:.2g}, trained in {s['train_seconds']:.0f} s (target < 600 s)")
    if "path" in s:
        print(f"  published {s['path']}")


def main(args: DetectorArgs, as_json: bool = False) -> int:
    return train_and_report(run, print_summary, args, as_json)


if __name__ == "__main__":
    from training.detector.cli import COMMAND

    sys.exit(main(*COMMAND.parse(sys.argv[1:])))
