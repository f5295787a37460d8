"""The learning curve, measured: ``auditstream bench loop --json``.

The real loop on the embedded broker: ``auditstream serve`` for ``digits`` and ``zip-reader``
and ``auditstream monitor`` run as processes, as in the demo; a simulated auditor answers every
audit item from the ground truth (wrong with probability ``--auditor-error``), and meets gold
items (known answers planted by an admin, served with probability ``--gold-rate`` per claim, as
the store does for real auditors), so its error is measured as well as configured. Each model
starts from a seed trained on a few percent of the training split, so its certified coverage
starts low (the postal service in 1997); the rest of the training split is streamed in rounds
(digits: each remaining digit once; envelopes: made of the remaining digits). After each round
the model is retrained from the verdicts (training/retrain.py: fine-tuned from the live version,
re-calibrated, re-certified on its calibration/certificate slice) and promoted the way a user
promotes (:func:`promote_step`): the candidate runs as ``auditstream serve --shadow`` (its own
group reads the request topic from the start, so it answers the rounds the live version served),
then monitor/promotion.py's ``promote`` decides -- its certificate at a target no looser than
live's, and the paired non-inferiority gate on the audited items it did not learn from -- records
the decision in its ``promotion.json``, moves ``LIVE`` and announces a rollout, which the running
consumer follows between batches (serving/rollout.py). No consumer is restarted; every
prediction names its version, and each round says which versions answered it.

Per round: labels learnt, coverage at the certified risk (digits: 2%; zip-reader: 10% -- its 97
independent certificate envelopes cannot prove 2%), the better of the live version's card
certificate and its certificate from the audits it did not learn from (``curve_coverage``: delta
0.05 each, 0.10 for the better of the two; ``coverage_from_audits`` also tries 2% for the
zip-reader), the share auto-accepted on the round's traffic,
the audited error of auto-accepted answers (Hajek-weighted QC audits, with its 95% interval)
against the live version's budget (the risk its card certified) and the true one, human items
per 1,000 requests, the auditor's measured error on gold items so far, the promotion decision
and its reason. Last: the same number of labels spent on
uniformly random streamed items (``coverage_last_random_labels``), against the loop's own labels
at the same budget, both one fine-tune of the seed. A PNG of the curve is written. The last
line is one JSON object.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np

from auditstream import finite_json
from auditstream.cli_args import (COUNT, COUNT_OR_ZERO, FRACTION, PROBABILITY, SEED, SHARE, Range, check_derived_seed,
                                  check_fields, check_value)
from auditstream.errors import ConfigError
from auditstream.settings import Settings

MODELS = ("digits", "zip-reader")
AUDITOR = "loop-auditor"


# The simulated auditor must be right more often than not, or its verdicts carry no signal.
AUDITOR_ERROR = Range(0.0, 0.5, high_open=True)


def _number(text: str, kind: type) -> Any:
    """``kind(text)``; a text that is not one comes back as it is, for the option's check to refuse."""
    try:
        return kind(text.strip())
    except ValueError:
        return text


