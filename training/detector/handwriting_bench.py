"""``auditstream bench detector-handwriting``: how far the detector's FDR certificate carries to
handwriting it never saw.

The certificate (qc/detection_certify.py) treats labels as i.i.d.; its 3,000 labels reuse the 486
``calibration/certificate`` digit images, so it is exact for labels written with *that* pool of
handwriting. A few digit images cause most false accepted boxes (a misread digit is misread
wherever it appears), so which digits a pool holds moves its FDR. This bench measures that on the
digits the model never trained on, the ``calibration`` and ``test`` splits together (the
"held-out population"), with the model's own ONNX graph:

1. ``population_fdr``: the FDR of the boxes serving auto-accepts at the model's certified pair
   ``(t_low, t_high)`` (the boxes of labels whose every kept box clears ``t_high``, what the
   certificate bounds) on labels drawn from every held-out digit;
2. ``pool_fdr``: the same pair on labels of random held-out pools of the test pool's size:
   how much one pool's number (the training summary's ``accepted_fdr_test`` is one) moves by which
   digits it holds;
3. ``resplits``: the certificate run again as training runs it (``n_certificate`` labels of a random
   pool of 486 held-out digits; the walk's start from ``n_platt`` labels of 53 others), and the
   share of re-splits whose served pair has a population FDR above the target. A
   certificate valid for new handwriting breaks in at most delta of them; the population holds the
   re-split's own digits, which favours the certificate, so a share above delta is a lower bound.

The model runs on ONNX Runtime, as served; fixed seeds. About 5 minutes on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from auditstream import finite_json
from auditstream.registry import ModelCard


@dataclass(frozen=True)
class HandwritingArgs:
    pools: int = 12  # random held-out pools of the test pool's size
    resplits: int = 12  # certificates re-run on random held-out pools
    labels_per_pool: int = 1000
    population_labels: int = 8000
    certificate_labels: int | None = None  # per re-split (default: the card's n_certificate, as training ran it)
    pilot_labels: int | None = None  # per re-split (default: the card's n_platt)
    seed: int = 0


def run_bench(card: ModelCard, onnx_bytes: bytes, args: HandwritingArgs, progress: bool = True) -> dict:
    from qc.detection_certify import certify_detection, served_counts
    from training.data.split import load_split
    from training.detector.data import STANDARD, render
    from training.detector.train import onnx_detections, scored, served_rows

    extra = card.extra
    alpha, beta, iou, k = extra["target_fdr"], extra["target_miss"], extra["match_iou"], extra["max_boxes"]
    high = extra["certificate"]["high"]
    held_out = [load_split("calibration"), load_split("test")]
    images, labels, sources = (np.concatenate([getattr(s, field) for s in held_out])
                               for field in ("images", "labels", "indices"))
    held = np.arange(len(images))  # positions in the held-out digits; pools are sets of them
    sizes = {name: len(load_split(split).indices) for name, split in
             (("test", "test"), ("certificate", "calibration/certificate"), ("pilot", "calibration/temperature"))}
    trained = card.training.get("args", {})
    n_certificate = args.certificate_labels or trained.get("n_certificate", 3000)
    n_platt = args.pilot_labels or trained.get("n_platt", 1000)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()

    def boxes(pool: np.ndarray, n: int):
        data = render(images[pool], labels[pool], sources[pool], n, np.random.default_rng(int(rng.integers(2**31))),
                      STANDARD)
        return scored(data, served_rows(onnx_detections(onnx_bytes, data.images), iou), iou)  # as served

    def fdr(data, threshold: float, low: float) -> float:
        """The served FDR at (low, threshold): false among the boxes of the auto-accepted labels."""
        if threshold > 1.0:
            return 0.0  # nothing certified: nothing auto-accepted
        accepted, false, _ = served_counts(data, threshold, low)
        return float(false.sum() / max(accepted.sum(), 1))

    bar = tqdm(total=1 + args.pools + args.resplits, desc="bench detector-handwriting", unit="set",
               disable=not progress, file=sys.stderr)
    population = boxes(held, args.population_labels)
    bar.update()
    threshold, low = float(card.triage.threshold), float(extra["threshold_low"])
    pool_fdr = []
    for _ in range(args.pools):
        pool_fdr.append(fdr(boxes(np.sort(rng.choice(held, sizes["test"], replace=False)), args.labels_per_pool),
                            threshold, low))
        bar.update()
    resplits = []
    for _ in range(args.resplits):
        order = rng.permutation(held)
        n_cert = sizes["certificate"]
        cert_pool, pilot_pool = order[:n_cert], order[n_cert:n_cert + sizes["pilot"]]
        cert_boxes = boxes(np.sort(cert_pool), n_certificate)
        certificate = certify_detection(cert_boxes, alpha, beta, high["delta"], k, high["p_value"],
                                        pilot=boxes(np.sort(pilot_pool), n_platt))
        t, t_low = certificate.threshold_high, certificate.threshold_low  # the pair serving would use
        resplits.append({"threshold_high": t, "threshold_low": t_low, "certificate_fdr": fdr(cert_boxes, t, t_low),
                         "population_fdr": fdr(population, t, t_low)})
        bar.update()
    bar.close()
    broken = sum(r["population_fdr"] > alpha for r in resplits)
    return {"bench": "detector-handwriting", "model_version": card.version, "threshold_high": threshold,
            "target_fdr": alpha, "delta": high["delta"], "held_out_digits": len(held),
            "population_labels": args.population_labels, "population_fdr": fdr(population, threshold, low),
            "threshold_low": low,
            "pool_size": sizes["test"], "pool_fdr_median": float(np.median(pool_fdr)),
            "pool_fdr_min": float(np.min(pool_fdr)), "pool_fdr_max": float(np.max(pool_fdr)), "pool_fdr": pool_fdr,
            "resplits": resplits, "resplits_broken": broken, "resplits_broken_share": broken / max(len(resplits), 1),
            "args": asdict(args), "seconds": time.perf_counter() - start}


def print_result(r: dict) -> None:
    print(f"detector v{r['model_version']} at its certified pair t_low {r['threshold_low']:.4f}, t_high "
          f"{r['threshold_high']:.4f}, served FDR "
          f"(target FDR {r['target_fdr']:.0%}, delta {r['delta']:.4g}):")
    print(f"  held-out population ({r['held_out_digits']} digits, {r['population_labels']} labels): "
          f"FDR {r['population_fdr']:.2%}")
    print(f"  {len(r['pool_fdr'])} random pools of {r['pool_size']} held-out digits: FDR median "
          f"{r['pool_fdr_median']:.2%} (range {r['pool_fdr_min']:.2%}-{r['pool_fdr_max']:.2%})")
    for i, s in enumerate(r["resplits"]):
        print(f"  re-split {i}: certified {s['threshold_high']:.4f}, FDR on its own labels {s['certificate_fdr']:.2%}, "
              f"on the population {s['population_fdr']:.2%}")
    print(f"  certificates above the target on the population: {r['resplits_broken']} of {len(r['resplits'])} "
          f"(a certificate for new handwriting allows {r['delta']:.2%}); {r['seconds']:.0f} s")


def main(ns: argparse.Namespace) -> int:
    if ns.model_dir is not None:
        directory = Path(ns.model_dir)
        if not (directory / "card.json").is_file() or not (directory / "model.onnx").is_file():
            raise SystemExit(f"--model-dir {directory}: needs card.json and model.onnx "
                             "(e.g. stack/demo_models/detector)")
        card = ModelCard.from_dict(json.loads((directory / "card.json").read_text(encoding="utf-8")))
        onnx_bytes = (directory / "model.onnx").read_bytes()
    else:
        from auditstream.registry import ModelRegistry
        from auditstream.settings import Settings

        model = ModelRegistry.from_settings(Settings.from_env()).load("detector", ns.version)
        card, onnx_bytes = model.card, model.verified_bytes()
    if not {"certificate", "target_fdr", "max_boxes"} <= set(card.extra):
        raise SystemExit(f"{card.name}'s card has no detection certificate (extra.certificate): this bench measures "
                         "a detector made by 'auditstream train detector'")
    result = run_bench(card, onnx_bytes, HandwritingArgs(pools=ns.pools, resplits=ns.resplits, seed=ns.seed))
    print_result(result)
    if ns.json:
        finite_json.print_summary(result, sort_keys=True)
    return 0
