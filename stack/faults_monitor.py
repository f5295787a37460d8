"""``bench faults`` scenario ``monitor_kill9``: the monitor killed with ``kill -9`` during audit
ingest and started again (docs/RELIABILITY 1 and 9, issue 13 scenario 8): every audit item exactly
once in the store, every verdict published exactly once.

One ``auditstream monitor`` process on a temporary SQLite store; ``--requests`` audit items (route
HUMAN) are paced onto the audit topic at ``--rate-per-s`` while an auditor thread in this process
claims and decides items as they arrive (so the outbox is being published while the kill hits).
Every ``--kill-every-s`` the monitor gets ``kill -9`` and a new one is started at once (monitors
run with a 6 s leader lease, :data:`MONITOR_OPTIONS`, so each successor leads before the next
kill). The kill
is aimed at the publisher's crash window (store/outbox.py): it waits (up to half of
``--kill-every-s``) for a publishing round to be open in the store and kills at once. After each
kill the store and the topics say where it landed: ``kills_round_open`` (a round was in flight) and ``kills_in_window`` (some of that
round's records were already on the topics: an at-least-once publisher would send them again);
``rows_in_window`` counts those records. At the end
the auditor decides what is left, the last monitor publishes its outbox and stops, and the
verdicts and decisions topics are read to their end. Result fields (the common ones read as: an
audit item is "answered" when it is in the store):

- ``sent``, ``answered`` (items stored), ``lost`` (sent, not stored), ``duplicates`` (store rows
  beyond one per request id), ``crashes`` (monitors that exited without being killed);
- ``verdicts`` (recorded in the store), ``verdicts_published`` (distinct verdict ids on the
  topic), ``verdicts_unpublished``, ``verdict_duplicates`` (copies beyond the first) and
  ``non_identical_duplicates`` (copies whose bytes differ); the same for ``decisions``;
- ``kills``, ``kills_round_open``, ``kills_in_window``, ``rows_in_window``; ``recovery_s``: the
  longest an item waited from its send to being stored.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from auditstream import topics as T
from auditstream.kafka import ensure_topics, make_producer, make_topic_log, read_to_end
from auditstream.wire import AuditItem, Prediction, Route, Verdict

if TYPE_CHECKING:
    from stack.faults_bench import FaultsArgs, Run


# A short leader lease (it must exceed the flush timeout + the outbox interval), so the monitor
# started after a kill leads, and publishes, before the next kill: at the default 45 s lease a
# monitor killed every 10 s has no successor leading until the kills stop, and only the first
# kill could meet a publishing round. The flush timeout is also the outbox producer's delivery
# timeout, so a round left open is resolved 10 s (5 s + the 5 s send window) after it started.
MONITOR_OPTIONS = ("--leader-lease-s", "6", "--flush-timeout-s", "5")


def audit_item(request_id: str, now_s: float) -> AuditItem:
    """A deferred (HUMAN) audit item as ``auditstream serve`` would send it."""
    prediction = Prediction(request_id=request_id, model="bench-cnn", model_version="0", task="classification",
                            output="3", confidence=0.4, route=Route.HUMAN, reason="below threshold",
                            qc_inclusion_prob=1.0, created_at_s=now_s)
    return AuditItem(prediction, np.zeros((1, 28, 28), np.float32))


class Monitors:
    """The monitor process of the run, killed and replaced on demand."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.procs: list[subprocess.Popen] = []
        self.killed: set[int] = set()  # pids killed or stopped on purpose

    def start(self) -> subprocess.Popen:
        env = {**os.environ, **dataclasses.replace(self.run.settings, log_level="INFO").to_env()}
        log = open(self.run.log_dir / f"monitor-{len(self.procs)}.log", "ab")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "auditstream.cli", "monitor", *MONITOR_OPTIONS], env=env,
                                           stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        log.close()
        return self.procs[-1]

    def kill9(self) -> None:
        proc = self.procs[-1]
        self.killed.add(proc.pid)
        proc.kill()
        proc.wait(timeout=60)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.killed.add(proc.pid)  # told to stop
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)

    def crashes(self) -> int:
        return sum(1 for p in self.procs if p.pid not in self.killed and p.returncode not in (0, None))