@dataclass(frozen=True)
class LoopBenchArgs:
    """Arguments of ``auditstream bench loop``."""

    models: str = field(default="digits,zip-reader", metadata={"help": "comma-separated: digits, zip-reader"})
    rounds: int = field(default=4, metadata={"check": COUNT,
                                             "help": "stream, audit, retrain and promote this many times"})
    digits_seed_fraction: float = field(default=0.02, metadata={"check": FRACTION,
                                                                "help": "share of the training digits in the digits seed"})
    zip_seed_fraction: float = field(default=0.1, metadata={
        "check": FRACTION, "help": "share of the training digits the zip-reader seed's envelopes use"})
    digits_per_round: int = field(default=0, metadata={
        "check": COUNT_OR_ZERO, "help": "digit requests per round (0: the rest of the training split, evenly)"})
    envelopes_per_round: int = field(default=500, metadata={"check": COUNT, "help": "envelope requests per round"})
    digits_seed_epochs: int = field(default=30, metadata={"check": COUNT, "help": "epochs of the digits seed"})
    digits_finetune_epochs: int = field(default=15, metadata={"check": COUNT,
                                                              "help": "epochs of each digits fine-tune"})
    zip_seed_steps: int = field(default=300, metadata={"check": COUNT, "help": "steps of the zip-reader seed"})
    zip_finetune_steps: int = field(default=150, metadata={"check": COUNT,
                                                           "help": "steps of each zip-reader fine-tune"})
    zip_eval_envelopes: int = field(default=1000, metadata={"check": COUNT,
                                                            "help": "zip-reader calibration and test envelopes (each)"})
    auditor_error: float = field(default=0.005, metadata={"check": AUDITOR_ERROR,
                                                          "help": "probability the simulated auditor answers wrong"})
    qc_rate: float = field(default=0.2, metadata={"check": FRACTION,
                                                  "help": "QC sampling rate of auto-accepted answers during the bench"})
    reach_requests: str = field(default="2500,5000,10000,20000", metadata={
        "help": "zip-reader at 2%% from audits: stream sizes tried with the shipped model (empty: skip)"})
    reach_qc_rates: str = field(default="0.02,0.2", metadata={"help": "QC rates tried there"})
    certify_share: float = field(default=0.5, metadata={
        "check": PROBABILITY, "help": "share of audited requests kept out of training (request-id hash)"})
    promote_margin: float = field(default=0.02, metadata={
        "check": PROBABILITY, "help": "promotion gate: the largest tolerated increase of the error rate"})
    promote_delta: float = field(default=0.05, metadata={
        "check": PROBABILITY, "help": "promotion gate: error probability over all looks at one candidate"})
    promote_pooled: bool = field(default=False, metadata={
        "help": "promotion gate: one test over all audited items instead of one per route (deferred, QC)"})
    gold_rate: float = field(default=0.05, metadata={"check": SHARE,
                                                     "help": "share of the auditor's claims that serve a gold item"})
    gold_items: int = field(default=150, metadata={
        "check": COUNT_OR_ZERO, "help": "gold items planted per model (test-split inputs, known answers)"})
    gold_delta: float = field(default=0.01, metadata={
        "check": PROBABILITY, "help": "failure probability of the auditor-error bound from gold"})
    seed: int = field(default=1, metadata={"check": SEED,
                                           "help": "seed of the streams, the auditor's mistakes and the baselines"})
    plot: str = field(default="", metadata={"help": "PNG of the curve (default: <state dir>/bench/loop.png)"})
    log_dir: str = field(default="", metadata={"help": "keep the processes' logs here (default: a temporary folder)"})
    json: bool = field(default=False, metadata={"help": "progress on stderr, only the final JSON line on stdout"})

    def __post_init__(self) -> None:
        # Every option is checked here, before anything is trained or started: the seed options are
        # passed on to DigitsArgs and ZipReaderArgs, whose own checks would name their options
        # (--train-fraction, --epochs) instead of this command's.
        check_fields(self)
        check_derived_seed(self.seed, lambda seed: seed + 6000, "seed + 6000, the gold items' stream")
        unknown = set(self.models.split(",")) - set(MODELS)
        if unknown:
            raise ConfigError("--models", self.models, f"a comma-separated list of {', '.join(MODELS)}")
        self.reach()  # parsed at the end of the run: a bad one must not wait hours to be found

    def reach(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """``--reach-requests`` and ``--reach-qc-rates`` as numbers (ConfigError naming the option)."""
        return (tuple(check_value("--reach-requests", _number(x, int), COUNT, 2500)
                      for x in self.reach_requests.split(",") if self.reach_requests),
                tuple(check_value("--reach-qc-rates", _number(x, float), FRACTION, 0.02)
                      for x in self.reach_qc_rates.split(",") if self.reach_requests))

    def gate(self) -> Any:
        from qc.paired import PairedGateConfig

        return PairedGateConfig(self.promote_margin, self.promote_delta, not self.promote_pooled)


# --------------------------------------------------------------------------------------------
# what each model's stream, seed and figures are


def digit_stream(args: LoopBenchArgs) -> Iterator[list[tuple[Any, str]]]:
    """Rounds of (digit float32 [8, 8], truth): the training digits the seed did not use, each once."""
    from training.data.split import train_subset

    rest = train_subset(args.digits_seed_fraction)[1]
    order = np.random.default_rng(args.seed).permutation(len(rest.labels))
    per_round = args.digits_per_round or -(-len(order) // args.rounds)
    for r in range(args.rounds):
        idx = order[r * per_round:(r + 1) * per_round]
        yield [(rest.images[i].astype(np.float32), str(int(rest.labels[i]))) for i in idx]


def envelope_stream(args: LoopBenchArgs) -> Iterator[list[tuple[Any, str]]]:
    """Rounds of (PNG envelope, ZIP) made of the training digits the seed's envelopes did not use."""
    from training.data.envelopes import choose_digits, compose_envelopes
    from training.data.split import train_subset

    rest = train_subset(args.zip_seed_fraction)[1]
    rng = np.random.default_rng(args.seed + 100)
    for _ in range(args.rounds):
        images, zips = compose_envelopes(rest.images, rest.labels,
                                         choose_digits(len(rest.labels), args.envelopes_per_round, rng), rng)
        yield [(png_input(image), zip_code) for image, zip_code in zip(images, zips)]


def png_input(image: np.ndarray) -> Any:
    """An envelope (uint8 [H, W]) as the PNG request input a client would send."""
    from PIL import Image

    from auditstream.wire import ImageInput

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return ImageInput(buf.getvalue(), "png")


def gold_inputs(name: str, n: int, seed: int) -> list[tuple[Any, str]]:
    """``n`` (input, truth) of the test split for gold items: planted, never streamed, never trained on."""
    if name == "digits":
        from training.data.split import load_split

        test = load_split("test")
        pick = np.random.default_rng(seed + 6000).permutation(len(test.labels))[:n]
        return [(test.images[i].astype(np.float32), str(int(test.labels[i]))) for i in pick]
    from training.data.envelopes import make_envelopes

    images, zips = make_envelopes("test", n, seed=seed + 6000)
    return [(png_input(image), zip_code) for image, zip_code in zip(images, zips)]


def train_seed(name: str, args: LoopBenchArgs, models_dir: Path) -> dict:
    if name == "digits":
        from training.digits import train as digits
        from training.digits.args import DigitsArgs

        return digits.run(DigitsArgs(epochs=args.digits_seed_epochs, train_fraction=args.digits_seed_fraction,
                                     seed=args.seed), models_dir, progress=True)
    from training.zip_reader import train as zip_reader
    from training.zip_reader.args import ZipReaderArgs

    return zip_reader.run(ZipReaderArgs(steps=args.zip_seed_steps, train_fraction=args.zip_seed_fraction,
                                        n_calibration=args.zip_eval_envelopes, n_test=args.zip_eval_envelopes,
                                        seed=args.seed), models_dir, progress=True)


COVERAGE_RISK = {"digits": 0.02, "zip-reader": 0.1}  # the certified risk the curve is drawn at


def curve_coverage(card_coverage: float, audits: dict[str, Any]) -> dict[str, float]:
    """The live version's certified coverage at :data:`COVERAGE_RISK`: the better of its card's
    certificate (held-out slice) and its certificate from the audits it did not learn from.
    Each holds with probability >= 1 - 0.05, so the better of the two with >= 1 - 0.10 (union
    bound): the curve's delta is 0.10, chosen before any data was seen."""
    from_audits = float(audits["estimated_coverage"]) if audits.get("certified") else 0.0
    return {"coverage_certified_card": card_coverage, "coverage_certified_audits": from_audits,
            "coverage_certified": max(card_coverage, from_audits), "coverage_delta": 2 * 0.05}


def certified_coverage(card: Any) -> float:
    """The card's certified coverage at :data:`COVERAGE_RISK` (0 when that risk is not certified)."""
    risk = COVERAGE_RISK[card.name]
    by_target = card.extra.get("strict_certificates", {}).get("by_target")
    if by_target is not None:  # the zip-reader certifies several targets, delta split over them
        point = by_target.get(f"{risk:g}", {})
        return float(point.get("coverage", 0.0)) if point.get("certified_risk", 1.0) <= risk else 0.0
    t = card.triage
    return float(t.coverage or 0.0) if t.certified_risk is not None and t.certified_risk <= risk else 0.0


def wrong_answer(truth: str, rng: np.random.Generator) -> str:
    """A plausible auditor's slip: one character keyed wrong."""
    i = int(rng.integers(len(truth)))
    return truth[:i] + str((int(truth[i]) + int(rng.integers(1, 10))) % 10) + truth[i + 1:]


# --------------------------------------------------------------------------------------------
# promotion: the user's path (shadow -> paired gate -> LIVE + rollout -> hot reload)


def promote_step(settings: Settings, store: Any, name: str, candidate: str, gate: Any) -> dict[str, Any]:
    """``auditstream promote --model NAME --candidate V`` on what the store holds now
    (monitor/promotion.py): certificate and paired gate, the decision appended to the candidate's
    ``promotion.json``, and when it promotes ``LIVE`` moved and a rollout announced, which the
    running consumers follow between batches. Returns the decision and why, with the pairs."""
    from monitor.promotion import promote

    d = promote(settings, name, candidate, config=gate, store=store)
    return {"promoted": d.promote, "code": d.code, "reason": d.reason, "pairs_needed": d.pairs_needed,
            "pairs": {s["stratum"]: {k: s[k] for k in ("n", "candidate_only_wrong", "live_only_wrong", "upper",
                                                       "unaudited_disagreements")}
                      for s in d.strata}}


# --------------------------------------------------------------------------------------------
# the running loop: broker, processes, answers, the simulated auditor


class Loop:
    """The bench's broker, monitor, consumers, the predictions read back and the auditor."""

    def __init__(self, settings: Settings, names: list[str], log_dir: Path, auditor_error: float, seed: int) -> None:
        from stack import broker
        from stack.demo import Children, _child_env, _cli

        self._cli, self._env = _cli, _child_env
        self.info = broker.start(settings, models=names)
        self.settings = dataclasses.replace(settings, bootstrap_servers=self.info.bootstrap)
        self.children = Children(log_dir)
        self.predictions: dict[str, Any] = {}  # request id -> Prediction (live answers)
        self.shadow: dict[tuple[str, str], set[str]] = {}  # (model, version) -> request ids answered in shadow
        self.truth: dict[str, str] = {}
        self.auditor_error, self.rng = auditor_error, np.random.default_rng(seed + 7)
        self.lock, self._stop = threading.Lock(), threading.Event()
        self.children.start("monitor", _cli("monitor"), _child_env(self.settings))
        # One consumer per model for the whole bench, serving LIVE and following its rollouts. It
        # logs at INFO whatever the bench's own level: wait_ready reads its rollout lines.
        for name in names:
            self.children.start(f"serve-{name}", _cli("serve", "--model", name),
                                {**_child_env(self.settings), "AUDITSTREAM_LOG_LEVEL": "INFO"})
        self._reader = threading.Thread(target=self._read, daemon=True, name="loop-reader")
        self._reader.start()

    def start_shadow(self, name: str, version: str) -> subprocess.Popen:
        """``auditstream serve --model NAME --version V --shadow``: a new group, from the topic's start."""
        return self.children.start(f"shadow-{name}-v{version}", self._cli("serve", "--model", name, "--version", version,
                                                                        "--shadow"), self._env(self.settings))

    def wait_ready(self, name: str, version: str, timeout_s: float = 120) -> float:
        """Wait until the running ``serve`` consumer of ``name`` has loaded, verified and warmed up
        a promoted ``version`` (its log says so), so that the next round's first batch is answered
        by it: the switch itself happens between batches. Returns the seconds waited."""
        log, started = self.children.log_dir / f"serve-{name}.log", time.monotonic()
        line = f"version {version} loaded, verified and warmed up".encode()
        while line not in log.read_bytes():
            self.children.check()
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"serve {name} did not load v{version} within {timeout_s:.0f} s; see {log}")
            time.sleep(0.2)
        return time.monotonic() - started

    def stop(self, proc: subprocess.Popen) -> None:
        proc.terminate()  # it checkpoints what it answered, then exits 0
        proc.wait(60)
        self.children.procs = [(n, p) for n, p in self.children.procs if p is not proc]

    def _read(self) -> None:
        from auditstream.kafka import make_consumer
        from auditstream.topics import PREDICTIONS
        from auditstream.wire import Prediction

        consumer = make_consumer(self.settings, f"loop-bench-{uuid.uuid4().hex[:8]}", [self.settings.topic(PREDICTIONS)])
        try:
            while not self._stop.is_set():
                for record in consumer.poll(500, 500):
                    p = Prediction.from_bytes(record.value)
                    with self.lock:
                        if p.shadow:
                            self.shadow.setdefault((p.model, p.model_version), set()).add(p.request_id)
                        else:
                            self.predictions.setdefault(p.request_id, p)
        finally:
            consumer.close()

    def send(self, name: str, items: list[tuple[Any, str]], prefix: str) -> list[str]:
        from auditstream.kafka import make_producer
        from auditstream.wire import InferenceRequest

        producer = make_producer(self.settings, client_id="loop-bench")
        ids = []
        try:
            for i, (value, truth) in enumerate(items):
                request = InferenceRequest(f"{prefix}-{i}", name, value, time.time())
                self.truth[request.request_id] = truth
                producer.send(self.settings.request_topic(name), request.key, request.to_bytes())
                ids.append(request.request_id)
            producer.flush(60)
        finally:
            producer.close()
        return ids

    def wait_answered(self, ids: list[str], timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.children.check()
            with self.lock:
                if all(i in self.predictions for i in ids):
                    return
            time.sleep(0.3)
        raise TimeoutError(f"{sum(i not in self.predictions for i in ids)} of {len(ids)} requests unanswered after "
                           f"{timeout_s:.0f} s; see the logs in {self.children.log_dir}")

    def wait_paired(self, store: Any, name: str, live: str, candidate: str, requests: int,
                    timeout_s: float = 600) -> int:
        """Wait until the candidate's shadow answers of every audited item of ``live`` are in the
        store (the monitor ingests them from the predictions topic) and the shadow compared all
        ``requests`` streamed so far with live's answers; returns how many audited items."""
        from store.shadow import ShadowAnswers

        shadow, deadline = ShadowAnswers(store), time.monotonic() + timeout_s
        while True:
            self.children.check()
            audits = shadow.paired_audits(name, live, candidate)
            missing = sum(a.candidate_wrong is None for a in audits)
            uncompared = max(0, requests - shadow.compared(name, candidate))
            if not missing and not uncompared:
                return len(audits)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{missing} of {len(audits)} audited items of {name} v{live} have no shadow answer "
                                   f"of v{candidate}, and {uncompared} of {requests} requests were not compared with "
                                   f"live, after {timeout_s:.0f} s; see the logs in {self.children.log_dir}")
            time.sleep(0.5)

    def plant_gold(self, store: Any, admin: Any, name: str, card: Any, items: list[tuple[Any, str]]) -> None:
        """Gold items of ``name`` (an admin's known answers); half show the right answer, half a slip,
        as gold items show "the model's answer, right or wrong"."""
        from auditstream.wire import AuditItem, Prediction, Route

        rng = np.random.default_rng(len(items) + 17)
        for i, (value, truth) in enumerate(items):
            shown = truth if rng.random() < 0.5 else wrong_answer(truth, rng)
            rid = f"gold-{name}-{i}"
            prediction = Prediction(rid, name, card.version, card.task, shown, 0.0, Route.HUMAN, "gold", 1.0, time.time())
            store.add_gold(AuditItem(prediction, value), truth, admin, time.time())
            self.truth[rid] = truth

    def answer(self, truth: str) -> str:
        """What the simulated auditor keys: the truth, or with probability ``auditor_error`` a slip."""
        return wrong_answer(truth, self.rng) if self.rng.random() < self.auditor_error else truth

    def audit(self, store: Any, user: Any, ids: list[str], timeout_s: float = 600) -> int:
        """Answer every audit item of ``ids`` (deferred and QC) as they reach the store."""
        from auditstream import tasks
        from auditstream.wire import Route, VerdictKind
        from store.records import verdict_for

        with self.lock:
            expected = {i for i in ids if self.predictions[i].route is not Route.AUTO}
        done, deadline = 0, time.monotonic() + timeout_s
        while done < len(expected):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(expected) - done} audit items never reached the store; see "
                                   f"{self.children.log_dir}/monitor.log")
            claim = store.claim(user, 120.0, time.time())
            if claim is None:
                time.sleep(0.2)
                continue
            item = claim.item
            label = self.answer(self.truth[item.request_id]) if item.request_id in self.truth else None
            if label is None:
                kind, corrected = VerdictKind.SKIP, None
            else:  # as the workbench decides (a detector's accept also leaves no box false)
                kind, corrected = verdict_for(tasks.rule_for(item.task, details=item.details), item.output, label)
            store.record_verdict(store.new_verdict_id(), item.item_id, user, kind, corrected, time.time())
            done += item.request_id in expected
        return done

    def close(self) -> None:
        from stack import broker

        self._stop.set()
        self.children.stop()
        broker.stop(self.settings)


