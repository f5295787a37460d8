"""Retrain a model from the auditors' verdicts: ``auditstream retrain --model NAME``.

    auditstream labels export --out labels.jsonl && auditstream retrain --model digits --labels labels.jsonl
    auditstream retrain --model zip-reader          # exports the store's verdicts itself (stack/learning_cli.py)

Flow: the verdicts of one model (``auditstream labels export`` rows) -> one per request, gold rows
apart, split by a hash of the request id into a train part and a certify part
(monitor/verdict_sets.py) -> the train part's inputs decoded as serving decodes them and their
human labels turned into targets -> the family's own script (``run(args, models_dir, progress,
feedback)``) trains on its training split plus those examples, starting from the LIVE version's
weights (``weights.pt`` beside it; ``--from-scratch`` opts out), re-calibrates the temperature,
re-certifies the threshold on its calibration/certificate slice (never seen by any verdict: the
traffic's verdicts train, the slice certifies) at this version's share of the card's delta -- the
k-th certificate on that slice gets delta * 6 / (pi^2 k^2), k counted from the registry
(qc/delta_spending.py), so every version ever certified on the slice holds at once with
probability >= 1 - delta, whichever is promoted -- and publishes version N+1 -- not live: moving
``LIVE`` is promotion's job -- with a card that records which verdicts it learnt from
(``extra.learnt_from``: ids, their sha256, counts, time range), the split
(``extra.data_hygiene``) and its delta (``extra.delta_spending``).

The families differ only in how a human label becomes a training target and in their
fine-tuning budget: :data:`FAMILIES`. The detector and the captioner are not retrained from
verdicts yet (``retrain`` says so).
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from auditstream import finite_json
from auditstream.cli_args import COUNT_OR_ZERO, LEFTOVER, NON_NEGATIVE, SEED, check_fields
from auditstream.errors import AuditstreamError, DecodeError
from auditstream.registry import ModelCard, ModelRegistry
from auditstream.wire import decode_input
from monitor.labels import read_labels
from monitor.verdict_sets import learnt_split, provenance, split_verdicts
from serving.inputs import prepare_input
from training.digits.args import DigitsArgs
from training.feedback import Feedback, load_weights
from training.zip_reader.args import ZipReaderArgs


@dataclass(frozen=True)
class RetrainArgs:
    """Arguments of ``auditstream retrain``."""

    model: str = field(default="", metadata={"help": "registry model to retrain (digits or zip-reader)"})
    labels: str = field(default="", metadata={
        "help": "a labels export (auditstream labels export); default: export the store's verdicts now"})
    from_scratch: bool = field(default=False, metadata={"help": "train new weights instead of fine-tuning the live version's"})
    certify_share: float = field(default=0.5, metadata={"check": LEFTOVER, "help": (
        "share of audited requests (by the store's keyed request-id hash) kept out of training for certifying and "
        "measuring; fine-tuning: at most the base version's (it inherits what that one learnt)")})
    # from scratch never takes a fine-tuned card's own budget and rate: they are the fine-tuning's
    epochs: int = field(default=0, metadata={"check": COUNT_OR_ZERO, "help": (
        "digits: epochs (0: 15 when fine-tuning; from scratch, those of the from-scratch training the live "
        f"version descends from, else {DigitsArgs.epochs})")})
    steps: int = field(default=0, metadata={"check": COUNT_OR_ZERO, "help": (
        "zip-reader: steps (0: 300 when fine-tuning; from scratch, those of the from-scratch training the live "
        f"version descends from, else {ZipReaderArgs.steps})")})
    lr: float = field(default=0.0, metadata={"check": NON_NEGATIVE, "help": (
        "peak learning rate (0: that of the from-scratch training the live version descends from, else the "
        f"family's default ({DigitsArgs.lr:g} digits, {ZipReaderArgs.lr:g} zip-reader); a third of it when "
        "fine-tuning)")})
    seed: int = field(default=0, metadata={"check": SEED, "help": "seed of the run (0: the card's)"})
    json: bool = field(default=False, metadata={"help": "print the summary as one JSON object on the last line"})

    def __post_init__(self) -> None:
        check_fields(self)  # a bad override is one CLI line before any verdict is read (auditstream/cli_args.py)


class CannotRetrain(AuditstreamError):
    pass


def _class_target(card: ModelCard, label: Any) -> int | None:
    text = str(label)
    return card.labels.index(text) if text in card.labels else None


def _zip_target(card: ModelCard, label: Any) -> list[int] | None:
    text = str(label)
    # isascii: str.isdigit() also holds for "³" and other digits int() refuses
    return [int(c) for c in text] if len(text) == 5 and text.isascii() and text.isdigit() else None


@dataclass(frozen=True)
class Family:
    """How one family is retrained: its script, the target of a human label (None: unusable),
    and the card-args fields that set its fine-tuning budget."""

    script: str
    args_type: type  # the family's frozen arguments dataclass
    target: Callable[[ModelCard, Any], Any]
    budget_field: str  # "epochs" or "steps"
    default_budget: int


FAMILIES = {
    "digits": Family("training.digits.train", DigitsArgs, _class_target, "epochs", 15),
    "zip-reader": Family("training.zip_reader.train", ZipReaderArgs, _zip_target, "steps", 300),
}


def family_of(model: str) -> Family:
    """The family that retrains ``model``, or a refusal that says what to do instead."""
    family = FAMILIES.get(model)
    if family is None:
        raise CannotRetrain(f"retraining from verdicts is built for {sorted(FAMILIES)}, not {model!r} (the "
                            "detector and the captioner are not yet: train them again with auditstream train NAME)")
    return family


def lineage_root_args(registry: ModelRegistry, card: ModelCard) -> dict[str, Any] | None:
    """The recorded arguments of the from-scratch training that ``card``'s fine-tuning chain
    (``training.fine_tuned_from``, followed back through the registry) starts from; None when
    a link is missing or unreadable."""
    seen = set()
    while card.training.get("fine_tuned_from"):
        version = str(card.training["fine_tuned_from"])
        if version in seen:  # a hand-edited loop
            return None
        seen.add(version)
        try:
            card = registry.card(card.name, version)
        except AuditstreamError:  # not in this registry (a copied version) or unreadable
            return None
    recorded = card.training.get("args")
    return recorded if isinstance(recorded, dict) else None


def family_args(card: ModelCard, args: RetrainArgs, family: Family, root_args: dict[str, Any] | None = None) -> Any:
    """The live version's training arguments (so a seed-subset run stays one), with the budget,
    learning rate and seed of this run. ``root_args``: :func:`lineage_root_args`. A fine-tuned
    card's own budget and rate are the fine-tuning's, so a from-scratch run never takes them:
    it takes the lineage's from-scratch training's (``root_args``; a card that is not
    fine-tuned is its own root), else the family's defaults."""
    known = {f.name for f in dataclasses.fields(family.args_type)}
    base = family.args_type(**{k: v for k, v in card.training.get("args", {}).items() if k in known})
    if root_args is None and not card.training.get("fine_tuned_from"):
        root_args = card.training.get("args", {})
    default = family.args_type()
    scratch_budget = (root_args or {}).get(family.budget_field) or getattr(default, family.budget_field)
    scratch_lr = (root_args or {}).get("lr") or default.lr
    changes: dict[str, Any] = {"publish": True}
    if not args.from_scratch:
        changes[family.budget_field] = getattr(args, family.budget_field) or family.default_budget
        changes["lr"] = args.lr or scratch_lr / 3
    else:
        changes[family.budget_field] = getattr(args, family.budget_field) or scratch_budget
        changes["lr"] = args.lr or scratch_lr
    if args.seed:
        changes["seed"] = args.seed
    return dataclasses.replace(base, **changes)


