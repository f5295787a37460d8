"""``auditstream bench faults``: the fault suite on real processes (issue 13, docs/RELIABILITY).

Each scenario starts its own embedded broker and ``auditstream serve`` processes (the built-in
CNN of ``bench serve``), paces ``--requests`` requests at ``--rate-per-s`` while the fault
happens, then stops the servers and reads the predictions topic to its end. ``--bootstrap``
runs the scenarios that leave the broker alone (all but ``broker_restart``, ``partition`` and
``output_outage``) against a Kafka cluster instead, on topics of the run's own prefix that are
deleted afterwards: the soak on the embedded broker measures Tansu's in-memory engine as much as
the consumers. One JSON object, keyed by scenario, each with:

- ``sent`` (requests the broker acknowledged; a send refused while the broker was down is not
  owed an answer), ``answered``, ``lost`` (acknowledged, never answered, and below its
  partition's committed offset at the end: skipped for good), ``unanswered`` (never answered but
  still queued at or above the committed offset: the group fell behind or stalled), ``duplicates`` and
  ``non_identical_duplicates`` (copies of an answer, and copies whose bytes differ: there must be
  none -- a redelivered request is answered byte for byte the same);
- ``crashes``: serve processes that exited without being told to;
- ``recovery_s``: the longest any acknowledged request of the fault phase waited for its answer
  (a request on a killed consumer's partition waits for the group to notice and reassign).

Scenarios:

``kill9``            3 consumers; every ``--kill-every-s`` one of them gets ``kill -9`` and a new one
                     takes its place.
``broker_restart``   the broker (durable: Tansu's S3 engine, ``broker start --durable``) gets
                     ``kill -9`` mid-run and is started again on its port 2 s later.
``rolling_restart``  3 consumers, each stopped with SIGTERM and replaced in turn, the next only
                     once the group has settled again (read from the consumers' assigned-partitions
                     gauges). Adds ``settled_s``, the time each replacement took to settle.
``partition``        3 consumers; one of them (its consumer and its producer) is cut off from the
                     broker by :mod:`stack.fault_proxy` for twice the session timeout (longer,
                     at most 4x, until its partitions have moved to the others), then its network
                     heals. Adds ``cut_s`` (how long it was), ``moved_after_s`` and
                     ``caught_up_s`` (from the heal until every request sent before it was answered).
``output_outage``    3 consumers; every serving producer is cut off for ``--outage-s`` while the
                     consumers still read. Adds ``commits_during_outage``: partitions whose
                     committed offset moved while no output could be acknowledged (must be 0:
                     a commit never passes a batch whose outputs were not all acknowledged).
``fresh_group``      ``--runs`` times: 3 new consumers of a new group; ``assigned_s`` lists how
                     long each run took from start to every partition assigned (the goal: within
                     30 s, every run); no requests.

``slow_0.8x``,       inference slowed so that one full batch takes 0.8× / 1.5× the max poll
``slow_1.5x``        interval (stack/faults_slow.py). Adds ``rebalances`` (must be 0 / at most 1),
                     ``first_batch_factor``, ``batch_limit``.
``monitor_kill9``    ``auditstream monitor`` killed with ``kill -9`` every ``--kill-every-s`` during audit
                     ingest while an auditor decides items, each kill aimed at the outbox's crash
                     window (stack/faults_monitor.py): items stored once, verdicts and decisions
                     published once. Adds ``kills_round_open``, ``kills_in_window``, ``rows_in_window``.
``soak``             70% of the measured maximum rate for ``--soak-s`` (stack/faults_soak.py): lag,
                     resident memory growth after warm-up, errors in the logs. Not part of ``all``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from auditstream import topics as T
from auditstream.cli_args import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, check_fields
from auditstream.errors import BrokerUnavailable, ConfigError, DeliveryFailed
from auditstream.kafka import ensure_model_topics, kafka_python_config, make_consumer, make_producer
from auditstream.registry import ModelRegistry, RegisteredModel
from auditstream.settings import LOG_LEVELS, Settings
from auditstream.wire import InferenceRequest
from serving.loadgen import inputs_for
from serving.app import group_id as serve_group_id
from stack import broker as embedded
from stack.fault_proxy import FaultProxy
from stack.faults_monitor import monitor_kill9
from stack.faults_soak import soak, soak_passed
from stack.faults_slow import SESSION_TIMEOUT_MS, SLOW_LAYERS, slow_inference, slow_passed
from stack.serve_bench import answers_of, bench_card, bench_cnn_onnx, serve_process

SCENARIOS = ("kill9", "broker_restart", "rolling_restart", "partition", "output_outage", "fresh_group", "slow_0.8x",
             "slow_1.5x", "monitor_kill9", "soak")
NOT_IN_ALL = ("soak",)  # 30 minutes: asked for by name
SLOW = {"slow_0.8x": 0.8, "slow_1.5x": 1.5}  # stack/faults_slow.py: full-batch time / max poll interval
PROXIED = ("partition", "output_outage")  # clients reach the broker through stack.fault_proxy
BROKER_CONTROLLED = ("broker_restart", *PROXIED)  # need the bench's own broker (killed, or behind the proxy)
CONSUMERS = 3


@dataclass(frozen=True)
class FaultsArgs:
    scenario: str = field(default="all", metadata={"help": f"one of {', '.join(SCENARIOS)}, or all (all but "
                                                            f"{', '.join(NOT_IN_ALL)})"})
    requests: int = field(default=3000, metadata={"check": COUNT, "help": "requests per scenario"})
    rate_per_s: float = field(default=150.0, metadata={"check": POSITIVE,
                                                       "help": "request rate while the fault happens"})
    kill_every_s: float = field(default=10.0, metadata={"check": POSITIVE, "help": "kill9: seconds between two kills"})
    outage_s: float = field(default=30.0, metadata={"check": POSITIVE,
                                                    "help": "output_outage: seconds the output side is cut off"})
    runs: int = field(default=20, metadata={"check": COUNT, "help": "fresh_group: groups started one after another"})
    soak_s: float = field(default=1800.0, metadata={"check": POSITIVE, "help": "soak: seconds at the soak rate"})
    soak_share: float = field(default=0.7, metadata={"check": FRACTION,
                                                     "help": "soak: share of the measured maximum rate"})
    soak_warmup_s: float = field(default=120.0, metadata={"check": NON_NEGATIVE,
                                                          "help": "soak: seconds of warm-up before memory is compared"})
    poll_interval_s: float = field(default=40.0, metadata={"check": POSITIVE, "help": "slow_*: the consumers' max "
                                                           "poll interval (>= 40 s with kafka-python, >= 6 s with "
                                                           "confluent)"})
    log_dir: str = field(default="", metadata={"help": "keep the broker's and consumers' logs here (default: dropped)"})
    serve_log_level: str = field(default="WARNING", metadata={"help": "the consumers' log level, one of "
                                                                      f"{', '.join(LOG_LEVELS)} (DEBUG logs every "
                                                                      "assignment and commit)"})
    bootstrap: str = field(default="", metadata={
        "help": "run against this Kafka cluster (host:port,...; security settings from the AUDITSTREAM_KAFKA_* "
                "environment, as for serve) instead of a private embedded broker: a soak that measures the "
                "consumers, not Tansu's in-memory engine. Each scenario gets its own topics (deleted after); "
                f"{', '.join(BROKER_CONTROLLED)} need the embedded broker and are left out of all"})
    json: bool = field(default=False, metadata={"help": "print only the final JSON line on stdout (progress on stderr)"})

    def __post_init__(self) -> None:
        check_fields(self)  # one line naming the option, before any broker or consumer is started
        # Any case, as the consumers' settings take it; else refused only when the first consumer started.
        if self.serve_log_level.upper() not in LOG_LEVELS:
            raise ConfigError("--serve-log-level", self.serve_log_level, f"one of {', '.join(LOG_LEVELS)}")
        if self.scenario != "all" and self.scenario not in SCENARIOS:
            raise ValueError(f"scenario {self.scenario!r}: expected one of {', '.join(SCENARIOS)} or all")
        if self.bootstrap and self.scenario in BROKER_CONTROLLED:
            raise ValueError(f"scenario {self.scenario!r} kills the broker or cuts its network: it runs on the bench's "
                             "own embedded broker only (drop --bootstrap)")
        if self.poll_interval_s * 1000 < SESSION_TIMEOUT_MS:
            raise ValueError(f"poll_interval_s={self.poll_interval_s}: at least the session timeout, {SESSION_TIMEOUT_MS / 1000:g} s")


class Run:
    """One scenario's broker, serve processes, paced requests and the answers seen arriving."""

    def __init__(self, settings: Settings, model: RegisteredModel, log_dir: Path, options: embedded.BrokerOptions,
                 proxied: bool = False, serve_log_level: str = "WARNING", external_bootstrap: str = "") -> None:
        self.options, self.log_dir, self.model, self.serve_log_level = options, log_dir, model, serve_log_level
        self.proxy: FaultProxy | None = None
        self.broker: embedded.BrokerInfo | None = None
        if external_bootstrap:  # someone else's cluster: only this run's topics are ours
            settings = dataclasses.replace(settings, bootstrap_servers=external_bootstrap)
            ensure_model_topics(settings, [model.card.name])
        elif proxied:
            self.proxy = FaultProxy(embedded.free_port(), embedded.free_port())
            self.broker = embedded.start(settings, models=[model.card.name], options=options,
                                         port=self.proxy.listen_port, behind_port=self.proxy.upstream_port)
        else:
            self.broker = embedded.start(settings, models=[model.card.name], options=options)
        if self.broker is not None:
            settings = dataclasses.replace(settings, bootstrap_servers=self.broker.bootstrap)
        self.settings = settings
        self.topic_prefix = settings.topic_prefix  # unique to the run; fresh_group's topics extend it
        self.servers: list[subprocess.Popen] = []
        self.stopped: set[int] = set()  # pids this run killed or stopped on purpose
        self.acked: set[str] = set()
        self.placed: dict[str, tuple[int, int]] = {}  # acknowledged request id -> (partition, offset)
        self.arrivals: dict[str, float] = {}  # request id -> when its first answer was seen
        self.sent_at: dict[str, float] = {}  # fault-phase request id -> when it was sent
        self.extra: dict[str, Any] = {}  # the scenario's own figures
        self.metrics_ports: dict[int, int] = {}  # serve pid -> its /metrics port
        self._admin: Any = None
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True, name="faults-reader")
        self._reader.start()

    def start_server(self) -> subprocess.Popen:
        """One more ``auditstream serve``, with its own /metrics port (its assignment is read there)."""
        port = embedded.free_port()
        settings = dataclasses.replace(self.settings, metrics_port=port)
        proc = serve_process(settings, self.model.card, self.log_dir / f"serve-{len(self.servers)}.log",
                             self.serve_log_level)
        self.metrics_ports[proc.pid] = port
        self.servers.append(proc)
        return proc

    def log_tail(self, proc: subprocess.Popen, lines: int) -> list[str]:
        """The last ``lines`` lines of a server's log."""
        path = self.log_dir / f"serve-{self.servers.index(proc)}.log"
        try:
            return path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as e:
            return [f"(no log: {e})"]

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        self.stopped.add(proc.pid)
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def produce(self, count: int, rate_per_s: float, prefix: str) -> None:
        """Pace ``count`` requests; keep the ids the broker acknowledged."""
        producer = make_producer(self.settings, client_id="faults-bench")
        inputs, started, chunk = inputs_for(self.model.card, "random"), time.monotonic(), []
        try:
            for i in range(count):
                delay = started + i / rate_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                request = InferenceRequest(f"{prefix}-{i}", self.model.card.name, next(inputs), time.time())
                if prefix != "warm":
                    self.sent_at[request.request_id] = time.monotonic()
                chunk.append((request.request_id, producer.send(self.settings.request_topic(self.model.card.name),
                                                                request.key, request.to_bytes())))
                if len(chunk) >= 20 or i == count - 1:
                    try:
                        producer.flush(30)
                    except DeliveryFailed:
                        pass  # the broker was down: those sends are not owed an answer
                    for rid, d in chunk:
                        if d.done and d.error is None:
                            self.acked.add(rid)
                            self.placed[rid] = (d.partition, d.offset)
                    chunk = []
        finally:
            producer.close()

    def wait_answered(self, ids: set[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ids <= self.arrivals.keys():
                return True
            time.sleep(0.2)
        return False

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                consumer = make_consumer(self.settings, f"faults-reader-{uuid.uuid4().hex[:6]}",
                                         [self.settings.topic(T.PREDICTIONS)])
                try:
                    while not self._stop.is_set():
                        for r in consumer.poll(2000, 200):
                            self.arrivals.setdefault(json.loads(r.value)["request_id"], time.monotonic())
                finally:
                    consumer.close()
            except Exception:  # noqa: BLE001 - the broker is down (broker_restart): read again when it is back
                time.sleep(0.5)

    def outcome(self) -> dict[str, Any]:
        for proc in self.servers:
            if proc.poll() is None:
                self.kill(proc, signal.SIGTERM)  # each checkpoints what it answered
        crashes = sum(1 for p in self.servers if p.pid not in self.stopped and p.returncode not in (0, None))
        answers = answers_of(self.settings, self.acked)
        missing = self.acked - answers.keys()
        # Unanswered below its partition's committed offset: skipped, lost for good. At or above:
        # still queued (the group fell behind or stalled), a recovery failure, not a loss.
        committed = self.committed() if missing else {}
        topic = self.settings.request_topic(self.model.card.name)
        skipped = sorted(self.placed[r] for r in missing if self.placed[r][1] < committed.get((topic, self.placed[r][0]), 0))
        if skipped:
            self.extra["lost_at"] = skipped[:10]  # (partition, offset) of the first few, for the logs
        duplicates = sum(len(v) - 1 for v in answers.values())
        return {"sent": len(self.acked), "answered": len(self.acked) - len(missing), "lost": len(skipped),
                "unanswered": len(missing) - len(skipped), "duplicates": duplicates,
                "non_identical_duplicates": sum(len(set(v)) - 1 for v in answers.values()), "crashes": crashes,
                "recovery_s": self.recovery_s(), **self.extra}

    def owned(self, procs: list[subprocess.Popen]) -> list[int]:
        """How many request partitions each of ``procs`` owns now (its assigned-partitions gauge)."""
        return [_assigned_partitions(self.metrics_ports[p.pid]) for p in procs]

    def settled(self, procs: list[subprocess.Popen], timeout_s: float) -> float | None:
        """Seconds until each of ``procs`` owns partitions and together they own them all (None:
        not within ``timeout_s``)."""
        started = time.monotonic()
        while time.monotonic() < started + timeout_s:
            if any(p.poll() is not None for p in procs):
                return None  # a member exited: it will never own anything (the caller reports it)
            owned = self.owned(procs)
            if all(owned) and sum(owned) == self.settings.partitions:
                return round(time.monotonic() - started, 2)
            time.sleep(0.25)
        return None

    def caught_up_s(self, since: float) -> float | None:
        """From ``since`` until every acknowledged request sent before it was answered."""
        before = [self.arrivals.get(r, float("inf")) for r, t in self.sent_at.items() if t < since and r in self.acked]
        last = max(before, default=since)
        return round(max(0.0, last - since), 2) if last != float("inf") else None  # None: never

    def committed(self) -> dict[tuple[str, int], int]:
        """The serving group's committed offsets now."""
        from kafka import KafkaAdminClient

        if self._admin is None:
            self._admin = KafkaAdminClient(bootstrap_servers=self.settings.bootstrap_servers, client_id="faults-admin",
                                           **kafka_python_config(self.settings))
        group = serve_group_id(self.settings, self.model.card.name)
        offsets = self._admin.list_group_offsets({group: None})[group]
        return {(tp.topic, tp.partition): om.offset for tp, om in offsets.items() if om.offset >= 0}

    def recovery_s(self) -> float:
        """The longest any acknowledged request of the fault phase waited for its answer."""
        waits = [self.arrivals[r] - t for r, t in self.sent_at.items() if r in self.acked and r in self.arrivals]
        return round(max(waits, default=0.0), 2)

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=30)
        if self._admin is not None:
            self._admin.close()
        for proc in self.servers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.broker is None:
            self._delete_topics()
        else:
            embedded.stop(self.settings, storage=True)
        if self.proxy is not None:
            self.proxy.close()

    def _delete_topics(self) -> None:
        """Leave the external cluster as it was: this run's topics (a prefix of its own) go."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.settings.bootstrap_servers, client_id="faults-admin",
                                     **kafka_python_config(self.settings))
            try:
                ours = [t for t in admin.list_topics() if t.startswith(self.topic_prefix)]
                if ours:
                    admin.delete_topics(ours)
            finally:
                admin.close()
        except KafkaError as e:  # the outcome stands; the warning says what is left behind
            print(f"warning: could not delete the topics {self.topic_prefix}*: {e}", file=sys.stderr)


def _warm_up(run: Run, say: Callable[[str], None]) -> None:
    if run.settled(run.servers, 120) is None:
        raise RuntimeError(f"the consumers never shared the partitions out; see the logs in {run.log_dir}")
    run.produce(2 * run.settings.max_batch_size, 200.0, "warm")
    if not run.wait_answered(set(run.acked), 120):
        raise RuntimeError("the consumers never answered the warm-up requests; see the logs in " + str(run.log_dir))
    say(f"  {len(run.servers)} consumer(s) answering")


def _consumers_under_load(run: Run, args: FaultsArgs, say: Callable[[str], None], prefix: str) -> threading.Thread:
    """:data:`CONSUMERS` consumers, warmed up, and a running feeder of ``--requests`` at ``--rate-per-s``."""
    for _ in range(CONSUMERS):
        run.start_server()
    _warm_up(run, say)
    feeder = threading.Thread(target=run.produce, args=(args.requests, args.rate_per_s, prefix))
    feeder.start()
    return feeder


def kill9(run: Run, args: FaultsArgs, say: Callable[[str], None]) -> None:
    feeder = _consumers_under_load(run, args, say, "kill9")
    while feeder.is_alive():
        feeder.join(timeout=args.kill_every_s)
        if feeder.is_alive():
            victim = next(p for p in reversed(run.servers) if p.poll() is None)
            run.kill(victim)
            run.start_server()
            say(f"  kill -9 of pid {victim.pid}, a new consumer started")
    run.wait_answered(set(run.acked), 120)


def broker_restart(run: Run, args: FaultsArgs, say: Callable[[str], None]) -> None:
    run.start_server()
    _warm_up(run, say)
    feeder = threading.Thread(target=run.produce, args=(args.requests, args.rate_per_s, "restart"))
    feeder.start()
    time.sleep(min(5.0, args.requests / args.rate_per_s / 3))
    assert run.broker is not None  # FaultsArgs refuses broker_restart with --bootstrap
    os.kill(run.broker.pid, signal.SIGKILL)
    os.waitpid(run.broker.pid, 0)
    say("  broker killed with kill -9")
    time.sleep(2.0)
    run.broker = embedded.start(dataclasses.replace(run.settings, bootstrap_servers=""), models=[run.model.card.name],
                                options=run.options)
    say(f"  broker started again on port {run.broker.port}")
    feeder.join()
    run.wait_answered(set(run.acked), 120)


def rolling_restart(run: Run, args: FaultsArgs, say: Callable[[str], None]) -> None:
    """Replace each consumer in turn, the next only once the group has settled again (every live
    member owns partitions and together they own all: what a readiness check would wait for)."""
    feeder = _consumers_under_load(run, args, say, "rolling")
    settled: list[float | None] = []
    for old in list(run.servers):
        run.kill(old, signal.SIGTERM)  # drains its batch, commits, leaves the group
        run.start_server()
        settled.append(run.settled([p for p in run.servers if p.poll() is None], 60))
        say(f"  consumer pid {old.pid} replaced; the group settled after {settled[-1]} s")
    feeder.join()
    run.wait_answered(set(run.acked), 120)
    run.extra = {"settled_s": settled}


def partition(run: Run, args: FaultsArgs, say: Callable[[str], None]) -> None:
    assert run.proxy is not None
    feeder = _consumers_under_load(run, args, say, "partition")
    time.sleep(min(3.0, args.requests / args.rate_per_s / 4))
    victim, session_s = run.servers[0], run.settings.session_timeout_ms / 1000
    tag = f"-{victim.pid}."  # in both of its client ids (serving/app.py names them)
    run.proxy.cut(lambda client_id: tag in client_id)
    cut_at, moved_after = time.monotonic(), None
    say(f"  consumer pid {victim.pid} cut off from the broker for at least {2 * session_s:g} s")
    # The hand-over takes the session timeout (the broker's failure detection) plus a rebalance
    # (Tansu holds the JoinGroup for about half a session timeout); on a loaded machine that can
    # pass 2x the session timeout. Healing before the partitions moved would test nothing, so the
    # cut lasts 2x the session timeout, or until they moved, at most 4x; cut_s says how long.
    while time.monotonic() < cut_at + 4 * session_s:
        if moved_after is None and sum(run.owned(run.servers[1:])) == run.settings.partitions:
            moved_after = round(time.monotonic() - cut_at, 2)  # the others own every partition
            say(f"  its partitions moved to the others after {moved_after:g} s")
        if moved_after is not None and time.monotonic() >= cut_at + 2 * session_s:
            break
        time.sleep(0.25)
    run.proxy.heal()
    healed = time.monotonic()
    cut_s = round(healed - cut_at, 2)
    say(f"  its network healed after {cut_s:g} s")
    feeder.join()
    run.wait_answered(set(run.acked), 120)
    run.extra = {"cut_s": cut_s, "moved_after_s": moved_after, "caught_up_s": run.caught_up_s(healed)}


def output_outage(run: Run, args: FaultsArgs, say: Callable[[str], None]) -> None:
    assert run.proxy is not None
    feeder = _consumers_under_load(run, args, say, "outage")
    time.sleep(min(3.0, args.requests / args.rate_per_s / 4))
    run.proxy.cut(lambda client_id: client_id.endswith(".producer"))
    say(f"  every serving producer cut off for {args.outage_s:g} s")
    # A batch acknowledged just before the cut may still commit; after that nothing may.
    time.sleep(2.0)
    baseline, moved = run.committed(), set()
    if not baseline:
        raise RuntimeError("the serving group's committed offsets could not be read: the outage check would prove nothing")
    end = time.monotonic() + args.outage_s - 2.0
    while time.monotonic() < end:
        time.sleep(1.0)
        moved |= {tp for tp, offset in run.committed().items() if offset > baseline.get(tp, -1)}
    run.proxy.heal()
    healed = time.monotonic()
    say("  the output side is back")
    feeder.join()
    run.wait_answered(set(run.acked), 180)
    run.extra = {"outage_s": args.outage_s, "commits_during_outage": len(moved), "caught_up_s": run.caught_up_s(healed)}


def fresh_group(run: Run, args: FaultsArgs, say: Callable[[str], None]) -> None:
    """Time from starting 3 consumers of a new group to all its partitions assigned, per run,
    read from each consumer's ``auditstream_serve_assigned_partitions`` gauge (Tansu's
    DescribeGroups lists no members, so the broker cannot say)."""
    times: list[float | None] = []
    run.serve_log_level = "INFO"  # joins, assignments and revokes: what a run that never settles did
    for i in range(args.runs):
        prefix = f"{run.settings.topic_prefix}g{i}"  # a new request topic and a new group
        run.settings = dataclasses.replace(run.settings, topic_prefix=prefix)
        # The topics exist before the group forms, as after `auditstream broker start`: three
        # members creating them at once is a different race from the one timed here.
        ensure_model_topics(run.settings, [run.model.card.name])
        started = time.monotonic()
        members = [run.start_server() for _ in range(CONSUMERS)]
        settled = run.settled(members, 120)
        times.append(None if settled is None else round(time.monotonic() - started, 2))
        if settled is None:  # what each member owned and said when the bench gave up, for the logs
            say(f"  run {i + 1}/{args.runs}: not every partition assigned (gave up within 120 s): partitions "
                f"owned {run.owned(members)} of {run.settings.partitions}, exit codes {[p.poll() for p in members]}")
            for proc in members:
                say(f"    pid {proc.pid}: " + " | ".join(run.log_tail(proc, 6)))
        else:
            say(f"  run {i + 1}/{args.runs}: every partition assigned after {times[-1]} s")
        for proc in members:
            run.kill(proc, signal.SIGTERM)
    run.extra = {"runs": len(times), "assigned_s": times,
                 "within_30_s": sum(t is not None and t <= 30 for t in times)}


def _assigned_partitions(metrics_port: int) -> int:
    """A serve process's ``auditstream_serve_assigned_partitions`` (0 until its /metrics answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("auditstream_serve_assigned_partitions{"))


