"""Train the ``captioner``: a scene of coloured shapes -> its canonical caption, word by word.

    auditstream train captioner --json           # ~9 min on 2 cores, 13 loaded (docs/captioner.md)
    python -m training.captioner.train --steps 3000  # the same, without the auditstream CLI

Flow (one readable script): args (``CaptionerArgs``, training/captioner/args.py) -> data (fresh
scenes of the *train* seed stream for every batch, training/captioner/data.py) -> model (CNN +
transformer encoder, transformer decoder, training/captioner/model.py) -> loop (AdamW,
one-cycle LR, teacher forcing) -> export ONNX (preprocessing and greedy decoding inside the
graph) -> caption parity: torch's greedy captions against ONNX Runtime's on every test scene
(``parity_exact``; the export is refused below 1.0, or where a word probability or a
confidence kind made of them differs by more than ``PROB_ATOL``) -> choose the confidence (joint, mean or
minimum word probability: the smallest area under the risk-coverage curve on the *selection*
scenes) -> certify the auto-accept threshold on the *certificate* scenes (Clopper-Pearson on
exact-match error over a fixed coverage grid, qc/certify.py, at this version's share of delta on
those scenes, qc/delta_spending.py) -> measure on the *test* scenes
(exact match, token accuracy, BLEU-4, CIDEr, relational and non-relational accuracy, the
triage at the certified threshold) -> publish with card and risk-coverage plot.

Every statistic is computed on what serving computes: the exported graph run by ONNX Runtime and
postprocessed by the caption kind (auditstream/tasks/caption.py).

Serving contract: input ``image`` uint8 [batch, 64, 64, 3] (RGB); outputs ``tokens`` int64
[batch, T] (ids into the card's ``labels``, the vocabulary; ``<pad>`` after ``<eos>``) and
``token_probs`` float32 [batch, T]; the card's ``confidence_kind`` says how the word
probabilities make the caption's confidence.
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch

from auditstream.errors import ExportParityError
from auditstream.registry import ModelCard, ModelRegistry, TensorSpec, TriageSpec
from auditstream.tasks.caption import CONFIDENCE_KINDS, TASK as CAPTION
from qc.certify import area_under_risk_coverage, certify_coverage_grid, risk_coverage_curve, selective_risk
from training.captioner import data as scenes
from training.captioner.args import CaptionerArgs
from training.captioner.data import IMAGE_SIZE, MAX_TOKENS, PAD_ID, VOCABULARY, SceneSet
from training.captioner.model import OUTPUT_NAMES, CaptionNet, ExportedCaptioner, caption_loss
from training.export import export_onnx, git_revision, output_difference, run_onnx
from training.family_cli import train_and_report
from training.fit import fit_steps, in_background, resolve_precision
from qc.delta_spending import CertificateSlice, DeltaSpending
from training.selective import certificate_spending, plot_risk_coverage, reference_statistics, spending_extra

NAME = "captioner"
CHUNK = 500  # scenes per ONNX Runtime / torch call when measuring


def train(args: CaptionerArgs, progress: bool = True) -> tuple[CaptionNet, float]:
    """Fit on fresh training scenes; returns the net (eval mode) and the seconds it took."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = CaptionNet(args.width)
    precision = resolve_precision(args.precision)

    def batch_loss(batch: tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]) -> torch.Tensor:
        images, targets = (torch.as_tensor(a) for a in batch)
        length = int((targets != PAD_ID).sum(1).max())  # the batch's longest caption, not MAX_TOKENS
        words = targets[:, :length]
        # bf16 autocast: matrix products and convolutions in bfloat16, the loss and the weights'
        # updates in float32 (bfloat16 keeps float32's range: no loss scaling needed).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images, words)
        return caption_loss(logits.float(), words)

    make_batches = partial(scenes.training_batches, args.batch_size, args.steps, args.seed, args.max_objects)
    batches = in_background(make_batches) if args.background_data else make_batches()
    seconds = fit_steps(model, batches, args.steps, batch_loss, name=NAME, lr=args.lr, weight_decay=args.weight_decay,
                        pct_start=0.1, progress=progress)
    return model, seconds


