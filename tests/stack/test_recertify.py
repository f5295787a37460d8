"""``auditstream certify --from-audits`` (stack/recertify.py): a real digits model judged on
audited rows; the hygiene rule picks the rows; the proposal is written and LIVE stays; on a store
(SQLite and PostgreSQL), from the store or from a labels export (JSON lines and CSV), the command
gives what the all-inputs-in-memory reading gives while never holding more than one scoring batch
of inputs, reads the store only inside one snapshot, and a commit made while it runs is not in
that run."""

from __future__ import annotations

import dataclasses
import json
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.store.store_factories import BACKENDS, make_store

from auditstream.registry import ModelRegistry
from auditstream.wire import encode_input
from monitor.labels import LabelsFile
from qc.audit_split import CERTIFY, SplitKey, audit_part
from stack.recertify import (
    CannotCertify,
    CertifyArgs,
    SampledItem,
    in_stream_order,
    main,
    recertify,
    rows_for,
    threshold_sequence,
)
from training.data.split import load_split
from training.digits import train as digits
from training.digits.args import DigitsArgs


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> ModelRegistry:
    root = tmp_path_factory.mktemp("models")
    digits.run(DigitsArgs(epochs=20, seed=4), root, progress=False)
    return ModelRegistry(root)


def audited_rows(n: int, wrong_label_every: int = 0) -> list[dict]:
    """Rows as auditors would leave them on held-out digits: all deferred (pi = 1), true labels
    (every ``wrong_label_every``-th one an auditor's disagreement)."""
    held_out = [load_split("test"), load_split("calibration/certificate")]  # digits the model never trained on
    pool = np.concatenate([s.images for s in held_out])
    labels = np.concatenate([s.labels for s in held_out])
    rows = []
    for k in range(min(n, len(labels))):
        truth = str(int(labels[k]))
        if wrong_label_every and k % wrong_label_every == 0:
            truth = str((int(truth) + 1) % 10)
        rows.append({"verdict_id": f"v{k}", "request_id": f"r{k}", "model": "digits", "model_version": "1",
                     "task": "classification", "route": "HUMAN", "confidence": 0.5, "inclusion_prob": 1.0,
                     "verdict_kind": "correct", "model_output": "0", "human_label": truth, "auditor": "a",
                     "decided_at_s": float(k), "review_round": 1, "is_gold": False,
                     "input": encode_input(pool[k].astype(np.float32))})
    return rows


def stream_of(rows: list[dict], waiting: dict[int, bool] | None = None) -> list[SampledItem]:
    """The store's audit items for ``rows``, received in row order; ``waiting``: row index -> still open."""
    waiting = waiting or {}
    return [SampledItem(r["request_id"], k + 1, not waiting.get(k, False), r["route"], r["inclusion_prob"])
            for k, r in enumerate(rows)]


def test_threshold_sequence_follows_the_cards_curve(registry):
    card = registry.card("digits")
    seq = threshold_sequence(card, 0.02, start_coverage=0.2)
    assert seq == sorted(seq, reverse=True) and len(seq) <= 17 and len(seq) == len(set(seq))
    assert seq[-1] == pytest.approx(min(p["threshold"] for p in card.risk_coverage))


def test_threshold_sequence_starts_where_the_held_out_curve_has_the_most_room(registry):
    card = registry.card("digits")
    curve = card.risk_coverage
    for target in (0.005, 0.02, 0.1):
        room = [(p["coverage"] * (target - p["risk"]), p) for p in curve if p["risk"] < target]
        best = max(room, key=lambda x: (x[0], x[1]["coverage"]))[1]  # a tie: the larger coverage
        seq = threshold_sequence(card, target)
        # the start is the held-out curve's best point (or the curve point nearest it), the rest looser
        start = min(curve, key=lambda p: abs(p["coverage"] - best["coverage"]))
        assert seq[0] == start["threshold"] and seq == sorted(seq, reverse=True)
        assert seq[-1] == pytest.approx(min(p["threshold"] for p in curve))
        assert len(seq) <= len(threshold_sequence(card, target, start_coverage=0.2))
    # nothing held out under the target: start strict, as before
    poor = type(card)(**{**card.__dict__, "risk_coverage": [{**p, "risk": 0.5} for p in curve]})
    assert threshold_sequence(poor, 0.02) == threshold_sequence(poor, 0.02, start_coverage=0.2)