# --------------------------------------------------------------------------------------------
# one round's figures


def round_figures(loop: Loop, name: str, ids: list[str], store: Any) -> dict[str, Any]:
    """Traffic coverage, audited (weighted) and true error of auto-accepted answers, human load."""
    from auditstream import tasks
    from auditstream.wire import Route
    from qc.binomial import error_estimate

    with loop.lock:
        preds = [loop.predictions[i] for i in ids]
    auto = [p for p in preds if p.route is not Route.HUMAN]
    kind = tasks.rule_for(preds[0].task, details=preds[0].details)
    true_wrong = sum(not kind.same_answer(p.output, loop.truth[p.request_id]) for p in auto)
    qc = {o.request_id: o for o in store.audited_qc_outcomes(name)}
    outcomes = [qc[p.request_id] for p in preds if p.request_id in qc]
    est = error_estimate([int(o.is_error) for o in outcomes], [o.inclusion_prob for o in outcomes])
    n = len(preds)
    served_by = Counter(p.model_version for p in preds)
    return {"requests": n, "served_by_version": sorted(served_by, key=int),
            "answers_by_version": {v: served_by[v] for v in sorted(served_by, key=int)},
            "traffic_coverage": len(auto) / n, "true_error_auto": true_wrong / len(auto) if auto else 0.0,
            "audited_error": est.estimate, "audited_error_lower95": est.low, "audited_error_upper95": est.high,
            "qc_audits": est.n,
            "human_items_per_1000": 1000 * sum(p.route is not Route.AUTO for p in preds) / n,
            "deferred_per_1000": 1000 * sum(p.route is Route.HUMAN for p in preds) / n}


