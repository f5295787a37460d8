"""Certify a model version's auto-accept threshold from audited traffic:
``auditstream certify --model NAME --from-audits [--version V] [--target-risk R]``.

Flow: the model's verdicts (the store's, or a labels export) -> the rows that may judge this
version (a version that learnt from verdicts: only the certify part of the request-id split,
monitor/verdict_sets.py, computed here with the store's own split key, ``store.split_key``, for
the rows and the items still waiting alike -- a labels export's own split columns are not
trusted over it; any other version: every verdict) -> put in *stream order* beside the
sampled items still waiting for a verdict, both read from the audit store's items
(:func:`sampled_items`, :func:`in_stream_order`) -> the version's own answers and confidences on
those requests' inputs (ONNX Runtime, as serving computes them) -> wrong = its answer is not the
auditor's (a reject counts as wrong) -> the certificate of qc/audit_certify.py over the thresholds of the
version's held-out risk-coverage curve (fixed at training time, before these audits; least
coverage first) -> the auditors' gold-item error added for a bound against the truth -> printed
and written beside the version as ``audit-certificate.json``. It *proposes*: nothing moves
``LIVE`` or changes the serving threshold.

Stream order is the order the store received the audit items (their ids, assigned at ingest,
before any verdict), never the order the verdicts were decided in: auditors take deferred items
first, filter by route, skip hard ones, and that order depends on the answers
(qc/audit_certify.py, "The order"). A labels export has neither the items' order nor the items
still waiting, so even with ``--labels`` both come from the store, which must hold those items.

One moment: every store read of a run (the verdicts, the items' positions, the gold record, the
inputs read while scoring) is made inside one ``store.read_snapshot()`` (PostgreSQL: one
``REPEATABLE READ READ ONLY`` transaction; SQLite: one WAL read transaction), so they agree with
each other: an item decided during the run is neither done without its verdict nor the other
way round, and an item whose ingest commits late with a lower id (PostgreSQL) is in none of them
rather than missed by the positions alone; the next run sees it. The snapshot is held for the
run, scoring included, and given back when it ends.

Memory: verdicts and items are held without their inputs (ids, routes, probabilities, labels:
``store.labels(..., with_input=False)``, ``store.audit_positions``, read in keyset pages), and
the inputs are read while scoring, one batch of 256 requests at a time
(``store.request_inputs``: the input of the request's first item, every item of a request
carrying that request's input), so a store of hundreds of thousands of audited ~4 KiB inputs
costs the number of items times a small constant, not the inputs. A labels export (``--labels``)
is read the same way: its rows without their inputs, each row keeping where its record starts
(``monitor.labels.LabelsFile``), and a scored row's own input is read back from the export with
its scoring batch (:func:`export_inputs`); only the requests still waiting are read from the store.

Why it reaches what the training certificate cannot: every deferred item is labelled and every
QC sample carries its inclusion probability, so the audits grow with the traffic, while the
zip-reader's held-out certificate is stuck at 97 independent envelopes (at best ~6%).
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from auditstream import finite_json
from auditstream import tasks
from auditstream.cli_args import LEFTOVER, PROBABILITY, SHARE, check_fields
from auditstream.errors import AuditstreamError
from auditstream.registry import ModelCard, RegisteredModel
from auditstream.wire import decode_input
from monitor.labels import INPUT_AT, LabelsFile
from monitor.verdict_sets import learnt_split, split_verdicts
from qc.audit_split import CERTIFY, SplitKey, audit_part
from qc.audit_certify import PROPOSAL_FILE, AuditCertificate, against_truth, certify_from_audits


@dataclass(frozen=True)
class CertifyArgs:
    """Arguments of ``auditstream certify``."""

    model: str = field(default="", metadata={"help": "registry model"})
    version: str = field(default="", metadata={"help": "version to certify (default: the live one)"})
    from_audits: bool = field(default=False, metadata={"help": "certify from the audited traffic (the only source so far)"})
    target_risk: float = field(default=0.0, metadata={
        "check": LEFTOVER, "help": "risk to certify (0: the card's requested target, else 2%%)"})
    delta: float = field(default=0.05, metadata={
        "check": PROBABILITY, "help": "the certificate may fail with probability at most delta"})
    gold_delta: float = field(default=0.01, metadata={
        "check": PROBABILITY, "help": "failure probability of the auditors' error bound (gold items)"})
    start_coverage: float = field(default=0.0, metadata={
        "check": SHARE, "help": "the sequence of thresholds starts at this coverage of the card's held-out curve, then 5-point steps "
                "(0: where that curve has the most room, coverage x (target - held-out risk))"})
    labels: str = field(default="", metadata={"help": "a labels export to read instead of the store"})
    json: bool = field(default=False, metadata={"help": "print the certificate as one JSON object on the last line"})

    def __post_init__(self) -> None:
        check_fields(self)  # before the store or the registry is opened (auditstream/cli_args.py)


class CannotCertify(AuditstreamError):
    pass


def threshold_sequence(card: ModelCard, target_risk: float, start_coverage: float = 0.0,
                       step: float = 0.05) -> list[float]:
    """Thresholds of the card's risk-coverage curve (held-out data, fixed at training time) at
    coverages ``start, start + step, ..., 1``, strictest first.

    ``start_coverage`` 0 picks the start from that curve alone, before any audit is seen: the
    point with the largest ``coverage * (target_risk - risk)`` (of two equal, the larger
    coverage), where a test has the most accepted answers per unit of room under the target. Fixed-sequence testing stops at the
    first threshold it cannot show, so a start at a low coverage (few accepted answers among the
    audits, whatever their error) would stop it where the audits are thinnest; thresholds
    stricter than the start are never tested (they would only certify less coverage)."""
    curve = sorted(card.risk_coverage, key=lambda p: p["coverage"])
    if not curve:
        raise CannotCertify(f"{card.name} v{card.version}'s card has no risk-coverage curve to take thresholds from")
    if start_coverage <= 0.0:
        room = [(p["coverage"] * (target_risk - p["risk"]), p["coverage"]) for p in curve if p["risk"] < target_risk]
        start_coverage = max(room)[1] if room else 0.2  # nothing under the target held out: start strict
    picked: list[float] = []
    for wanted in [*np.arange(start_coverage, 1.0 - 1e-9, step), 1.0]:  # always down to the curve's loosest
        point = min(curve, key=lambda p: abs(p["coverage"] - wanted))
        if not picked or point["threshold"] < picked[-1]:
            picked.append(float(point["threshold"]))
    return picked


def learnt_share(card: ModelCard, key: SplitKey | None) -> float | None:
    """The certify share of the split this version learnt by (None: it learnt from no verdicts),
    checked against ``key``, the split key of the store that judges it: the card must name that
    key (or, written before per-store keys, none) and ``key`` must be given."""
    learnt = learnt_split(card)  # a damaged record: ModelRefused, one line
    if learnt is None:
        return None
    if key is None:
        raise ValueError(f"{card.name} v{card.version} learnt from verdicts: which ones may judge it is decided by the "
                         "audit store's split key (pass key=store.split_key)")
    share, learnt_key = learnt
    if learnt_key and learnt_key != key.key_id:
        raise CannotCertify(f"{card.name} v{card.version} learnt from verdicts split by the key {learnt_key}, and this "
                            f"audit store splits by {key.key_id}: which of its items the version learnt from cannot be "
                            "set apart here; certify it against the store it was retrained from")
    return share


def rows_for(card: ModelCard, rows: list[dict[str, Any]],
             key: SplitKey | None = None) -> tuple[list[dict[str, Any]], str]:
    """The verdicts that may judge this version (one per request, in no particular order: the
    test's order comes from :func:`in_stream_order`), and which they are (the hygiene rule;
    ``key``: the store's split key, needed for a version that learnt from verdicts)."""
    share = learnt_share(card, key)
    if share is not None:
        chosen = split_verdicts(rows, card.name, share, key=key).certify
        which = "the certify part only (this version learnt from the train part)"
    else:
        chosen, which = split_verdicts(rows, card.name, 0.0).train, "every verdict (this version learnt from none)"
    return chosen, which


def may_judge(card: ModelCard, key: SplitKey | None = None) -> Callable[[str], bool]:
    """Whether a request id may judge this version (the part :func:`rows_for` reads, by the
    store's split ``key``)."""
    share = learnt_share(card, key)
    if share is None:
        return lambda request_id: True
    assert key is not None  # learnt_share refused a missing key
    return lambda request_id: audit_part(request_id, share, key) == CERTIFY


@dataclass(frozen=True, slots=True)
class SampledItem:
    """One audit item of the model as the store holds it: where it stands in the stream and
    whether its verdicts are all in. No input: inputs are read a batch at a time when scored
    (:func:`score_version`), so every item of a large store can be held."""

    request_id: str
    position: int  # the store's item id: the order items were ingested, fixed before any verdict
    done: bool  # every review recorded (state 'done'); an open item may still change its label
    route: str  # HUMAN (deferred) or AUTO_QC (QC sample)
    inclusion_prob: float


# The rows of one scoring batch that carry no input -> their wire inputs by request id (absent:
# none known). Rows, not ids: a labels export's row says where its own input is (input_at).
InputLoader = Callable[[Sequence[dict[str, Any]]], dict[str, Any]]


def sampled_items(store: Any, model: str, page: int = 500) -> list[SampledItem]:
    """Every non-gold audit item of ``model`` in the store, in stream order, without inputs
    (``store.audit_positions``: keyset pages on the item id, ascending)."""
    return [SampledItem(p.request_id, p.item_id, p.done, p.route.value, p.inclusion_prob)
            for p in store.audit_positions(model, page)]


def store_inputs(store: Any, model: str) -> InputLoader:
    """An :data:`InputLoader` reading from the open ``store``: each request's input is that of
    its first (lowest-id) non-gold item of ``model`` (``store.request_inputs``)."""
    return lambda rows: store.request_inputs(model, [r["request_id"] for r in rows])


def export_inputs(export: LabelsFile, rest: InputLoader) -> InputLoader:
    """An :data:`InputLoader` for the rows of ``export.rows(with_input=False)``: each row's own
    input, read back from the export at its ``input_at``; rows without one (the requests still
    waiting, stand-ins of :func:`in_stream_order`) from ``rest``."""
    def load(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        own = [r for r in rows if INPUT_AT in r]
        others = [r for r in rows if INPUT_AT not in r]
        found = rest(others) if others else {}
        at = export.inputs(r[INPUT_AT] for r in own)
        return {**found, **{r["request_id"]: at[r[INPUT_AT]] for r in own}}
    return load


@dataclass(frozen=True)
class StreamSample:
    """The sampled requests that may judge a version, in stream order: each with its verdict row
    (settled) or, still waiting, a stand-in with no label and no input (read when scored)."""

    rows: list[dict[str, Any]]
    settled: np.ndarray  # bool per row
    rows_not_in_store: int  # verdict rows whose request has no audit item in the store: left out
    # settled rows whose route or inclusion probability differs from the store's item (an edited
    # or foreign export): the store's are used, the design the sample was drawn with
    rows_disagreeing_with_store: int = 0

    @property
    def first_waiting(self) -> dict[str, Any] | None:
        waiting = np.flatnonzero(~self.settled)
        return self.rows[int(waiting[0])] if waiting.size else None


def in_stream_order(usable: list[dict[str, Any]], items: list[SampledItem], judges: Callable[[str], bool]) -> StreamSample:
    """The requests of ``items`` that may judge the version (``judges``), in the order the store
    received them (a request with items of several versions: its first), each settled when all its
    items are done and ``usable`` has its verdict row; the others wait (no verdict yet, a second
    review pending, or a verdict the rows do not have, e.g. an export older than the store)."""
    by_request: dict[str, list[SampledItem]] = {}
    for it in items:
        if judges(it.request_id):
            by_request.setdefault(it.request_id, []).append(it)
    verdicts = {r["request_id"]: r for r in usable}
    rows, settled, disagreeing = [], [], 0
    for request_id, its in sorted(by_request.items(), key=lambda kv: min(it.position for it in kv[1])):
        row = verdicts.get(request_id)
        first = min(its, key=lambda it: it.position)
        design = {"route": first.route, "inclusion_prob": first.inclusion_prob}
        if row is not None and all(it.done for it in its):
            # The sampling design is the store's, never the rows': an export edited to say a QC
            # sample was drawn with probability 1 would weight its errors 20 times too little.
            disagreeing += any(row.get(k) != v for k, v in design.items())
            rows.append({**row, **design})
            settled.append(True)
        else:
            rows.append({"request_id": request_id, **design, "human_label": None, "waiting": True})
            settled.append(False)
    return StreamSample(rows, np.array(settled, dtype=bool), sum(r not in by_request for r in verdicts), disagreeing)


def wire_inputs(rows: list[dict[str, Any]], inputs: InputLoader | None) -> list[Any]:
    """The wire inputs of ``rows``: a row's own ``input`` (a labels export read whole) or else the
    one ``inputs`` gives for its request id, asked once for all of them."""
    missing = [r for r in rows if "input" not in r]
    if missing and inputs is None:
        raise ValueError(f"{len(missing)} rows carry no input (the first: request {missing[0]['request_id']}) and no "
                         "inputs= loader was given (pass inputs=store_inputs(store, model))")
    fetched = inputs(missing) if missing else {}
    lost = [r["request_id"] for r in missing if r["request_id"] not in fetched]
    if lost:
        raise CannotCertify(f"the store has no input for {len(lost)} sampled requests (the first: {lost[0]})")
    return [r["input"] if "input" in r else fetched[r["request_id"]] for r in rows]


def score_version(model: RegisteredModel, rows: list[dict[str, Any]], batch: int = 256, *,
                  inputs: InputLoader | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, wrong) of ``model`` on the rows' inputs; wrong: its answer is not the auditor's.
    Inputs are read ``batch`` rows at a time (:func:`wire_inputs`: the row's own, else from
    ``inputs``) and dropped once the batch is scored."""
    from serving.inference import infer
    from serving.inputs import prepare_input
    from serving.runtime import load_session

    card = model.card
    session = load_session(model, intra_op_threads=1)
    kind = tasks.rule_for(card.task, card)  # at the card's parameters (a detector's match_iou)
    conf, wrong = np.zeros(len(rows)), np.zeros(len(rows), dtype=int)
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        arrays = [prepare_input(decode_input(x), card.inputs[0]) for x in wire_inputs(chunk, inputs)]
        answers, _ = infer(session, card, arrays)
        for i, (row, answer) in enumerate(zip(chunk, answers), start):
            if answer is None or isinstance(answer, Exception):
                conf[i], wrong[i] = 0.0, 1  # no answer: never accepted
                continue
            conf[i] = answer.confidence
            wrong[i] = int(row["human_label"] is None or not kind.same_answer(answer.output, row["human_label"]))
    return conf, wrong


def recertify(model: RegisteredModel, rows: list[dict[str, Any]], target_risk: float, delta: float,
              gold: tuple[int, int] = (0, 0), gold_delta: float = 0.01, start_coverage: float = 0.0, *,
              stream: list[SampledItem] | None = None, inputs: InputLoader | None = None,
              split_key: SplitKey | None = None) -> tuple[AuditCertificate, dict[str, Any]]:
    """The certificate of ``model`` from ``rows`` (label-export rows) and what it was built on.
    ``gold``: (auditors' errors, gold verdicts). ``stream``: the model's audit items in the store
    (:func:`sampled_items`), which give the stream order and the items still waiting; without
    them the test has no valid order and nothing is certified (module docstring). ``inputs``:
    where the inputs of rows without an ``input`` come from (the requests still waiting, and
    every row of ``store.labels(..., with_input=False)`` or ``LabelsFile.rows(with_input=False)``):
    :func:`store_inputs` of the open store or :func:`export_inputs`, read one scoring batch at a time.
    ``split_key``: the store's (``store.split_key``); a version that learnt from verdicts needs it."""
    card = model.card
    usable, which = rows_for(card, rows, split_key)
    if not usable:
        raise CannotCertify(f"no verdicts of {card.name} may judge version {card.version} ({which}): audit some first")
    if stream is None:
        raise CannotCertify("certifying needs the stream order and the items still waiting for a verdict, which only "
                            "the audit store's items give (pass stream=sampled_items(store, model)); the verdicts' "
                            "own order depends on the auditors, not on the stream")
    sample = in_stream_order(usable, stream, may_judge(card, split_key))
    if not sample.settled.any():
        raise CannotCertify(f"none of the {len(usable)} verdicts of {card.name} that may judge version {card.version} "
                            f"has its audit item in the store (done), so none has a place in the stream")
    pi = np.array([r["inclusion_prob"] for r in sample.rows], dtype=np.float64)
    bad = np.flatnonzero(~((pi > 0) & (pi <= 1)))  # NaN fails both
    if bad.size:
        raise CannotCertify(f"{bad.size} audit items in the store have an inclusion probability outside (0, 1] (the "
                            f"first: request {sample.rows[int(bad[0])]['request_id']}, {pi[bad[0]]!r}): no sampling "
                            "design weights them; find who wrote them to the audit topic")
    conf, wrong = score_version(model, sample.rows, inputs=inputs)
    cert = certify_from_audits(conf, wrong, pi, target_risk, delta, threshold_sequence(card, target_risk, start_coverage),
                               settled=sample.settled)
    cert = against_truth(cert, gold[0], gold[1], gold_delta)
    first = sample.first_waiting
    basis = {"model": card.name, "version": card.version, "verdicts_used": which, "n_rows": int(sample.settled.sum()),
             "order": "stream order: the audit store's item ids (set at ingest, before any verdict)",
             "waiting_for_verdict": int((~sample.settled).sum()), "rows_not_in_store": sample.rows_not_in_store,
             "rows_disagreeing_with_store": sample.rows_disagreeing_with_store,
             "first_waiting": None if first is None else {"request_id": first["request_id"], "route": first["route"]},
             "live_threshold": card.triage.threshold, "gold_errors": gold[0], "gold_verdicts": gold[1],
             "scope": ("bounds how often auto-accepted answers disagree with the auditors; risk_against_truth adds "
                       "the auditors' own error rate on gold items (upper bound at gold_delta; assumes auditors err on "
                       "traffic no more than on gold), holding with probability >= 1 - delta - gold_delta")}
    return cert, basis


def write_proposal(model: RegisteredModel, cert: AuditCertificate, basis: dict[str, Any]) -> Path:
    path = model.directory / PROPOSAL_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"certificate": cert.to_dict(), **basis}, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def main(args: CertifyArgs) -> int:
    from auditstream.registry import ModelRegistry
    from auditstream.settings import Settings
    from store import open_store

    if not args.from_audits:
        raise CannotCertify("say where the evidence comes from: --from-audits (training certifies on held-out data "
                            "itself: auditstream train NAME)")
    settings = Settings.from_env()
    model = ModelRegistry.from_settings(settings).load(args.model, args.version or None)
    target = args.target_risk or model.card.extra.get("requested_target_risk") or model.card.triage.target_risk or 0.02
    with ExitStack() as held:
        store = held.enter_context(open_store(settings.resolved_store_url, create=False))  # it only reads
        held.enter_context(store.read_snapshot())  # every read below at one moment (module docstring)
        inputs = store_inputs(store, args.model)
        # without inputs: they are read a scoring batch at a time (module docstring, "Memory")
        if args.labels:
            export = held.enter_context(LabelsFile(Path(args.labels)))
            rows = list(export.rows(with_input=False))
            inputs = export_inputs(export, inputs)
        else:
            rows = list(store.labels(args.model, with_input=False))
        stream = sampled_items(store, args.model)
        scores = store.gold_accuracy(args.model).values()  # this model's gold only
        gold = (sum(s.n - s.correct for s in scores), sum(s.n for s in scores))
        cert, basis = recertify(model, rows, float(target), args.delta, gold, args.gold_delta, args.start_coverage,
                                stream=stream, inputs=inputs, split_key=store.split_key)
    path = write_proposal(model, cert, basis)
    out = sys.stderr if args.json else sys.stdout
    if cert.certified:
        print(f"{args.model} v{model.card.version}: risk <= {cert.target_risk:.2%} against the auditors (delta "
              f"{cert.delta}) at threshold {cert.threshold:.6g} (live threshold {model.card.triage.threshold:.6g}); "
              f"estimated coverage {cert.estimated_coverage:.1%}, estimated risk {cert.estimated_risk:.2%}", file=out)
    else:
        print(f"{args.model} v{model.card.version}: nothing certified at {cert.target_risk:.2%}: {cert.reason}", file=out)
    if cert.risk_against_truth is not None:
        print(f"  against the truth: <= {cert.risk_against_truth:.2%} (auditors' error <= {cert.auditor_error_bound:.2%} "
              f"from {gold[1]} gold verdicts on {args.model}'s items, gold_delta {cert.gold_delta})", file=out)
    print(f"  from {basis['n_rows']} audited requests in stream order ({basis['verdicts_used']}); "
          f"{basis['waiting_for_verdict']} sampled requests still wait for a verdict"
          + (f" (the first: {basis['first_waiting']['request_id']}, {basis['first_waiting']['route']})"
             if basis["first_waiting"] else "")
          + (f"; {basis['rows_not_in_store']} verdicts without an audit item in the store were left out"
             if basis["rows_not_in_store"] else "")
          + f"; proposal written to {path}; LIVE and the serving threshold are unchanged", file=out)
    if args.json:
        finite_json.print_summary({"certificate": cert.to_dict(), **basis, "proposal": str(path)}, sort_keys=True)
    return 0