def test_a_good_model_is_certified_at_2pct_from_audits_and_an_auditor_mismatch_is_not(registry):
    model = registry.load("digits")
    rows = audited_rows(700)
    cert, basis = recertify(model, rows, 0.02, 0.05, gold=(2, 300), gold_delta=0.01, stream=stream_of(rows))
    assert cert.certified and cert.estimated_coverage > 0.5 and basis["verdicts_used"].startswith("every verdict")
    assert cert.risk_against_truth == pytest.approx(0.02 + cert.auditor_error_bound) and cert.auditor_error_bound < 0.03
    noisy_rows = audited_rows(700, wrong_label_every=12)  # 8% disagreement
    noisy, _ = recertify(model, noisy_rows, 0.02, 0.05, stream=stream_of(noisy_rows))
    assert not noisy.certified
    with pytest.raises(CannotCertify, match="stream order"):  # the verdicts alone have no valid order
        recertify(model, rows, 0.02, 0.05)


def test_the_test_reads_the_stream_not_the_order_verdicts_were_decided_in():
    # Four sampled requests, received r0, r1, r2, r3; auditors decided r3 first and r0 last; r2 is
    # still open (e.g. a second review pending) though its first verdict is exported; r9's item is
    # not in the store at all.
    rows = [{"request_id": f"r{k}", "model": "digits", "is_gold": False, "review_round": 1, "decided_at_s": float(10 - k),
             "verdict_id": f"v{k}", "route": "AUTO_QC" if k % 2 else "HUMAN", "inclusion_prob": 0.02 if k % 2 else 1.0,
             "input": {"k": k}, "human_label": str(k)} for k in (0, 1, 2, 3, 9)]
    stream = stream_of(rows[:4], waiting={2: True})[::-1]  # read back newest first
    sample = in_stream_order(rows, stream, lambda request_id: True)
    assert [r["request_id"] for r in sample.rows] == ["r0", "r1", "r2", "r3"]  # the store's order, not the decisions'
    assert sample.settled.tolist() == [True, True, False, True] and sample.rows_not_in_store == 1
    assert sample.first_waiting["request_id"] == "r2" and sample.first_waiting["human_label"] is None
    # an item done in the store whose verdict the rows lack (an older export) waits too
    assert in_stream_order(rows[:1] + rows[2:4], stream_of(rows[:4]), lambda r: True).settled.tolist() == [
        True, False, True, True]
    # a version that learnt from verdicts: only the certify part's requests, waiting ones included
    learnt = in_stream_order(rows, stream, lambda request_id: request_id in {"r1", "r2"})
    assert [r["request_id"] for r in learnt.rows] == ["r1", "r2"]


def test_the_sampling_design_is_the_stores_not_the_exports(registry):
    """Review 2026-12-04: a settled row's inclusion probability came from the labels export, so an
    export edited to say every QC sample (drawn at 0.05 in the store) was a deferral (1.0)
    weighted each auditor disagreement 20 times too little -- and got a threshold certified that
    the store's own numbers refuse. The store's route and probability are used, the rows that
    disagree counted; a probability outside (0, 1] in the store is one error naming the request."""
    model = registry.load("digits")
    rows = audited_rows(2400)  # as many as the held-out digits give
    for k, row in enumerate(rows):
        if k % 4 == 3:  # one in four a QC sample drawn at 0.05; auditors disagree on 2 in 25 of those
            row.update(route="AUTO_QC", inclusion_prob=0.05)
            if k % 100 in (3, 51):
                row["human_label"] = str((int(row["human_label"]) + 1) % 10)
    stream = stream_of(rows)
    honest, _ = recertify(model, rows, 0.05, 0.05, stream=stream)
    edited = [dict(r, route="HUMAN", inclusion_prob=1.0) for r in rows]
    cert, basis = recertify(model, edited, 0.05, 0.05, stream=stream)
    assert not honest.certified
    qc_rows = sum(r["route"] == "AUTO_QC" for r in rows)
    assert qc_rows > 100 and cert.to_dict() == honest.to_dict() and basis["rows_disagreeing_with_store"] == qc_rows
    sample = in_stream_order(edited, stream, lambda request_id: True)
    assert [(r["route"], r["inclusion_prob"]) for r in sample.rows[3:5]] == [("AUTO_QC", 0.05), ("HUMAN", 1.0)]
    for bad in (0.0, float("nan")):
        broken = [dataclasses.replace(it, inclusion_prob=bad) if it.request_id == "r7" else it for it in stream]
        with pytest.raises(CannotCertify, match=r"inclusion probability outside \(0, 1\].*request r7"):
            recertify(model, rows, 0.05, 0.05, stream=broken)