def gold_figures(store: Any, configured: float, gold_delta: float) -> dict[str, Any]:
    """The simulated auditor's error measured on the gold items it met so far, beside the configured one."""
    from qc.binomial import upper_bound

    score = store.gold_accuracy().get(AUDITOR)
    n, errors = (score.n, score.n - score.correct) if score is not None else (0, 0)
    return {"auditor_error_configured": configured, "gold_verdicts": n, "gold_errors": errors,
            "auditor_error_measured": errors / n if n else None,
            "auditor_error_upper": upper_bound(errors, n, gold_delta) if n else None, "gold_delta": gold_delta}


def coverage_from_audits(registry: Any, name: str, version: str, labels_file: Path, gold: dict[str, Any],
                         store: Any, target: float = 0.02) -> dict:
    """The version's certificate at ``target`` from the audits it did not learn from
    (stack/recertify.py), read in the store's stream order, with the bound against the truth
    from the auditor's gold record."""
    from monitor.labels import read_labels
    from stack.recertify import CannotCertify, recertify, sampled_items, store_inputs

    try:
        cert, basis = recertify(registry.load(name, version), read_labels(labels_file), target, 0.05,
                                (gold["gold_errors"], gold["gold_verdicts"]), gold["gold_delta"],
                                stream=sampled_items(store, name), inputs=store_inputs(store, name),
                                split_key=store.split_key)
    except CannotCertify as e:
        return {"certified": False, "reason": str(e)}
    return {"certified": cert.certified, "threshold": cert.threshold, "estimated_coverage": cert.estimated_coverage,
            "estimated_risk": cert.estimated_risk, "rows": basis["n_rows"], "target_risk": target,
            "tests": cert.tests, "thresholds_in_sequence": cert.thresholds_in_sequence, "reason": cert.reason,
            "auditor_error_bound": cert.auditor_error_bound, "risk_against_truth": cert.risk_against_truth}


