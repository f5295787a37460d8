"""``auditstream bench faults``: the fault suite on real processes (issue 13, docs/RELIABILITY).

Each scenario starts its own embedded broker and ``auditstream serve`` processes (the built-in
CNN of ``bench serve``), paces ``--requests`` requests at ``--rate-per-s`` while the fault
happens, then stops the servers and reads the predictions topic to its end. One JSON object,
keyed by scenario, each with:

- ``sent`` (requests the broker acknowledged; a send refused while the broker was down is not
  owed an answer), ``answered``, ``lost`` (acknowledged, never answered), ``duplicates`` and
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
``rolling_restart``  3 consumers, each stopped with SIGTERM and started again in turn, the next
                     only once the group answers again.

Not here yet (issue 13 lists them): a consumer cut off from the broker, the output side
unavailable, slowed inference, a fresh group's assignment time, the monitor killed during
ingest, the 30-minute soak.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from auditstream import topics as T
from auditstream.errors import DeliveryFailed
from auditstream.kafka import make_consumer, make_producer
from auditstream.registry import ModelRegistry, RegisteredModel
from auditstream.settings import Settings
from auditstream.wire import InferenceRequest
from serving.loadgen import inputs_for
from stack import broker as embedded
from stack.serve_bench import bench_card, bench_cnn_onnx, count_outcomes, serve_process

SCENARIOS = ("kill9", "broker_restart", "rolling_restart")
CONSUMERS = 3


@dataclass(frozen=True)
class FaultsArgs:
    scenario: str = field(default="all", metadata={"help": f"one of {', '.join(SCENARIOS)}, or all"})
    requests: int = field(default=3000, metadata={"help": "requests per scenario"})
    rate_per_s: float = field(default=150.0, metadata={"help": "request rate while the fault happens"})
    kill_every_s: float = field(default=10.0, metadata={"help": "kill9: seconds between two kills"})
    json: bool = field(default=False, metadata={"help": "print only the final JSON line on stdout (progress on stderr)"})

    def __post_init__(self) -> None:
        if self.scenario != "all" and self.scenario not in SCENARIOS:
            raise ValueError(f"scenario {self.scenario!r}: expected one of {', '.join(SCENARIOS)} or all")
        if self.requests < 1 or self.rate_per_s <= 0 or self.kill_every_s <= 0:
            raise ValueError("requests must be >= 1 and rate_per_s, kill_every_s > 0")


class Run:
    """One scenario's broker, serve processes, paced requests and the answers seen arriving."""

    def __init__(self, settings: Settings, model: RegisteredModel, log_dir: Path, options: embedded.BrokerOptions) -> None:
        self.options, self.log_dir, self.model = options, log_dir, model
        self.broker = embedded.start(settings, models=[model.card.name], options=options)
        self.settings = dataclasses.replace(settings, bootstrap_servers=self.broker.bootstrap)
        self.servers: list[subprocess.Popen] = []
        self.stopped: set[int] = set()  # pids this run killed or stopped on purpose
        self.acked: set[str] = set()
        self.arrivals: dict[str, float] = {}  # request id -> when its first answer was seen
        self.sent_at: dict[str, float] = {}  # fault-phase request id -> when it was sent
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True, name="faults-reader")
        self._reader.start()

    def start_server(self) -> subprocess.Popen:
        proc = serve_process(self.settings, self.model.card, self.log_dir / f"serve-{len(self.servers)}.log")
        self.servers.append(proc)
        return proc

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
                    self.acked.update(rid for rid, d in chunk if d.done and d.error is None)
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
                self.kill(proc, signal.SIGTERM)
        crashes = sum(1 for p in self.servers if p.pid not in self.stopped and p.returncode not in (0, None))
        lost, duplicates, non_identical = count_outcomes(self.settings, self.acked)
        return {"sent": len(self.acked), "answered": len(self.acked) - lost, "lost": lost, "duplicates": duplicates,
                "non_identical_duplicates": non_identical, "crashes": crashes, "recovery_s": self.recovery_s()}

    def recovery_s(self) -> float:
        """The longest any acknowledged request of the fault phase waited for its answer."""
        waits = [self.arrivals[r] - t for r, t in self.sent_at.items() if r in self.acked and r in self.arrivals]
        return round(max(waits, default=0.0), 2)

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=30)
        for proc in self.servers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        embedded.stop(self.settings, storage=True)


def _warm_up(run: Run, say: Callable[[str], None]) -> None:
    run.produce(2 * run.settings.max_batch_size, 200.0, "warm")
    if not run.wait_answered(set(run.acked), 120):
        raise RuntimeError("the consumers never answered the warm-up requests; see the logs in " + str(run.log_dir))
    say(f"  {len(run.servers)} consumer(s) answering")


def kill9(run: Run, args: FaultsArgs, say: Callable[[str], None]) -> None:
    for _ in range(CONSUMERS):
        run.start_server()
    _warm_up(run, say)
    feeder = threading.Thread(target=run.produce, args=(args.requests, args.rate_per_s, "kill9"))
    feeder.start()
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
    for _ in range(CONSUMERS):
        run.start_server()
    _warm_up(run, say)
    feeder = threading.Thread(target=run.produce, args=(args.requests, args.rate_per_s, "rolling"))
    feeder.start()
    for old in list(run.servers):
        run.kill(old, signal.SIGTERM)  # drains its batch, commits, leaves the group
        run.start_server()
        answered = len(run.arrivals)
        deadline = time.monotonic() + 60
        while len(run.arrivals) == answered and feeder.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)  # the group answers again before the next one goes
        say(f"  consumer pid {old.pid} restarted")
    feeder.join()
    run.wait_answered(set(run.acked), 120)


RUNNERS: dict[str, Callable[[Run, FaultsArgs, Callable[[str], None]], None]] = {
    "kill9": kill9, "broker_restart": broker_restart, "rolling_restart": rolling_restart}


def run_faults(base: Settings, args: FaultsArgs, out: TextIO) -> dict[str, Any]:
    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    results: dict[str, Any] = {}
    for name in SCENARIOS if args.scenario == "all" else (args.scenario,):
        with tempfile.TemporaryDirectory(prefix=f"auditstream-faults-{name}-") as tmp:
            registry = ModelRegistry(Path(tmp) / "models")
            onnx_bytes = bench_cnn_onnx()
            model = registry.publish(bench_card(onnx_bytes), onnx_bytes)
            settings = dataclasses.replace(base, bootstrap_servers="", state_dir=Path(tmp) / "state",
                                           models_dir=registry.root, topic_prefix=f"faults{uuid.uuid4().hex[:6]}",
                                           partitions=12)
            say(f"scenario {name}: {args.requests} requests at {args.rate_per_s:g}/s")
            run = Run(settings, model, Path(tmp) / "logs", embedded.BrokerOptions(durable=name == "broker_restart"))
            try:
                RUNNERS[name](run, args, say)
                results[name] = run.outcome()
            finally:
                run.close()
            say(f"  {results[name]}")
    return results