# A runner that returns its own outcome (monitor_kill9: audit items and verdicts, not answers) skips Run.outcome.
RUNNERS: dict[str, Callable[[Run, FaultsArgs, Callable[[str], None]], dict[str, Any] | None]] = {
    "kill9": kill9, "broker_restart": broker_restart, "rolling_restart": rolling_restart, "partition": partition,
    "output_outage": output_outage, "fresh_group": fresh_group,
    **{name: slow_inference(factor) for name, factor in SLOW.items()}, "monitor_kill9": monitor_kill9,
    "soak": soak}


def passed(outcome: dict[str, Any]) -> bool:
    """Nothing lost, no answer duplicated differently, no crash; and the scenario's own goal."""
    if "error" in outcome:  # the scenario could not be run to its end
        return False
    return (outcome["lost"] == 0 and outcome["unanswered"] == 0 and outcome["non_identical_duplicates"] == 0
            and outcome["crashes"] == 0
            and outcome.get("commits_during_outage", 0) == 0
            and outcome.get("within_30_s", 0) == outcome.get("runs", 0)
            and ("factor" not in outcome or slow_passed(outcome))
            and ("soak_s" not in outcome or soak_passed(outcome))
            and all(outcome.get(k, 0) == 0 for k in ("verdict_duplicates", "verdicts_unpublished", "decision_duplicates",
                                                     "decisions_unpublished")))