# --------------------------------------------------------------------------------------------
# the baseline: the same number of labels on uniformly random items


def labelled_rows(name: str, items: list[tuple[str, Any, str]], version: str, task: str,
                  answer: Callable[[str], str]) -> list[dict[str, Any]]:
    """Label-export rows for (request id, input, truth) as the simulated auditor would label them."""
    from auditstream.wire import encode_input

    return [{"verdict_id": f"b-{rid}", "request_id": rid, "model": name, "model_version": version, "task": task,
             "route": "HUMAN", "confidence": 0.0, "inclusion_prob": 1.0, "verdict_kind": "correct",
             "model_output": None, "human_label": answer(truth), "auditor": AUDITOR, "decided_at_s": float(k),
             "review_round": 1, "is_gold": False, "input": encode_input(value)} for k, (rid, value, truth) in enumerate(items)]


def retrain_seed_with(seed_dir: Path, name: str, rows: list[dict[str, Any]], work: Path, args: LoopBenchArgs) -> Any:
    """One fine-tune of the seed version on every one of ``rows`` (no certify part: the
    baselines certify on the calibration/certificate slice only), in a registry of its own; its card."""
    from auditstream.registry import ModelRegistry
    from training.retrain import RetrainArgs, run

    root = work / "models"
    shutil.copytree(seed_dir, root / name / "1")
    registry = ModelRegistry(root)
    registry.set_live(name, "1")
    labels = work / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run(RetrainArgs(model=name, labels=str(labels), certify_share=0.0, **finetune_budget(name, args)), root)
    return registry.card(name, summary["version"])