def inherited_split(base: ModelCard, certify_share: float) -> str | None:
    """For a version fine-tuned from ``base``: the split key id ``base`` learnt by (None: it
    learnt from no verdicts), after refusing a ``certify_share`` larger than ``base``'s. The new
    version starts from ``base``'s weights, so it has learnt from ``base``'s train part too: its
    own certify part (hash < share) must lie inside ``base``'s (hash < its share), or verdicts
    its ancestor trained on would certify it. By induction a card's share is then the smallest
    along its fine-tuning chain, which is what certify and promote read."""
    learnt = learnt_split(base)  # a damaged record: ModelRefused, one line
    if learnt is None:
        return None
    base_share, key_id = learnt
    if certify_share > base_share:
        raise CannotRetrain(f"--certify-share {certify_share:g} is larger than version {base.version}'s {base_share:g}: "
                            f"fine-tuned from it, the new version inherits what it learnt from the requests at or above "
                            f"{base_share:g} on the split, which a share of {certify_share:g} would certify it with; use "
                            f"--certify-share {base_share:g} or less, or --from-scratch")
    return key_id or None


def build_feedback(card: ModelCard, rows: list[dict[str, Any]], family: Family, init_state: dict | None,
                   base_version: str | None, certify_share: float, labels_file: str) -> Feedback:
    """The train part of ``rows`` as examples, with provenance and hygiene for the card."""
    sets = split_verdicts(rows, card.name, certify_share)
    inputs, targets, used, unusable, unusable_inputs = [], [], [], 0, 0
    for row in sets.train:
        target = None if row["human_label"] is None else family.target(card, row["human_label"])
        if target is None:  # a reject, or a label the family cannot learn (e.g. a 4-character ZIP)
            unusable += row["verdict_kind"] != "reject"
            continue
        try:
            inputs.append(prepare_input(decode_input(row.get("input")), card.inputs[0]))
        except DecodeError:  # another model's input, or one the model does not take: not its example
            unusable_inputs += 1
            continue
        targets.append(target)
        used.append(row)
    spec = card.inputs[0]
    empty = np.zeros([0, *spec.shape[1:]], dtype=spec.dtype)
    learnt = provenance(used) | {"labels_file": labels_file, "unusable_labels": unusable,
                                 "unusable_inputs": unusable_inputs,
                                 "note": ("verdict inputs are whatever traffic the auditors saw; if it was drawn from "
                                          "the family's test split (the demo streams test digits), this card's test "
                                          "metrics are no longer held out")}
    return Feedback(np.stack(inputs) if inputs else empty, np.asarray(targets, dtype=np.int64), init_state,
                    base_version, {"learnt_from": learnt, "data_hygiene": sets.hygiene()})