def run_faults(base: Settings, args: FaultsArgs, out: TextIO) -> dict[str, Any]:
    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    results: dict[str, Any] = {}
    skip = NOT_IN_ALL + (BROKER_CONTROLLED if args.bootstrap else ())
    if args.bootstrap and args.scenario == "all":
        say(f"against {args.bootstrap}: {', '.join(BROKER_CONTROLLED)} left out (they need the embedded broker)")
    for name in [s for s in SCENARIOS if s not in skip] if args.scenario == "all" else (args.scenario,):
        with tempfile.TemporaryDirectory(prefix=f"auditstream-faults-{name}-") as tmp:
            registry = ModelRegistry(Path(tmp) / "models")
            onnx_bytes = bench_cnn_onnx(layers=SLOW_LAYERS) if name in SLOW else bench_cnn_onnx()
            # the slow model's threshold from fewer samples: each takes tens of milliseconds
            model = registry.publish(bench_card(onnx_bytes, samples=32 if name in SLOW else 256), onnx_bytes)
            logs = Path(args.log_dir) / name if args.log_dir else Path(tmp) / "logs"
            settings = dataclasses.replace(base, bootstrap_servers="", state_dir=logs / "broker",
                                           models_dir=registry.root, topic_prefix=f"faults{uuid.uuid4().hex[:6]}",
                                           partitions=12)
            say(f"scenario {name}: " + (f"{args.runs} runs" if name == "fresh_group" else
                                        f"{args.requests} requests at {args.rate_per_s:g}/s"))
            run = Run(settings, model, logs, embedded.BrokerOptions(durable=name == "broker_restart"),
                      proxied=name in PROXIED, serve_log_level=args.serve_log_level, external_bootstrap=args.bootstrap)
            try:
                own = RUNNERS[name](run, args, say)
                results[name] = own if own is not None else run.outcome()
            except BrokerUnavailable as e:
                # The broker could not serve the scenario to its end (the durable embedded broker
                # can crawl after its restart: docs/serving.md, "Fault suite"): that scenario
                # failed, and the suite goes on to the next one with a fresh broker.
                results[name] = {"error": str(e), "acked": len(run.acked), "answered_seen": len(run.arrivals)}
            finally:
                run.close()
            say(f"  {results[name]}")
    return results