def finetune_budget(name: str, args: LoopBenchArgs) -> dict[str, int]:
    return {"epochs": args.digits_finetune_epochs} if name == "digits" else {"steps": args.zip_finetune_steps}


# --------------------------------------------------------------------------------------------
# the zip-reader at 2%: how much audited traffic proves what 97 certificate envelopes cannot


def audits_to_certify(model: Any, sizes: tuple[int, ...], qc_rates: tuple[float, ...], auditor_error: float,
                      seed: int, target: float = 0.02, delta: float = 0.05) -> dict[str, Any]:
    """Stream test envelopes (never trained on) through ``model``'s live rule -- deferred below
    its threshold (audited, pi = 1), QC-sampled above it at each rate -- label the audited ones
    as the simulated auditor would, and certify ``target`` from the first ``n`` requests for
    each ``n`` of ``sizes`` (qc/audit_certify.py, the card's curve as the threshold sequence)."""
    from auditstream import tasks
    from qc.audit_certify import certify_from_audits
    from serving.inference import infer
    from serving.runtime import load_session
    from stack.recertify import threshold_sequence
    from training.data.envelopes import make_envelopes

    card, n = model.card, max(sizes)
    images, zips = make_envelopes("test", n, seed=seed + 5000)
    session, kind = load_session(model, intra_op_threads=1), tasks.rule_for(card.task, card)
    conf, outputs = np.zeros(n), []
    for start in range(0, n, 256):
        answers, _ = infer(session, card, list(images[start:start + 256]))
        for i, a in enumerate(answers, start):
            conf[i] = a.confidence
            outputs.append(a.output)
    rng = np.random.default_rng(seed + 11)
    keyed = [wrong_answer(z, rng) if rng.random() < auditor_error else z for z in zips]
    disagrees = np.array([not kind.same_answer(o, k) for o, k in zip(outputs, keyed)], dtype=int)
    truly_wrong = np.array([not kind.same_answer(o, z) for o, z in zip(outputs, zips)], dtype=int)
    draw, sequence, found = rng.random(n), threshold_sequence(card, target), {}
    for rate in qc_rates:
        pi = np.where(conf < card.triage.threshold, 1.0, rate)
        for size in sizes:
            audited = np.flatnonzero(draw[:size] < pi[:size])
            cert = certify_from_audits(conf[audited], disagrees[audited], pi[audited], target, delta, sequence)
            accepted = conf[:size] >= cert.threshold
            found[f"qc_rate={rate:g}, requests={size}"] = {
                "certified": cert.certified, "audited": int(audited.size), "threshold": cert.threshold,
                "estimated_coverage": cert.estimated_coverage,
                "true_coverage": float(accepted.mean()),
                "true_risk": float(truly_wrong[:size][accepted].mean()) if accepted.any() else None}
    return {"model_version": card.version, "card_certified_risk": card.triage.certified_risk,
            "card_coverage": card.triage.coverage, "target_risk": target, "delta": delta, "by_size": found}


# --------------------------------------------------------------------------------------------