def monitor_kill9(run: Run, args: FaultsArgs, say: Callable[[str], None]) -> dict[str, Any]:
    from store import open_store

    run.settings = dataclasses.replace(run.settings, store_url=f"sqlite:///{run.log_dir / 'audit.db'}")
    run.log_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(run.settings.store_url, create=True)
    auditor = store.accounts.add_user("bench-auditor", f"pw-{uuid.uuid4().hex}", "auditor")
    ensure_topics(run.settings, [run.settings.topic(t) for t in (T.AUDIT, T.PREDICTIONS, T.VERDICTS, T.DECISIONS,
                                                                  T.DEAD_LETTER, T.CONTROL)],
                  compacted=(run.settings.topic(T.CONTROL),))
    monitors = Monitors(run)
    monitors.start()
    sent_at: dict[str, float] = {}
    stored_at: dict[str, float] = {}
    stop_auditing = threading.Event()

    def audit() -> None:  # an auditor deciding items as they arrive: verdicts flow while the kills hit
        while not stop_auditing.is_set():
            claim = store.claim(auditor, 60, time.time())
            if claim is None:
                time.sleep(0.05)
                continue
            store.record_verdict(store.new_verdict_id(), claim.item_id, auditor, "accept", None, time.time())

    def feed() -> None:
        producer, started = make_producer(run.settings, client_id="faults-bench"), time.monotonic()
        try:
            for i in range(args.requests):
                delay = started + i / args.rate_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                item = audit_item(f"audit-{i}", time.time())
                sent_at[item.prediction.request_id] = time.monotonic()
                producer.send(run.settings.topic(T.AUDIT), item.prediction.request_id.encode(), item.to_bytes())
                if i % 20 == 19:
                    producer.flush(30)
            producer.flush(30)
        finally:
            producer.close()

    def watch_store() -> None:  # when each item appeared in the store (for recovery_s)
        while not stop_auditing.is_set():
            for item in store.items(limit=10**9):
                stored_at.setdefault(item.request_id, time.monotonic())
            time.sleep(0.5)

    threads = [threading.Thread(target=f, daemon=True) for f in (audit, watch_store)]
    for t in threads:
        t.start()
    feeder = threading.Thread(target=feed)
    feeder.start()
    kills, landed = 0, Counter()
    outputs = [run.settings.topic(T.VERDICTS), run.settings.topic(T.DECISIONS)]
    topic_log = make_topic_log(run.settings)
    try:
        while feeder.is_alive():
            feeder.join(timeout=args.kill_every_s)
            if feeder.is_alive():
                _wait_for_the_window(store, args.kill_every_s / 2)
                monitors.kill9()
                where = _where_the_kill_landed(store, topic_log, run.settings, outputs)
                landed.update(where)
                monitors.start()
                kills += 1
                say(f"  kill -9 of the monitor during ingest ({len(stored_at)} items stored, {where['round_open']} round "
                    f"open, {where['rows_in_window']} of its records already on the topics), a new one started")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (len(store.items(limit=10**9)) < args.requests or store.queue_depth()
                                               or store.pending_outbox(1)):
            time.sleep(0.5)
        time.sleep(1.0)
        stop_auditing.set()
        for t in threads:
            t.join(timeout=30)
        monitors.stop()
        for item in store.items(limit=10**9):
            stored_at.setdefault(item.request_id, time.monotonic())
        return {**_store_figures(store, args.requests), "kills": kills, "kills_round_open": landed["round_open"],
                "kills_in_window": landed["in_window"], "rows_in_window": landed["rows_in_window"],
                "crashes": monitors.crashes(),
                "recovery_s": round(max((stored_at[r] - t for r, t in sent_at.items() if r in stored_at), default=0.0), 2),
                **_published_figures(run, store)}
    finally:
        stop_auditing.set()
        for proc in monitors.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        topic_log.close()
        store.close()


def _wait_for_the_window(store: Any, wait_s: float) -> None:
    """Return as soon as a publishing round is open in the store (claimed, not yet marked), or
    after ``wait_s``. Killing at once: a round is open for the few milliseconds of its send and
    flush, and a first version that went on to watch the topics' end offsets for its records
    killed after the mark in each of its first three kills (no round open)."""
    deadline = time.monotonic() + wait_s
    while not store.open_outbox_rounds() and time.monotonic() < deadline:
        time.sleep(0.001)


def _where_the_kill_landed(store: Any, topic_log: Any, settings: Any, outputs: list[str]) -> Counter:
    """After the kill: was a round left open, and how many of its records had reached the topics?"""
    rounds = store.open_outbox_rounds()
    where = Counter(round_open=int(bool(rounds)), in_window=0, rows_in_window=0)
    for left in rounds:
        written = {(r.topic, r.key, r.value) for r in topic_log.read_from(left.positions, outputs, 60.0)}
        on_topics = sum((settings.topic(row.topic), row.key, row.value) in written for row in left.rows)
        where["rows_in_window"] += on_topics
        where["in_window"] = int(where["in_window"] or on_topics > 0)
    return where


def _store_figures(store: Any, sent: int) -> dict[str, Any]:
    per_request = Counter(item.request_id for item in store.items(limit=10**9))
    return {"sent": sent, "answered": len(per_request), "lost": sent - len(per_request), "unanswered": 0,
            "duplicates": sum(n - 1 for n in per_request.values())}


def _published_figures(run: Run, store: Any) -> dict[str, Any]:
    """Verdicts and decisions recorded in the store against their copies on the topics."""
    recorded = {v.verdict_id for v in store.verdicts()}
    figures: dict[str, Any] = {"verdicts": len(recorded), "decisions": len(recorded)}  # one per HUMAN verdict
    copies: dict[str, dict[str, list[bytes]]] = {}
    for topic in (T.VERDICTS, T.DECISIONS):
        by_key: dict[str, list[bytes]] = {}
        for record in read_to_end(run.settings, [run.settings.topic(topic)], timeout_s=120.0):
            ident = Verdict.from_bytes(record.value).verdict_id if topic == T.VERDICTS else _decision_id(record.value)
            by_key.setdefault(ident, []).append(record.value)
        copies[topic] = by_key
    for topic, name in ((T.VERDICTS, "verdicts"), (T.DECISIONS, "decisions")):
        by_key = copies[topic]
        figures[f"{name}_published"] = len(by_key)
        figures[f"{name}_unpublished"] = figures[name] - len(by_key)
        figures[f"{name[:-1]}_duplicates"] = sum(len(v) - 1 for v in by_key.values())
    figures["non_identical_duplicates"] = sum(len(set(v)) - 1 for by_key in copies.values() for v in by_key.values())
    return figures


def _decision_id(value: bytes) -> str:
    from auditstream.wire import Decision

    return Decision.from_bytes(value).request_id  # one decision per deferred request