def run(args: RetrainArgs, models_dir: Path, progress: bool = True) -> dict:
    """Retrain ``args.model`` from ``args.labels``; returns the family script's summary plus the
    verdict counts."""
    family = family_of(args.model)
    if not args.labels or not Path(args.labels).is_file():
        raise CannotRetrain(f"labels file {args.labels!r} not found: write one with auditstream labels export --out FILE")
    registry = ModelRegistry(models_dir)
    live = registry.default_version(args.model)
    if live is None:
        raise CannotRetrain(f"no version of {args.model} in {models_dir}: train one first (auditstream train {args.model})")
    card = registry.card(args.model, live)
    # a bad combination is refused before any weights or verdicts load
    train_args = family_args(card, args, family, lineage_root_args(registry, card))
    inherited = None if args.from_scratch else inherited_split(card, args.certify_share)
    init_state = None if args.from_scratch else load_weights(registry.root / args.model / live)
    rows = read_labels(Path(args.labels))
    feedback = build_feedback(card, rows, family, init_state, None if args.from_scratch else live,
                              args.certify_share, str(args.labels))
    if inherited and inherited != feedback.card_extra["data_hygiene"]["split_key_id"]:
        raise CannotRetrain(f"version {live} of {args.model} learnt from verdicts split by the audit store key {inherited}, "
                            f"and {args.labels} is split by {feedback.card_extra['data_hygiene']['split_key_id'] or 'no key'}: "
                            "a version fine-tuned from it inherits what it learnt, which this split cannot set apart; "
                            "export the labels of the store it was retrained from, or retrain --from-scratch")
    if not len(feedback.targets):
        learnt = feedback.card_extra["learnt_from"]
        why = (f"; {learnt['unusable_inputs']} of them hold an input the live card's {card.inputs[0].name} "
               f"{card.inputs[0].shape} does not take (an export of another model or of an older input spec?)"
               if learnt["unusable_inputs"] else ": let the auditors answer some items first")
        raise CannotRetrain(f"no verdict of {args.model} in {args.labels} can teach it (train part: "
                            f"{feedback.card_extra['data_hygiene']['verdicts_train_part']} rows, rejects and gold "
                            f"excluded){why}")
    if registry.live_version(args.model) is None:
        # Without a LIVE pointer the newest version is live: pin the one serving now, so the
        # candidate published next is only a candidate until `auditstream promote` moves it.
        registry.set_live(args.model, live)
    script = importlib.import_module(family.script)
    summary = script.run(train_args, models_dir, progress, feedback)
    return summary | {"base_version": live, "from_scratch": args.from_scratch,
                      "verdicts_learnt": len(feedback.targets), **feedback.card_extra["data_hygiene"],
                      "unusable_inputs": feedback.card_extra["learnt_from"]["unusable_inputs"],
                      "learnt_from": {k: v for k, v in feedback.card_extra["learnt_from"].items() if k != "verdict_ids"}}


def main(args: RetrainArgs, models_dir: Path) -> int:

    summary = run(args, models_dir)
    print(f"{args.model}: version {summary.get('version')} published (not live), fine-tuned from "
          f"{'nothing (from scratch)' if args.from_scratch else 'version ' + summary['base_version']} on "
          f"{summary['verdicts_learnt']} verdicts of the train part ({summary['verdicts_certify_part']} kept for "
          f"certifying, {summary['gold_items']} gold items not used)", file=sys.stderr if args.json else sys.stdout)
    print(f"  certified risk {summary['certified_risk']:.2%} at coverage {summary['coverage']:.1%} "
          f"(target {summary['target_risk']:.0%}, {summary['delta_note']}) on the calibration/certificate slice",
          file=sys.stderr if args.json else sys.stdout)
    if args.json:
        finite_json.print_summary(summary, sort_keys=True, default=str)
    return 0