def plot_curve(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), dpi=110, squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        labels = [0] + [row["labels_used"] for row in r["rounds"]]
        ax.plot(labels, [r["coverage_first"]] + [row["coverage_certified"] for row in r["rounds"]], "o-",
                label=f"certified coverage at {COVERAGE_RISK[name]:.0%} risk (live after the round; card or audits)")
        ax.plot(labels[1:], [row["coverage_certified_card"] for row in r["rounds"]], ".:", color="gray",
                label="  of which the card's certificate alone")
        ax.plot(labels[:-1], [row["traffic_coverage"] for row in r["rounds"]], "s--",
                label="auto-accepted share of the round's traffic")
        if r["coverage_last_random_labels"] is not None:
            ax.plot([labels[-1]], [r["coverage_last_random_labels"]], "x", markersize=10, color="red",
                    label="same labels on random items (one fine-tune of the seed)")
        if r["coverage_same_budget_loop_labels"] is not None:
            ax.plot([labels[-1]], [r["coverage_same_budget_loop_labels"]], "+", markersize=12, color="black",
                    label="the loop's labels (one fine-tune of the seed)")
        ax.set_xlabel("verdicts learnt from")
        ax.set_ylabel("coverage")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name}: the learning curve")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run_model_rounds(name: str, loop: Loop, registry: Any, store: Any, user: Any, args: LoopBenchArgs,
                     batches: list[list[tuple[Any, str]]], work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from monitor.labels import export_labels, read_labels
    from training.retrain import RetrainArgs, run as retrain

    seed_card = registry.card(name)
    first = certified_coverage(seed_card)
    rows, streamed = [], []
    for r, batch in enumerate(batches, 1):
        live = registry.live_version(name)
        budget = registry.card(name, live).triage.target_risk  # what the live version promised
        # seeded ids; the audit split is not reproducible across runs: each run's fresh store draws
        # its own secret split key (store/schema.py), so which verdicts train differs run to run
        ids = loop.send(name, batch, f"{name}-s{args.seed}-r{r}")
        streamed += [(rid, value, truth) for rid, (value, truth) in zip(ids, batch)]
        loop.wait_answered(ids)
        audited = loop.audit(store, user, ids)
        figures = round_figures(loop, name, ids, store)
        gold = gold_figures(store, args.auditor_error, args.gold_delta)
        labels = work / f"{name}-round{r}.jsonl"
        export_labels(store, labels, model=name, include_gold=True, progress=False)
        summary = retrain(RetrainArgs(model=name, labels=str(labels), certify_share=args.certify_share,
                                      **finetune_budget(name, args)), registry.root, progress=True)
        candidate = summary["version"]
        shadow = loop.start_shadow(name, candidate)
        try:
            audited_of_live = loop.wait_paired(store, name, live, candidate, len(streamed))
        finally:
            loop.stop(shadow)
        decision = promote_step(loop.settings, store, name, candidate, args.gate())
        if decision["promoted"]:  # the next round is answered by the promoted version from its first batch
            loop.wait_ready(name, candidate)
        card = registry.card(name)  # the live one, after the decision
        audits_2pct = coverage_from_audits(registry, name, card.version, labels, gold, store)
        audits_curve = (audits_2pct if COVERAGE_RISK[name] == 0.02 else
                        coverage_from_audits(registry, name, card.version, labels, gold, store, COVERAGE_RISK[name]))
        row = {"round": r, "live_during_round": live, "budget": budget, **figures, "audited_items": audited,
               **gold, "labels_used": summary["verdicts_learnt"], "candidate": candidate,
               "audited_items_of_live_shadowed": audited_of_live, **decision, "live_after": card.version,
               **curve_coverage(certified_coverage(card), audits_curve),
               "audits_certificate": audits_curve, "audits_certificate_2pct": audits_2pct}
        rows.append(row)
        say(f"  {name} round {r}: {figures['requests']} requests answered by "
            f"{', '.join(f'v{v}: {k}' for v, k in figures['answers_by_version'].items())}, auto-accepted "
            f"{figures['traffic_coverage']:.1%}, audited error {_pct(figures['audited_error'])} "
            f"(true {figures['true_error_auto']:.2%}), {figures['human_items_per_1000']:.0f} human items/1000; "
            f"auditor's error on {gold['gold_verdicts']} gold items {_pct(gold['auditor_error_measured'])}; "
            f"v{candidate} learnt {summary['verdicts_learnt']} verdicts -> {decision['code']}: {decision['reason']}; "
            f"certified coverage of LIVE v{card.version} at {COVERAGE_RISK[name]:.0%}: {row['coverage_certified']:.1%} "
            f"(card {row['coverage_certified_card']:.1%}, audits {row['coverage_certified_audits']:.1%})")
    # Baselines: the same number of labels, one fine-tune of the seed each: on uniformly random
    # streamed items, and on the loop's own (the train part it learnt from).
    from monitor.verdict_sets import split_verdicts

    own_rows = [r for r in split_verdicts(read_labels(labels), name, args.certify_share).train if r["human_label"] is not None]
    n_labels = len(own_rows)
    rng = np.random.default_rng(args.seed + 3)
    pick = [streamed[i] for i in rng.permutation(len(streamed))[:n_labels]]
    random_rows = labelled_rows(name, pick, seed_card.version, seed_card.task.value, loop.answer)
    seed_dir = registry.root / name / seed_card.version
    say(f"  {name}: baselines, {n_labels} labels each: uniformly random items, and the loop's own")
    baseline_errors: dict[str, str] = {}

    def baseline(which: str, rows: list[dict[str, Any]]) -> float | None:
        """Its certified coverage; None (and why) when its export fails the parity check: a
        comparison is lost, not the rounds measured before it."""
        from auditstream.errors import ExportParityError

        with tempfile.TemporaryDirectory(prefix=f"loop-{which}-") as tmp:
            try:
                return certified_coverage(retrain_seed_with(seed_dir, name, rows, Path(tmp), args))
            except ExportParityError as e:
                baseline_errors[which] = str(e)
                say(f"  {name}: the {which} baseline was not published: {e}")
                return None

    coverage_random, coverage_own = baseline("random", random_rows), baseline("own", own_rows)
    return {"rounds": rows, "coverage_risk": COVERAGE_RISK[name], "coverage_first": first,
            "coverage_last": rows[-1]["coverage_certified"],
            "max_audited_error": max((row["audited_error"] or 0.0) for row in rows),
            "audited_error_within_budget_every_round": all((row["audited_error"] or 0.0) <= row["budget"] for row in rows),
            # The point estimate of a round's few dozen QC audits moves in steps of 1/n; a round
            # whose audits *show* the budget broken has its 95% interval wholly above it.
            "rounds_audits_show_budget_broken": sum(row["audited_error_lower95"] > row["budget"] for row in rows),
            "promotions": sum(row["promoted"] for row in rows),
            "coverage_last_random_labels": coverage_random, "coverage_same_budget_loop_labels": coverage_own,
            "labels_last": n_labels, "baseline_errors": baseline_errors}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def shipped_zip_reader(work: Path) -> Any:
    """The zip-reader shipped with the demo (trained with the family's defaults), in a registry of its own."""
    from auditstream.registry import ModelCard, ModelRegistry
    from stack.demo import SHIPPED_MODELS

    registry = ModelRegistry(work / "shipped")
    card = ModelCard.from_dict(json.loads((SHIPPED_MODELS / "zip-reader" / "card.json").read_text()))
    registry.publish(card, (SHIPPED_MODELS / "zip-reader" / "model.onnx").read_bytes())
    return registry.load("zip-reader")