def test_a_version_that_learnt_from_verdicts_is_judged_on_the_certify_part_only(registry):
    card = registry.card("digits")
    learnt = type(card)(**{**card.__dict__, "extra": {**card.extra, "data_hygiene": {"certify_share": 0.5}}})
    key = SplitKey.new(bytes(range(32)))  # the store's
    rows, which = rows_for(learnt, audited_rows(200), key)
    assert rows and all(audit_part(r["request_id"], 0.5, key) == CERTIFY for r in rows) and "certify part" in which
    assert len(rows_for(card, audited_rows(200))[0]) == 200
    with pytest.raises(ValueError, match="split key"):  # which rows may judge it is the store's to say
        rows_for(learnt, audited_rows(10))


def ingest_and_decide(rows: list[dict], url: str, open_rows: int = 0) -> None:
    """The audit store as serving and auditors would leave it for ``rows``: one item per row, every one
    but the last ``open_rows`` the store received decided as the row says."""
    from auditstream.wire import AuditItem, Prediction, Route, decode_input
    from store import open_store
    from store.accounts import Role

    with open_store(url, create=True) as store:
        store.ingest_many([AuditItem(Prediction(
            request_id=r["request_id"], model="digits", model_version="1", task="classification", output="0",
            confidence=0.5, route=Route.HUMAN, reason="test", qc_inclusion_prob=1.0, created_at_s=float(k)),
            decode_input(r["input"])) for k, r in enumerate(rows)], 0.0)
        auditor = store.accounts.add_user("ann", "ann-password-1", Role.AUDITOR)
        for k in range(len(rows) - open_rows):
            claim = store.claim(auditor, 60.0, float(k))
            label = rows[int(claim.item.request_id[1:])]["human_label"]
            store.record_verdict(store.new_verdict_id(), claim.item_id, auditor, "accept" if label == "0" else "correct",
                                 None if label == "0" else label, float(k))


def test_certify_command_writes_a_proposal_and_leaves_live_alone(registry, tmp_path, monkeypatch, capsys):
    from store import accounts

    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_STATE_DIR", str(tmp_path))
    rows = audited_rows(700)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = registry.card("digits").triage.threshold
    from store import StoreMissing, open_store

    with pytest.raises(StoreMissing):  # a store that is not there is not made (it only reads)
        main(CertifyArgs(model="digits", from_audits=True, labels=str(labels), json=True))
    assert not (tmp_path / "audit.db").exists()
    open_store(f"sqlite:///{tmp_path / 'audit.db'}", create=True).close()  # there, but without the audited items
    with pytest.raises(CannotCertify, match="audit item in the store"):  # the export alone has no stream order
        main(CertifyArgs(model="digits", from_audits=True, labels=str(labels), json=True))
    ingest_and_decide(rows, f"sqlite:///{tmp_path / 'audit.db'}", open_rows=5)
    assert main(CertifyArgs(model="digits", from_audits=True, labels=str(labels), json=True)) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["certificate"]["certified"] and out["n_rows"] == 695 and out["waiting_for_verdict"] == 5
    # ingest_many stores one batch in request-id order: the first open item is the 695th of those
    assert out["first_waiting"]["request_id"] == sorted(r["request_id"] for r in rows)[695]
    assert out["order"].startswith("stream order")
    proposal = json.loads((registry.root / "digits" / "1" / "audit-certificate.json").read_text())
    assert proposal["certificate"]["threshold"] == out["certificate"]["threshold"]
    assert registry.live_version("digits") is None and registry.card("digits").triage.threshold == before