def onnx_captions(onnx_bytes: bytes, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What serving's session computes: (tokens [n, T], token_probs [n, T])."""
    parts = [run_onnx(onnx_bytes, images[i:i + CHUNK]) for i in range(0, len(images), CHUNK)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@torch.no_grad()
def torch_captions(net: CaptionNet, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    net.eval()
    parts = [net.greedy(torch.from_numpy(images[i:i + CHUNK])) for i in range(0, len(images), CHUNK)]
    return torch.cat([p[0] for p in parts]).numpy(), torch.cat([p[1] for p in parts]).numpy()


# The most the word probabilities (and each confidence kind made of them) may differ between
# torch and ONNX Runtime. Both run the graph in float32 (--precision bf16 only autocasts the
# training steps; greedy decoding and the export are float32), where softmax probabilities agree
# to ~1e-6: the shipped captioner gave 4.1e-6 over its 2,000 test scenes. The detector and
# check_parity use the same 1e-4.
PROB_ATOL = 1e-4


def caption_parity(net: CaptionNet, onnx_bytes: bytes, images: np.ndarray, atol: float = PROB_ATOL) -> dict:
    """Share of scenes whose caption (every token id) torch and ONNX Runtime decode alike, the
    largest word-probability difference, and the largest difference of every confidence kind
    serving would make of them (``CAPTION.postprocess``, per kind of ``CONFIDENCE_KINDS``). The
    export is refused (:class:`ExportParityError`) unless every caption is the same and the word
    probabilities and every kind's confidence differ by at most ``atol``: the certified
    threshold is a bound on those confidences, so the same ids with other probabilities are no parity."""
    torch_ids, torch_p = torch_captions(net, images)
    onnx_ids, onnx_p = onnx_captions(onnx_bytes, images)
    # same shapes, and no NaN or inf on either side: a NaN probability compares False with
    # everything and would pass as parity; ``output_difference`` gives the token_probs' largest difference
    output_difference(onnx_ids, torch_ids, "tokens", atol, len(images))
    prob_diff = output_difference(onnx_p, torch_p, "token_probs", atol, len(images))
    same = (torch_ids == onnx_ids).all(axis=1)
    result = {"parity_exact": float(same.mean()), "parity_scenes": len(images),
              "parity_max_prob_diff": float(np.abs(torch_p[same] - onnx_p[same]).max()) if same.any() else float("inf")}
    if not same.all():
        raise ExportParityError(1.0 - result["parity_exact"], 0.0, len(images))
    if not prob_diff <= atol:
        raise ExportParityError(prob_diff, atol, len(images))
    confidence_diff = {}
    for kind in CONFIDENCE_KINDS:
        card = draft_card(CaptionerArgs(), kind)  # postprocess reads the kind, the labels and the end token
        sides = [CAPTION.postprocess(card, {"tokens": ids, "token_probs": p})
                 for ids, p in ((torch_ids, torch_p), (onnx_ids, onnx_p))]
        unread = [i for i, (a, b) in enumerate(zip(*sides)) if a is None or b is None]
        if unread:  # a probability outside [0, 1]: serving answers nothing for that scene
            raise ExportParityError(float("nan"), atol, len(images), f"{len(unread)} scenes (first {unread[0]}) "
                                    "have a word probability outside [0, 1] in torch or ONNX Runtime")
        confidence_diff[kind] = max((abs(a.confidence - b.confidence) for a, b in zip(*sides)), default=0.0)
        if not confidence_diff[kind] <= atol:
            raise ExportParityError(confidence_diff[kind], atol, len(images))
    result["parity_max_confidence_diff"] = confidence_diff
    return result


def draft_card(args: CaptionerArgs, confidence_kind: str) -> ModelCard:
    """The card's serving part (what the caption kind's postprocess reads)."""
    return ModelCard(
        name=NAME, version="0", task="caption",
        inputs=[TensorSpec("image", "uint8", [None, IMAGE_SIZE, IMAGE_SIZE, 3])],
        outputs=[TensorSpec("tokens", "int64", [None, MAX_TOKENS]), TensorSpec("token_probs", "float32", [None, MAX_TOKENS])],
        triage=TriageSpec(threshold=1.0, confidence_kind=confidence_kind, target_risk=args.target_risk, delta=args.delta),
        labels=list(VOCABULARY),
        extra={"end_token": scenes.EOS, "special_tokens": list(scenes.SPECIALS)})


def answers(args: CaptionerArgs, outputs: tuple[np.ndarray, np.ndarray], data: SceneSet) -> dict:
    """Serving's answers to the scenes: captions, every confidence kind, and which are wrong."""
    result: dict = {}
    for kind in CONFIDENCE_KINDS:
        rows = CAPTION.postprocess(draft_card(args, kind), {"tokens": outputs[0], "token_probs": outputs[1]})
        assert all(r is not None for r in rows), "the exported graph produced non-finite probabilities"
        result[kind] = np.array([r.confidence for r in rows])
        result["captions"] = [r.output for r in rows]
    truth = data.captions()
    result["wrong"] = np.array([not CAPTION.same_answer(c, t) for c, t in zip(result["captions"], truth)], np.int64)
    return result


def caption_metrics(outputs: tuple[np.ndarray, np.ndarray], data: SceneSet) -> dict:
    """Exact match, token accuracy, BLEU-4 (sacrebleu), CIDEr (pycocoevalcap), fact accuracies."""
    import sacrebleu
    from pycocoevalcap.cider.cider import Cider

    predicted = [scenes.decode(row) for row in outputs[0]]
    truth = [s.tokens() for s in data.scenes]
    # Token accuracy: the reference's words and <eos>, position by position.
    right = total = 0
    for ids, target in zip(outputs[0], data.targets):
        n = int((target != PAD_ID).sum())
        right += int((ids[:n] == target[:n]).sum())
        total += n
    fact = np.array([scenes.fact_scores(p, s) for p, s in zip(predicted, data.scenes)]).sum(0)
    hyps, refs = [scenes.words_to_text(p) for p in predicted], [s.caption() for s in data.scenes]
    with contextlib.redirect_stdout(io.StringIO()):
        cider, _ = Cider().compute_score({i: [" ".join(t)] for i, t in enumerate(truth)},
                                         {i: [" ".join(p)] for i, p in enumerate(predicted)})
    return {"exact_match": float(np.mean([p == t for p, t in zip(predicted, truth)])),
            "token_accuracy": right / total, "bleu4": float(sacrebleu.corpus_bleu(hyps, [refs]).score),
            "cider": float(cider), "non_relational_accuracy": float(fact[0] / fact[1]),
            "relational_accuracy": float(fact[2] / fact[3]), "n_test": len(data)}


@torch.no_grad()
def search_headroom(net: CaptionNet, data: SceneSet, greedy_probs: np.ndarray, wrong: np.ndarray) -> dict:
    """What a better search (beam search, any decoder that maximises the caption's probability)
    could gain: among the greedy captions that are wrong, those whose reference caption the model
    finds *more* probable. Only those can a likelihood-maximising search turn right; where the
    greedy caption is the more probable one, the model itself prefers the mistake."""
    net.eval()
    reference = []
    for i in range(0, len(data), CHUNK):
        targets = torch.from_numpy(data.targets[i:i + CHUNK])
        logp = net(torch.from_numpy(data.images[i:i + CHUNK]), targets).log_softmax(-1)
        picked = logp.gather(-1, targets[..., None])[..., 0]
        reference.append((picked * (targets != PAD_ID)).sum(1).double().numpy())
    reference_logp = np.concatenate(reference)
    greedy_logp = np.log(np.clip(greedy_probs.astype(np.float64), 1e-300, 1.0)).sum(1)  # 1.0 after <eos>
    fixable = (reference_logp > greedy_logp) & (wrong == 1)
    return {"greedy_errors": int(wrong.sum()), "errors_a_search_could_fix": int(fixable.sum()),
            "exact_match_bound_of_any_search": float(1.0 - (wrong.sum() - fixable.sum()) / len(wrong))}


def choose_confidence(selection: dict) -> tuple[str, dict[str, float]]:
    """The confidence kind with the smallest AURC on the selection scenes (never the test's)."""
    aurc = {kind: area_under_risk_coverage(selection[kind], selection["wrong"]) for kind in CONFIDENCE_KINDS}
    return min(CONFIDENCE_KINDS, key=lambda k: aurc[k]), aurc


def certificate_scenes(args: CaptionerArgs) -> CertificateSlice:
    """The certificate's data as the δ spending counts it (qc/delta_spending.py): the
    generator's certificate scenes (seed, count). Versions certified on scenes of the same seed
    share the slice, whatever their count (the same stream, longer or shorter)."""
    return CertificateSlice("certificate scenes", rendering={
        "kind": "captioner scenes (training/captioner/data.py split_scenes)",
        "seed": scenes.SPLIT_SEEDS["certificate"], "count": args.n_certificate})


def evaluate(net: CaptionNet, onnx_bytes: bytes, args: CaptionerArgs, spending: DeltaSpending) -> dict:
    """Choose the confidence, certify at ``spending.delta`` (this version's share of ``args.delta``
    on the certificate scenes, qc/delta_spending.py), measure on the test scenes."""
    selection_data = scenes.split_scenes("selection", args.n_selection)
    selection = answers(args, onnx_captions(onnx_bytes, selection_data.images), selection_data)
    kind, aurc = choose_confidence(selection)
    cert_data = scenes.split_scenes("certificate", args.n_certificate)
    cert = answers(args, onnx_captions(onnx_bytes, cert_data.images), cert_data)
    certificate = certify_coverage_grid(cert[kind], cert["wrong"], args.target_risk, spending.delta)
    test_data = scenes.split_scenes("test", args.n_test)
    test_outputs = onnx_captions(onnx_bytes, test_data.images)
    test = answers(args, test_outputs, test_data)
    coverage, risk, n_accepted, errors = selective_risk(test[kind], test["wrong"], certificate.threshold)
    return {"confidence_kind": kind, "aurc_selection": aurc, "certificate": certificate, "delta_spending": spending,
            "metrics": caption_metrics(test_outputs, test_data),
            "search": search_headroom(net, test_data, test_outputs[1], test["wrong"]), **caption_parity(net, onnx_bytes, test_data.images),
            "test_coverage": coverage, "test_risk_at_threshold": risk, "test_accepted": n_accepted,
            "test_errors_accepted": errors, "test_confidences": test[kind],
            "curve": risk_coverage_curve(test[kind], test["wrong"])}


def build_card(args: CaptionerArgs, result: dict, train_seconds: float) -> ModelCard:
    cert, spending = result["certificate"], result["delta_spending"]
    draft = draft_card(args, result["confidence_kind"])
    metrics = {**result["metrics"], "parity_exact": result["parity_exact"],
               "parity_max_prob_diff": result["parity_max_prob_diff"],
               "parity_max_confidence_diff": result["parity_max_confidence_diff"], "test_coverage": result["test_coverage"],
               "test_risk_at_threshold": result["test_risk_at_threshold"],
               "aurc_selection": result["aurc_selection"], "search": result["search"]}
    return ModelCard(
        name=NAME, version="0", task="caption", inputs=draft.inputs, outputs=draft.outputs,
        triage=TriageSpec(threshold=cert.threshold, confidence_kind=result["confidence_kind"],
                          target_risk=args.target_risk, delta=spending.delta, certified_risk=cert.certified_risk,
                          coverage=cert.coverage,
                          method=f"{cert.method}: Clopper-Pearson on exact-match caption error, delta split over "
                                 f"{cert.tests} coverages fixed in advance, {args.n_certificate} certificate scenes; "
                                 f"{cert.reason}"),
        preprocessing={"input": f"RGB scene uint8 {IMAGE_SIZE}x{IMAGE_SIZE}x3",
                       "inside_graph": ["x / 255, HWC -> CHW", "x and y coordinate channels (CoordConv)",
                                        "CNN to an 8x8 grid, 2 self-attention layers",
                                        f"greedy decoding, {MAX_TOKENS} steps unrolled: arg-max word and its "
                                        "probability; <pad> with probability 1 after <eos>"]},
        labels=list(VOCABULARY), metrics=metrics,
        calibration={"method": "none: the certificate needs a ranking, not calibrated probabilities; the "
                               "confidence kind was chosen by AURC on the selection scenes",
                     "aurc_selection": result["aurc_selection"]},
        reference=reference_statistics(result["test_confidences"], args.seed) | {"split": "test"},
        risk_coverage=result["curve"],
        training={"args": asdict(args), "seed": args.seed, "git_revision": git_revision(),
                  "train_seconds": train_seconds, "precision": resolve_precision(args.precision),
                  "data": {"train": "fresh scenes every step", "split_seeds": scenes.SPLIT_SEEDS,
                           "grammar": "COUNT objects : COLOUR SHAPE REGION near COLOUR far COLOUR (, ...)"}},
        extra={**draft.extra, "certificate": cert.to_dict(), "max_tokens": MAX_TOKENS,
               "certificate_scope": ("scenes are i.i.d. draws of the generator, so the bound (probability >= "
                                     "1 - delta) holds for new scenes of that generator; metrics.test_risk_at_"
                                     "threshold measures it on the disjoint test scenes"),
               "certificate_data": (
                   f"{args.n_certificate} certificate scenes (generator seed {scenes.SPLIT_SEEDS['certificate']}), "
                   f"ONNX Runtime outputs of the published graph; the confidence kind was chosen on the disjoint "
                   f"selection scenes; this version's delta: certificate {spending.index} on these scenes, "
                   f"{spending.delta:.4g} of the family's {spending.family_delta:g} (extra.delta_spending)"),
               **spending_extra(spending)})


def run(args: CaptionerArgs, models_dir: Path, progress: bool = True) -> dict:
    """Train, export, check parity, choose the confidence, certify, measure, publish; the summary."""
    certificate_spending(models_dir, NAME, args.delta, certificate_scenes(args))  # an unreadable registry: refused now
    net, train_seconds = train(args, progress)
    return finish(net, train_seconds, args, models_dir)


def finish(net: CaptionNet, train_seconds: float, args: CaptionerArgs, models_dir: Path) -> dict:
    """Everything after the training loop (:func:`run`): export, measure, certify, publish."""
    onnx_bytes = export_onnx(ExportedCaptioner(net), torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, 3, dtype=torch.uint8),
                             "image", list(OUTPUT_NAMES))
    # counted now, just before certifying: the versions published while this one trained count too
    spending = certificate_spending(models_dir, NAME, args.delta, certificate_scenes(args), reserve=True)
    result = evaluate(net, onnx_bytes, args, spending)
    cert = result["certificate"]
    summary = {"model": NAME, **result["metrics"], "parity_exact": result["parity_exact"],
               "parity_max_prob_diff": result["parity_max_prob_diff"],
               "parity_max_confidence_diff": result["parity_max_confidence_diff"], "train_seconds": train_seconds,
               "precision": resolve_precision(args.precision),
               "confidence_kind": result["confidence_kind"], "aurc_selection": result["aurc_selection"],
               "threshold": cert.threshold, "target_risk": args.target_risk, "delta": spending.delta,
               "family_delta": args.delta, "delta_spending": spending.to_dict(), "delta_note": spending.describe(),
               "certified_risk": cert.certified_risk, "certified": cert.certified, "coverage": cert.coverage,
               "n_certificate": args.n_certificate, "test_coverage": result["test_coverage"],
               "test_risk_at_threshold": result["test_risk_at_threshold"], **result["search"]}
    if args.publish:
        card = build_card(args, result, train_seconds)
        published = ModelRegistry(models_dir).publish(card, onnx_bytes)
        plot_risk_coverage({f"{result['confidence_kind']} (test)": result["curve"]},
                           published.directory / "risk_coverage.png", args.target_risk,
                           (result["test_coverage"], result["test_risk_at_threshold"]),
                           f"captioner v{published.card.version}: caption error vs coverage")
        summary.update(version=published.card.version, path=str(published.directory))
    return summary


def print_summary(s: dict) -> None:
    print(f"captioner: exact match {s['exact_match']:.2%} (target >= 97%), token accuracy {s['token_accuracy']:.2%}, "
          f"BLEU-4 {s['bleu4']:.1f}, CIDEr {s['cider']:.3f} on {s['n_test']} test scenes")
    print(f"  facts: non-relational {s['non_relational_accuracy']:.2%}, relational {s['relational_accuracy']:.2%}")
    print(f"  torch vs ONNX Runtime: {s['parity_exact']:.2%} of the test captions identical "
          f"(largest word-probability difference {s['parity_max_prob_diff']:.2g}, confidence difference "
          f"{max(s['parity_max_confidence_diff'].values()):.2g}; at most {PROB_ATOL:g})")
    print(f"  search: {s['errors_a_search_could_fix']} of the {s['greedy_errors']} wrong greedy captions have a "
          f"more probable reference (no likelihood search beats exact match {s['exact_match_bound_of_any_search']:.2%})")
    aurc = ", ".join(f"{k} {v:.4f}" for k, v in s["aurc_selection"].items())
    print(f"  confidence: {s['confidence_kind']} (AURC on the selection scenes: {aurc})")
    print(f"  certified on {s['n_certificate']} scenes ({s['delta_note']}): auto-accept >= {s['threshold']:.4f}, "
          f"caption error <= {s['certified_risk']:.2%} (target {s['target_risk']:.0%}"
          f"{'' if s['certified'] else ', NOT certified: nothing auto-accepted'}) at coverage {s['coverage']:.1%}")
    print(f"  test: coverage {s['test_coverage']:.1%}, error of the accepted {s['test_risk_at_threshold']:.2%}; "
          f"trained in {s['train_seconds']:.0f} s (target <= 600 s)")
    if "path" in s:
        print(f"  published {s['path']}")


def main(args: CaptionerArgs, as_json: bool = False) -> int:
    return train_and_report(run, print_summary, args, as_json)


if __name__ == "__main__":
    from training.captioner.cli import COMMAND

    sys.exit(main(*COMMAND.parse(sys.argv[1:])))