def run(base: Settings, args: LoopBenchArgs, out: TextIO) -> dict[str, Any]:
    """The whole bench (module docstring); returns the JSON summary."""
    import secrets

    from auditstream.registry import ModelRegistry
    from store import StoreConfig, open_store
    from store.accounts import Role

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    names = args.models.split(",")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="auditstream-loop-") as tmp:
        work = Path(tmp)
        log_dir = Path(args.log_dir) if args.log_dir else work / "logs"
        # Its own broker, registry, store and topics: the bench never touches the user's.
        settings = dataclasses.replace(base, bootstrap_servers="", state_dir=work / "state", models_dir=work / "models",
                                       store_url="", topic_prefix=f"loop{uuid.uuid4().hex[:6]}", qc_rate=args.qc_rate,
                                       triage_policy="uniform", auto_tighten=False, metrics_port=0)
        registry = ModelRegistry.from_settings(settings)
        for name in names:
            say(f"{name}: training the seed")
            registry.set_live(name, train_seed(name, args, settings.models_dir)["version"])
        streams = {"digits": digit_stream, "zip-reader": envelope_stream}
        loop = Loop(settings, names, log_dir, args.auditor_error, args.seed)
        results: dict[str, Any] = {}
        try:
            with open_store(settings.resolved_store_url, StoreConfig(gold_rate=args.gold_rate, seed=args.seed),
                            create=True) as store:
                user = store.accounts.add_user(AUDITOR, secrets.token_urlsafe(16), Role.AUDITOR)
                admin = store.accounts.add_user("loop-admin", secrets.token_urlsafe(16), Role.ADMIN)
                for name in names:
                    loop.plant_gold(store, admin, name, registry.card(name), gold_inputs(name, args.gold_items, args.seed))
                for name in names:
                    say(f"{name}: {args.rounds} rounds")
                    results[name] = run_model_rounds(name, loop, registry, store, user, args, list(streams[name](args)),
                                                     work, say)
        finally:
            loop.close()
        if "zip-reader" in results and args.reach_requests:
            say("zip-reader: how much audited traffic certifies 2% (the shipped model, test envelopes)")
            results["zip-reader"]["audits_to_certify_2pct"] = audits_to_certify(
                shipped_zip_reader(work), *args.reach(), args.auditor_error, args.seed)
        plot = plot_curve(results, Path(args.plot) if args.plot else base.state_dir / "bench" / "loop.png")
    for name, r in results.items():
        own, random_ = r["coverage_same_budget_loop_labels"], r["coverage_last_random_labels"]
        r["deferred_labels_buy_more_coverage_than_random"] = None if own is None or random_ is None else own > random_
    return {**results, "seconds": round(time.monotonic() - started, 1), "plot": str(plot),
            "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
            "args": dataclasses.asdict(args)}


def main(args: LoopBenchArgs) -> int:
    result = run(Settings.from_env(), args, sys.stderr if args.json else sys.stdout)
    finite_json.print_summary(result, sort_keys=True, default=str)
    return 0