def test_a_labels_file_that_is_not_an_export_is_one_error_line(registry, tmp_path, monkeypatch, capsys):
    from auditstream.cli import main as cli_main

    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_STATE_DIR", str(tmp_path))
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps(audited_rows(1)[0]) + "\n{oops\n")
    from store import open_store

    # the store is there: the labels file is what is wrong
    open_store(f"sqlite:///{tmp_path / 'audit.db'}", create=True).close()
    assert cli_main(["certify", "--model", "digits", "--from-audits", "--labels", str(labels)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"auditstream: error: labels file {labels}, line 2: not JSON (Expecting property name enclosed in "
                   "double quotes: line 1 column 2 (char 1)); is it an export (auditstream labels export --out FILE)?"]


# --- on a store: the same certificate, one scoring batch of inputs at a time ------------------

SCORING_BATCH = 256  # stack.recertify.score_version's batch


class HeldInput(dict):
    """A wire input as the store handed it out (still a dict for decode_input), counted while alive."""


class InputCountingStore:
    """The store ``main`` opens, passing every call through but handing out each input (of
    ``labels``, ``items`` or ``request_inputs``, and of the labels export: :class:`CountingExport`)
    as a :class:`HeldInput`: records the most inputs one call returned, the most alive at once,
    how many came from each source, and the reads made outside the store's read snapshot.
    ``after_labels``: called once the verdicts have been read from the store."""

    READS = ("labels", "audit_positions", "request_inputs", "gold_accuracy", "items")

    def __init__(self, store: Any, after_labels: Any = None) -> None:
        self._store, self.after_labels = store, after_labels
        self.most_per_call = self.most_alive = self.handed_out = self.alive = 0
        self.from_source: dict[str, int] = {}
        self.snapshots, self.in_snapshot, self.outside = 0, False, []

    def __enter__(self) -> "InputCountingStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._store.__exit__(*exc)

    def _held(self, value: dict, source: str = "store") -> HeldInput:
        held = HeldInput(value)
        weakref.finalize(held, self._dropped)
        self.handed_out, self.alive = self.handed_out + 1, self.alive + 1
        self.from_source[source] = self.from_source.get(source, 0) + 1
        self.most_alive = max(self.most_alive, self.alive)
        return held

    def _dropped(self) -> None:
        self.alive -= 1

    def _counted(self, n: int) -> None:
        self.most_per_call = max(self.most_per_call, n)

    def _label_rows(self, rows: Any) -> Any:
        n = 0
        for row in rows:
            if "input" in row:
                row, n = {**row, "input": self._held(row["input"])}, n + 1
                self._counted(n)
            yield row
        if self.after_labels is not None:
            self.after_labels()

    @contextmanager
    def _snapshot(self) -> Any:
        with self._store.read_snapshot():
            self.snapshots, self.in_snapshot = self.snapshots + 1, True
            try:
                yield
            finally:
                self.in_snapshot = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name == "read_snapshot":
            return self._snapshot
        if name in self.READS and not self.in_snapshot:
            self.outside.append(name)
        if name == "labels":
            return lambda *a, **kw: self._label_rows(attr(*a, **kw))
        if name == "items":
            def items(*a: Any, **kw: Any) -> list:
                out = [dataclasses.replace(it, input=self._held(it.input)) for it in attr(*a, **kw)]
                self._counted(len(out))
                return out
            return items
        if name == "request_inputs":
            def request_inputs(*a: Any, **kw: Any) -> dict:
                out = {request_id: self._held(x) for request_id, x in attr(*a, **kw).items()}
                self._counted(len(out))
                return out
            return request_inputs
        return attr


class CountingExport(LabelsFile):
    """The labels export ``main`` opens, its inputs counted by the store's :class:`InputCountingStore`."""

    def __init__(self, path: Path, counter: InputCountingStore) -> None:
        super().__init__(path)
        self._counter = counter

    def rows(self, with_input: bool = True) -> Any:
        for row in super().rows(with_input):
            yield {**row, "input": self._counter._held(row["input"], "export")} if "input" in row else row

    def inputs(self, starts: Any) -> dict[int, Any]:
        out = {at: self._counter._held(x, "export") for at, x in super().inputs(starts).items()}
        self._counter._counted(len(out))
        return out


def fill_store(store: Any, rows: list[dict]) -> None:
    """Several hundred items of ``rows`` as serving and auditors leave them: a quarter QC samples
    (inclusion probability 0.5), a second item (version 2, the same request) for every third of
    the last ten, gold items and another model's items (same request ids) between them; every
    item decided as its row says (three rejects) except three left open near the end."""
    from auditstream.wire import AuditItem, Prediction, Route, decode_input
    from store.accounts import Role

    def items(part: list[dict], version: str = "1", model: str = "digits") -> list:
        return [AuditItem(Prediction(
            request_id=r["request_id"], model=model, model_version=version, task="classification", output="0",
            confidence=0.5, route=Route.HUMAN if int(r["request_id"][1:]) % 4 else Route.AUTO_QC, reason="test",
            qc_inclusion_prob=1.0 if int(r["request_id"][1:]) % 4 else 0.5, created_at_s=0.0),
            decode_input(r["input"]) if model == "digits" else np.zeros((8, 8), dtype=np.float32)) for r in part]

    half = len(rows) // 2
    store.ingest_many(items(rows[:half]), 0.0)
    admin = store.accounts.add_user("ada", "ada-password-1", Role.ADMIN)
    for k in range(3):
        store.add_gold(items([{**rows[k], "request_id": f"g{k}"}])[0], "3", admin, 0.0)
    store.ingest_many(items(rows[:5], version="o1", model="other"), 0.0)
    store.ingest_many(items(rows[half:]), 0.0)
    store.ingest_many(items(rows[-10::3], version="2"), 0.0)
    label = {r["request_id"]: r["human_label"] for r in rows}
    leave_open = {(rows[-2]["request_id"], "1"), (rows[-1]["request_id"], "1"), (rows[-7]["request_id"], "2")}
    rejects = {rows[k]["request_id"] for k in (50, 250, 450)}
    ann = store.accounts.add_user("ann", "ann-password-1", Role.AUDITOR)
    for t in range(10_000):
        claim = store.claim(ann, 60.0, float(t), model="digits")
        if claim is None:
            break
        it = claim.item
        if it.is_gold:
            kind, corrected = ("correct", "3") if t % 5 else ("accept", None)  # the auditor errs on some gold
        elif (it.request_id, it.model_version) in leave_open:
            kind, corrected = "skip", None
        elif it.request_id in rejects:
            kind, corrected = "reject", None
        else:
            kind, corrected = ("accept", None) if label[it.request_id] == "0" else ("correct", label[it.request_id])
        store.record_verdict(store.new_verdict_id(), claim.item_id, ann, kind, corrected, float(t))


def in_memory_certificate(registry: ModelRegistry, store: Any, target: float) -> dict:
    """What the command computed before it read inputs in batches: every verdict row with its
    input, every item with its input (read newest first, 100 at a time, by offset), a waiting
    request scored on its first item's input."""
    rows = list(store.labels("digits"))
    items, offset = [], 0
    while page := store.items(model="digits", limit=100, offset=offset):
        items, offset = items + page, offset + 100
    items.sort(key=lambda it: it.item_id)
    first: dict[str, dict] = {}
    for it in items:
        first.setdefault(it.request_id, it.input)
    stream = [SampledItem(it.request_id, it.item_id, it.state == "done", it.route.value, it.qc_inclusion_prob)
              for it in items]
    scores = store.gold_accuracy().values()
    gold = (sum(s.n - s.correct for s in scores), sum(s.n for s in scores))
    assert all("input" in r for r in rows) and len(items) > len(first)  # some requests have two items
    cert, basis = recertify(registry.load("digits"), rows, target, 0.05, gold, 0.01, stream=stream,
                            inputs=lambda rows: {r["request_id"]: first[r["request_id"]] for r in rows})
    return {"certificate": cert.to_dict(), **basis}


@pytest.mark.parametrize("backend", BACKENDS)
def test_certify_from_the_store_is_the_in_memory_certificate_with_one_batch_of_inputs_held(
        registry, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # fmt: skip
    import store as store_package
    from monitor.labels import export_labels
    from stack import recertify as recertify_module
    from store import StoreConfig, accounts

    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_STATE_DIR", str(tmp_path))
    rows = audited_rows(600)
    with make_store(backend, tmp_path, StoreConfig(gold_rate=0.2, seed=3)) as store:
        fill_store(store, rows)
        expected = in_memory_certificate(registry, store, 0.05)
        assert expected["certificate"]["certified"] and expected["waiting_for_verdict"] == 3
        assert expected["n_rows"] == 597 and expected["gold_verdicts"] > 0 and expected["rows_not_in_store"] == 0
        opened: list[InputCountingStore] = []
        open_store = store_package.open_store
        after_labels: list[Any] = []

        def open_counted(url: str, *a: Any, **kw: Any) -> InputCountingStore:  # this test's store, counted
            opened.append(InputCountingStore(open_store(store._db.url, table_prefix=store._db.prefix, create=True),
                                             after_labels.pop() if after_labels else None))
            return opened[-1]

        monkeypatch.setattr(store_package, "open_store", open_counted)
        monkeypatch.setattr(recertify_module, "LabelsFile", lambda path: CountingExport(path, opened[-1]))

        def certify(**kw: Any) -> str:
            assert main(CertifyArgs(model="digits", from_audits=True, target_risk=0.05, json=True, **kw)) == 0
            out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert out.pop("proposal").endswith("audit-certificate.json")
            counted = opened[-1]  # every store read in the run's one snapshot
            assert counted.snapshots == 1 and counted.outside == [] and not counted.in_snapshot
            return json.dumps(out, sort_keys=True)  # NaN compares equal as text

        assert certify() == json.dumps(expected, sort_keys=True)
        counted = opened[-1]
        # every scored request's input came through the store, at most one scoring batch per call and alive at once
        assert counted.handed_out >= expected["n_rows"] + expected["waiting_for_verdict"]
        assert 0 < counted.most_per_call <= SCORING_BATCH and counted.most_alive <= SCORING_BATCH

        # --labels: the export's rows without inputs, their own inputs read back a batch at a time
        for fmt in ("jsonl", "csv"):
            labels = tmp_path / f"labels.{fmt}"
            export_labels(store, labels, model="digits", fmt=fmt, progress=False)
            assert certify(labels=str(labels)) == json.dumps(expected, sort_keys=True)
            counted = opened[-1]
            assert counted.from_source == {"store": expected["waiting_for_verdict"], "export": expected["n_rows"]}
            assert 0 < counted.most_per_call <= SCORING_BATCH and counted.most_alive <= SCORING_BATCH

        # A sampled item ingested by another connection while the command runs (after it read the
        # verdicts, before the positions): not in this run, which reads one moment; in the next.
        from auditstream.wire import AuditItem, Prediction, Route, decode_input

        late = AuditItem(Prediction(request_id="r-late", model="digits", model_version="1", task="classification",
                                    output="0", confidence=0.5, route=Route.HUMAN, reason="test",
                                    qc_inclusion_prob=1.0, created_at_s=0.0), decode_input(rows[0]["input"]))
        after_labels.append(lambda: store.ingest_many([late], 0.0))
        assert certify() == json.dumps(expected, sort_keys=True)
        assert store.request_inputs("digits", ["r-late"])  # committed while the run held its snapshot
        assert json.loads(certify())["waiting_for_verdict"] == expected["waiting_for_verdict"] + 1
