"""The live demo (README's first command): mail sorting on embedded defaults.

``auditstream demo`` starts the embedded broker, puts the ``digits``, ``zip-reader``, ``detector``
and ``captioner`` models into the registry if it lacks them (the copies shipped in
``stack/demo_models/``, made by the project's own training commands; ``--retrain`` trains new
ones), starts one serving consumer per model, the monitor and the audit dashboard (with a demo
auditor account whose credentials it prints), then streams test-split envelopes, digits, parcel
labels and scenes of coloured shapes through the broker and shows, every few seconds, how many
were auto-sorted, deferred to humans and sampled for QC. Ctrl-C, SIGTERM or ``--duration-s`` stops
everything it started; a second Ctrl-C or SIGTERM while it stops is ignored, so the clean-up ends.
An embedded broker that ran before the demo is used and left running; the clean-up stops only the
broker process the demo launched itself. If the broker it runs on stops meanwhile, the demo stops
too, saying so in one line.

``--retrain-every N`` closes the loop live (stack/demo_loop.py): each model ``auditstream
retrain`` can retrain (digits, zip-reader) is retrained in a niced child process once N new
verdicts of it have arrived, the candidate answers in shadow, the promotion gate decides, and the
running consumers switch to a promoted version without a restart; the progress report shows per
model the version serving, its coverage and the candidate's state.

Each part runs as its own process, exactly as on a real deployment; their logs go to
``<state dir>/logs/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from auditstream.cli_args import (COUNT, COUNT_OR_ZERO, NICENESS, NON_NEGATIVE, PORT, POSITIVE, PROBABILITY, Range,
                                  add_dataclass_arguments, check_fields, dataclass_from_namespace)
from auditstream.settings import Settings
from auditstream.stop_signal import StopSignal

DEMO_MODELS = ("digits", "zip-reader", "detector", "captioner")
DEMO_USER = "demo"
QC_BOT = "qc-bot"


# consumers expose /metrics on base .. base + 3, the monitor on base + 10: all must be TCP ports
METRICS_PORT_BASE = Range(1, 65535 - 10, whole=True)


@dataclass(frozen=True)
class DemoArgs:
    """Options of ``auditstream demo``."""

    duration_s: float = field(default=0.0, metadata={"check": NON_NEGATIVE, "help": "stop after this many seconds; 0 runs until Ctrl-C"})
    rate_per_s: float = field(default=8.0, metadata={"check": NON_NEGATIVE, "help": "envelopes per second streamed through the broker"})
    digits_rate_per_s: float = field(default=2.0, metadata={"check": NON_NEGATIVE, "help": "single-digit requests per second"})
    labels_rate_per_s: float = field(default=1.0, metadata={"check": NON_NEGATIVE, "help": "parcel labels per second (the detector)"})
    scenes_rate_per_s: float = field(default=1.0, metadata={"check": NON_NEGATIVE, "help": "scenes per second (the captioner)"})
    dashboard_port: int = field(default=8501, metadata={"check": PORT, "help": "port of the audit dashboard (0: no dashboard)"})
    metrics_port_base: int = field(default=9400, metadata={"check": METRICS_PORT_BASE, "help": "consumers expose /metrics on base, base+1, ... (one per model); the monitor on base+10"})
    retrain: bool = field(default=False, metadata={"help": "train new model versions even if the registry has some"})
    report_every_s: float = field(default=3.0, metadata={"check": POSITIVE, "help": "seconds between progress lines"})
    qc_auditor_rate_per_s: float = field(default=1.0, metadata={"check": NON_NEGATIVE,
        "help": "a simulated auditor answers audit items from the ground truth at this rate (items per second, "
                "all models together), so the Overview's audited error fills (0: none); it answers QC samples, "
                "and deferred items too with --bot-answers-deferred"})
    bot_answers_deferred: bool | None = field(default=None, metadata={
        "help": "the simulated auditor also answers deferred items, so the loop learns without a person "
                "(None: yes with --retrain-every, no without: then the deferred items wait for you)"})
    retrain_every: int = field(default=0, metadata={"check": COUNT_OR_ZERO,
        "help": "close the learning loop live: retrain digits and zip-reader each time this many new decisive "
                "verdicts (accept, correct, reject) of the model have arrived, run the candidate in shadow, ask "
                "the promotion gate, hot-reload a promoted version (0: off; the detector and captioner are skipped)"})
    retrain_digits_epochs: int = field(default=5, metadata={"check": COUNT, "help": "--retrain-every: epochs of each digits fine-tune"})
    retrain_zip_steps: int = field(default=100, metadata={"check": COUNT, "help": "--retrain-every: steps of each zip-reader fine-tune"})
    retrain_nice: int = field(default=10, metadata={"check": NICENESS,
        "help": "--retrain-every: niceness added to the retrain and shadow processes, so serving keeps the cores"})
    promote_margin: float = field(default=0.05, metadata={"check": PROBABILITY,
        "help": "--retrain-every: the paired gate's margin (how much worse a candidate may be; auditstream "
                "promote's default 0.02 needs 210-240 pairs per route before its first look, 0.05 80-95)"})
    promote_per_route: bool = field(default=False, metadata={
        "help": "--retrain-every: the gate tests deferred items and QC samples each on its own (auditstream "
                "promote's default, valid for the whole traffic) instead of pooling the audited items (a "
                "statement about the audited mix only); per route, the digits' rare deferred items (well under "
                "1%% of its traffic) hold up the first look for an hour or more of demo traffic"})

    def __post_init__(self) -> None:
        check_fields(self)  # one line naming the option, before the broker or any model is started
        if self.retrain_every and not self.qc_auditor_rate_per_s and self.bot_answers_deferred:
            raise ValueError("--bot-answers-deferred needs a simulated auditor: give --qc-auditor-rate-per-s > 0")

    @property
    def bot_takes_deferred(self) -> bool:
        return bool(self.retrain_every) if self.bot_answers_deferred is None else self.bot_answers_deferred


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="the live demo: mail sorting through the embedded broker, with the audit dashboard",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, DemoArgs)
    parser.set_defaults(handler=lambda ns: run(dataclass_from_namespace(DemoArgs, ns)))


# --------------------------------------------------------------------------------------------
# set-up steps


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "auditstream.cli", *args]


SHIPPED_MODELS = Path(__file__).resolve().parent / "demo_models"  # <name>/{model.onnx,card.json[,weights.pt]}


def ensure_models(settings: Settings, retrain: bool) -> None:
    """Every demo model in the registry: the one already there, else the copy shipped with
    auditstream (made by ``auditstream train <name>`` with its defaults; ``scripts/ship-demo-models``
    makes them again; with its torch weights where the family can be fine-tuned, so the first
    ``auditstream retrain`` starts from them), else trained now; ``retrain`` trains a new version of each."""
    from auditstream.registry import CARD_FILE, ONNX_FILE, ModelCard, ModelRegistry
    from training import ship_ledger
    from training.feedback import WEIGHTS_FILE

    registry = ModelRegistry.from_settings(settings)
    for name in DEMO_MODELS:
        shipped = SHIPPED_MODELS / name
        if registry.latest(name) and not retrain:
            print(f"model {name}: version {registry.latest(name)} in {settings.models_dir}", flush=True)
        elif (shipped / ONNX_FILE).is_file() and not retrain:
            card = ModelCard.from_dict(json.loads((shipped / CARD_FILE).read_text()))
            # publish() checks the graph against the card and records its sha256, as for a fresh model
            published = registry.publish(card, (shipped / ONNX_FILE).read_bytes())
            if (shipped / WEIGHTS_FILE).is_file():
                shutil.copyfile(shipped / WEIGHTS_FILE, published.directory / WEIGHTS_FILE)
            # the shipped certificates' ledger: a retrain here is counted after them (δ spending)
            ship_ledger.carry(registry.root, name, SHIPPED_MODELS)
            print(f"model {name}: version {published.card.version} from the copy shipped with auditstream "
                  f"(pass --retrain to train your own)", flush=True)
        else:
            print(f"model {name}: training (pass --retrain to train again)", flush=True)
            done = subprocess.run(_cli("train", name), env=_child_env(settings))
            if done.returncode != 0:  # one line (its own output above says why), no traceback of ours
                raise SystemExit(f"auditstream demo: training {name} failed (exit {done.returncode}); see its "
                                 f"output above, or run 'auditstream train {name}' on its own")


def demo_account(settings: Settings) -> tuple[str, str]:
    """The demo auditor, with a fresh random password each run (only its hash is stored)."""
    from store.accounts import Role
    from store import open_store

    password = secrets.token_urlsafe(9)
    with open_store(settings.resolved_store_url, create=True) as store:
        if store.accounts.get(DEMO_USER) is None:
            store.accounts.add_user(DEMO_USER, password, Role.AUDITOR)
        else:
            store.accounts.set_password(DEMO_USER, password)
    return DEMO_USER, password


def _child_env(settings: Settings, **overrides: Any) -> dict[str, str]:
    """The demo's settings (with ``overrides``) for a child process; the store resolved here, so
    every child opens the same one."""
    child = dataclasses.replace(settings, store_url=settings.resolved_store_url, **overrides)
    return {**os.environ, **child.to_env()}


class Children:
    """The processes the demo started; stopped in reverse order with SIGTERM (then SIGKILL)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append((name, proc))
        return proc

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                # SystemExit: a clear one-line message (a busy port, a broken model), no traceback
                raise SystemExit(f"auditstream demo: {name} exited with code {proc.returncode}; "
                                 f"see {self.log_dir / (name + '.log')}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------------------------
# the stream


def envelope_requests(seed: int) -> Iterator[Any]:
    """Endless test-split envelopes as PNG images, each with the ZIP actually written on it."""
    from PIL import Image

    from auditstream.wire import ImageInput
    from training.data.envelopes import make_envelopes

    batch = 0
    while True:
        images, zips = make_envelopes("test", 256, seed=seed + batch)
        for image, zip_code in zip(images, zips):
            buf = io.BytesIO()
            Image.fromarray(image, mode="L").save(buf, format="PNG")
            yield ImageInput(buf.getvalue(), "png"), zip_code
        batch += 1


def parcel_label_requests(seed: int) -> Iterator[Any]:
    """Endless test-split parcel labels, each with the digits' true boxes (an answer of the kind)."""
    from training.detector.data import make_detection_set

    batch = 0
    while True:
        labels = make_detection_set("test", 128, seed=seed + batch)
        for image, boxes, classes in zip(labels.images, labels.boxes, labels.labels):
            yield image, [{"box": [float(v) for v in box], "label": int(c), "score": 1.0} for box, c in zip(boxes, classes)]
        batch += 1


def scene_requests(seed: int) -> Iterator[Any]:
    """Endless test-stream scenes of coloured shapes (uint8 RGB), each with its canonical caption."""
    from training.captioner.args import SEED_SPAN
    from training.captioner.data import split_scenes

    batch = 0
    while True:
        # past the test scenes training measured; a scene seed stays below SEED_SPAN (data.py), so
        # after ~10^8 scenes the stream starts over rather than run into another split's
        scenes = split_scenes("test", 128, seed=1000 + (seed + batch) % (SEED_SPAN - 1000))
        yield from zip(scenes.images, scenes.captions())
        batch += 1


def is_wrong(task: str, output: Any, truth: Any, details: Any = None) -> bool:
    """Whether an answer differs from the truth the demo knows: by the task kind's one rule at the
    prediction's recorded parameters (a detector's boxes match at its card's IoU, a caption by
    its normalised text), or as text for a class index whose truth is the label's name."""
    from auditstream import tasks

    if isinstance(truth, str) and not isinstance(output, str):
        return str(output) != truth
    return not tasks.rule_for(task, details=details).same_answer(output, truth)


def digit_requests(seed: int) -> Iterator[Any]:
    import numpy as np

    from training.data.split import load_split

    split = load_split("test")
    rng = np.random.default_rng(seed)
    while True:
        i = int(rng.integers(len(split.labels)))
        yield split.images[i].astype(np.float32), str(int(split.labels[i]))


@dataclass
class Tally:
    """What the demo has seen of its own requests, per model."""

    sent: Counter = field(default_factory=Counter)
    routes: dict[str, Counter] = field(default_factory=dict)
    versions: dict[str, dict[str, Counter]] = field(default_factory=dict)  # model -> version -> route counts
    wrong_auto: Counter = field(default_factory=Counter)  # auto answers that differ from the truth
    dead_letters: int = 0
    audited: int = 0  # QC samples (and deferred items, if it takes them) the simulated auditor judged
    audits_label: str = "QC audits"  # "audits" when the simulated auditor answers deferred items too
    audit_errors: int = 0  # ... and found wrong
    truth: dict[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)  # re-entrant: a report and its loop lines read one state

    def report(self, elapsed_s: float) -> str:
        """A few aligned lines: per model what was sent, answered, auto-sorted, deferred, sampled."""
        lines = []
        with self.lock:
            for model in DEMO_MODELS:
                routes = self.routes.get(model, Counter())
                done = sum(routes.values())
                auto = routes["AUTO"] + routes["AUTO_QC"]
                share = f"{auto / done:4.0%}" if done else "   -"
                lines.append(f"{model:<10} sent {self.sent[model]:>5}  answered {done:>5}  auto-sorted {auto:>5} ({share})  "
                             f"deferred {routes['HUMAN']:>4}  QC-sampled {routes['AUTO_QC']:>4}  "
                             f"wrong auto answers {self.wrong_auto[model]:>3}")
            lines.append(f"{'':<10} {self.audits_label} by {QC_BOT}: {self.audited} ({self.audit_errors} found wrong)  "
                         f"dead letters: {self.dead_letters}")
        return f"[{elapsed_s:5.0f} s] " + "\n          ".join(lines)

    def by_version(self) -> dict[str, dict[str, tuple[int, int]]]:
        """model -> version -> (answers, auto-sorted answers) of the demo's requests."""
        with self.lock:
            return {model: {v: (sum(c.values()), c["AUTO"] + c["AUTO_QC"]) for v, c in versions.items()}
                    for model, versions in self.versions.items()}


def produce_loop(settings: Settings, args: DemoArgs, tally: Tally, stop: threading.Event, prefix: str) -> None:
    """Pace envelope and digit requests at the configured rates until ``stop``."""
    from auditstream.kafka import make_producer
    from auditstream.wire import CONTENT_TYPE_HEADER, REQUEST_CONTENT_TYPE, InferenceRequest

    producer = make_producer(settings, client_id="auditstream-demo")
    streams = []
    if args.rate_per_s:
        streams.append(["zip-reader", envelope_requests(seed=1), 1.0 / args.rate_per_s, 0.0])
    if args.digits_rate_per_s:
        streams.append(["digits", digit_requests(seed=2), 1.0 / args.digits_rate_per_s, 0.0])
    if args.labels_rate_per_s:
        streams.append(["detector", parcel_label_requests(seed=3), 1.0 / args.labels_rate_per_s, 0.0])
    if args.scenes_rate_per_s:
        streams.append(["captioner", scene_requests(seed=4), 1.0 / args.scenes_rate_per_s, 0.0])
    started, i = time.monotonic(), 0
    try:
        while not stop.is_set() and streams:
            stream = min(streams, key=lambda s: s[3])
            delay = started + stream[3] - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            model, source, period = stream[0], stream[1], stream[2]
            value, truth = next(source)
            request_id = f"{prefix}-{i}"
            i += 1
            request = InferenceRequest(request_id, model, value, time.time())
            producer.send(settings.request_topic(model), request.key, request.to_bytes(),
                          ((CONTENT_TYPE_HEADER, REQUEST_CONTENT_TYPE),))
            with tally.lock:
                tally.sent[model] += 1
                tally.truth[request_id] = truth
            stream[3] += period
            if i % 20 == 0:
                producer.flush(30.0)
        producer.flush(30.0)
    finally:
        producer.close()


def watch_loop(settings: Settings, tally: Tally, stop: threading.Event, prefix: str) -> None:
    """Read predictions and dead letters back and count the demo's own requests by route."""
    from auditstream.kafka import make_consumer
    from auditstream.topics import DEAD_LETTER, PREDICTIONS
    from auditstream.wire import Prediction

    consumer = make_consumer(settings, f"auditstream-demo-view-{uuid.uuid4().hex[:8]}",
                             [settings.topic(PREDICTIONS), settings.topic(DEAD_LETTER)])
    seen: set[str] = set()
    try:
        while not stop.is_set():
            for record in consumer.poll(500, 500):
                if record.topic == settings.topic(DEAD_LETTER):
                    with tally.lock:
                        tally.dead_letters += 1
                    continue
                prediction = Prediction.from_bytes(record.value)
                if prediction.shadow or not prediction.request_id.startswith(prefix) or prediction.request_id in seen:
                    continue  # a candidate's shadow answer (acts on nothing), an earlier run's, or a redelivery
                seen.add(prediction.request_id)
                with tally.lock:
                    tally.routes.setdefault(prediction.model, Counter())[prediction.route.value] += 1
                    tally.versions.setdefault(prediction.model, {}).setdefault(
                        prediction.model_version, Counter())[prediction.route.value] += 1
                    truth = tally.truth.get(prediction.request_id)
                    if prediction.route.value != "HUMAN" and truth is not None and is_wrong(prediction.task,
                                                                                             prediction.output, truth,
                                                                                             prediction.details):
                        tally.wrong_auto[prediction.model] += 1
    finally:
        consumer.close()


def qc_auditor_loop(settings: Settings, tally: Tally, stop: threading.Event, rate_per_s: float,
                    deferred_too: bool = False) -> None:
    """A simulated auditor ('qc-bot'): claims QC samples (and with ``deferred_too`` deferred items,
    else those are the person's) and answers them with the ground truth the demo knows — accept
    when the model was right, correct it when not — through the same store API the dashboard uses."""
    from auditstream import tasks
    from auditstream.wire import Route, VerdictKind
    from store.accounts import Role
    from store import open_store
    from store.records import verdict_for

    with open_store(settings.resolved_store_url, create=True) as store:
        user = store.accounts.get(QC_BOT) or store.accounts.add_user(QC_BOT, secrets.token_urlsafe(16), Role.AUDITOR)
        while not stop.wait(1.0 / rate_per_s):
            claim = store.claim(user, 60.0, time.time(), route=None if deferred_too else Route.AUTO_QC)
            if claim is None:
                continue
            item = claim.item
            with tally.lock:
                truth = tally.truth.get(item.request_id)
            if truth is None:  # an earlier run's item: the truth is gone, give it back
                kind, corrected = VerdictKind.SKIP, None
            elif isinstance(truth, str) and not isinstance(item.output, str):  # a class index, a label name
                kind, corrected = (VerdictKind.ACCEPT, None) if str(item.output) == truth else (VerdictKind.CORRECT, truth)
            else:  # as the workbench decides (a detector's accept also leaves no box false)
                kind, corrected = verdict_for(tasks.rule_for(item.task, details=item.details), item.output, truth)
            store.record_verdict(store.new_verdict_id(), item.item_id, user, kind, corrected, time.time())
            if kind is not VerdictKind.SKIP:
                with tally.lock:
                    tally.audited += 1
                    tally.audit_errors += kind is VerdictKind.CORRECT


def start_loop(settings: Settings, args: DemoArgs, children: Children) -> Any:
    """The learning loop of ``--retrain-every`` (stack/demo_loop.py), announced once: which
    models it retrains, which it skips and why."""
    from qc.paired import PairedGateConfig
    from stack.demo_loop import DemoLoop, LoopConfig, retrainable

    models, skipped = retrainable(DEMO_MODELS)
    config = LoopConfig(args.retrain_every, args.retrain_digits_epochs, args.retrain_zip_steps, args.retrain_nice,
                        PairedGateConfig(margin=args.promote_margin, per_route=args.promote_per_route))
    print(f"learning loop: {', '.join(models)} retrained every {args.retrain_every} new verdicts (fine-tunes of "
          f"{args.retrain_digits_epochs} epochs / {args.retrain_zip_steps} steps at nice +{args.retrain_nice}), "
          f"candidates shadowed and promoted by the paired gate (margin {args.promote_margin:g}, delta "
          f"{config.gate.delta:g}, {'per route' if args.promote_per_route else 'audited items pooled'})", flush=True)
    for name, why in skipped.items():
        print(f"learning loop: {name} skipped: {why}", flush=True)
    pids = {model: proc.pid for name, proc in children.procs for model in models if name == f"serve-{model}"}
    return DemoLoop(models, settings, _child_env(settings), config, children.log_dir, pids)

# --------------------------------------------------------------------------------------------


def _ignore_stop_signals() -> Callable[[], None]:
    """Ignore SIGINT and SIGTERM (main thread only); returns what puts the handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in before.items():
            signal.signal(sig, handler)

    return restore


DEMO_LOCK_FILE = "demo.lock"


def _demo_lock(state_dir: Path) -> io.TextIOWrapper:
    """``<state_dir>/demo.lock``, held (flock) while this demo runs; SystemExit, one line, if
    another demo holds it: a second demo would reset the first one's auditor password and clash
    with its ports and log files."""
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True)
    lock = open(state_dir / DEMO_LOCK_FILE, "a+")  # not inherited by the children
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise SystemExit(f"auditstream demo: another demo is running on this state dir ({state_dir}, pid {holder}); "
                         "stop it or use another AUDITSTREAM_STATE_DIR") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def run(args: DemoArgs) -> int:
    # Ctrl-C and SIGTERM both stop the demo cleanly. SIGINT explicitly: a shell starts background
    # jobs with SIGINT ignored, and Python keeps an inherited "ignore", so the demo (and a test or
    # script that stops it with SIGINT) would otherwise run on.
    # Both raise KeyboardInterrupt (the same clean stop: children stopped, broker stopped) and are
    # recorded, so one swallowed where Python ignores exceptions still stops the demo at the next
    # report (auditstream.stop_signal).
    stop_signal = StopSignal(lambda signum: KeyboardInterrupt())
    stop_signal.install((signal.SIGINT, signal.SIGTERM))
    settings = Settings.from_env()
    lock = _demo_lock(settings.state_dir)  # before the broker and the account: another demo's are in use
    try:
        return _run_locked(args, settings, stop_signal)
    finally:
        lock.close()


def _broker_gone(used: Any, ours: bool) -> str:
    """The one line that ends the demo when the embedded broker it runs on stopped (a 'broker
    stop', a crash, a restart: a broker started again is another one). Its requests would only
    pile up in the producer while the clients log a refused connection every second."""
    whose = "it started" if ours else "it runs on"
    return (f"auditstream demo: the embedded broker {whose} (pid {used.pid}, {used.bootstrap}) stopped; the demo "
            f"stops too (broker log {used.log})")


def _stopping_line(settings: Settings, ours: Any, used: Any) -> str:
    """What the clean-up is about to stop, as it is: the broker only if it is the demo's own and
    still runs; a broker that ran before the demo, or one someone started since, stays."""
    from stack import broker

    now = broker.status(settings) if used is not None else None
    if ours is not None and broker.is_running(ours):
        return f"stopping the demo: its processes, then the embedded broker it started (pid {ours.pid})"
    if ours is not None:
        extra = f"; the one running now (pid {now.pid}) is not the demo's and keeps running" if now else ""
        return f"stopping the demo's processes (the embedded broker it started, pid {ours.pid}, has stopped already{extra})"
    if used is not None and now is not None:
        return (f"stopping the demo's processes (the embedded broker at {now.bootstrap}, pid {now.pid}, is not the "
                "demo's: it keeps running)")
    return "stopping the demo's processes"


def _run_locked(args: DemoArgs, settings: Settings, stop_signal: StopSignal) -> int:
    from stack import broker

    ours = None  # the embedded broker this demo launched (broker.BrokerInfo): the only one its clean-up stops
    used = None  # the embedded broker it runs on, launched or found running
    children = Children(settings.state_dir / "logs")
    stop = threading.Event()
    loop, loop_thread = None, None
    try:  # from before the broker starts: a stop signal just after it must still stop it
        if not settings.bootstrap_servers:
            launch = broker.status(settings) is None
            # A port of its own, outside the metrics ports the demo's children are about to listen on
            # (a broker's random free port once landed on one: a consumer then could not start).
            metrics_ports = range(args.metrics_port_base, args.metrics_port_base + 11)
            port = next((p for p in iter(broker.free_port, None) if p not in metrics_ports)) if launch else 0
            used, launched = broker.start_or_reuse(settings, models=DEMO_MODELS, port=port)
            # Only once the start returned, and only what it launched: a broker that ran already, or
            # one another start launched while this one waited for the lock, is not the demo's.
            ours = used if launched else None
            print(f"embedded broker (Tansu) at {used.bootstrap}"
                  f"{'' if launched else f' (pid {used.pid}, running before the demo: it stays running)'}", flush=True)
        else:  # a real Kafka: create the demo's topics if they are missing
            from auditstream.kafka import ensure_model_topics

            ensure_model_topics(settings, DEMO_MODELS)
        settings = Settings.from_env(bootstrap_servers=broker.resolve_bootstrap(settings))
        ensure_models(settings, args.retrain)
        user, password = demo_account(settings)
        for i, model in enumerate(DEMO_MODELS):
            children.start(f"serve-{model}", _cli("serve", "--model", model),
                           _child_env(settings, metrics_port=args.metrics_port_base + i))
        children.start("monitor", _cli("monitor"), _child_env(settings, metrics_port=args.metrics_port_base + 10))
        if args.dashboard_port:
            # the store URL reaches it in the environment (_child_env), never on a command line
            children.start("dashboard", _cli("dashboard", "--port", str(args.dashboard_port)), _child_env(settings))
            print(f"\naudit dashboard: http://127.0.0.1:{args.dashboard_port}   "
                  f"log in as '{user}' with password '{password}'\n", flush=True)
        consumer_ports = ", ".join(f":{args.metrics_port_base + i}" for i in range(len(DEMO_MODELS)))
        print(f"logs in {children.log_dir}; metrics on {consumer_ports} (consumers) and "
              f":{args.metrics_port_base + 10} (monitor). Ctrl-C stops the demo.", flush=True)
        tally = Tally(audits_label="audits" if args.bot_takes_deferred else "QC audits")
        prefix = f"demo-{uuid.uuid4().hex[:8]}"
        threads = [threading.Thread(target=produce_loop, args=(settings, args, tally, stop, prefix), daemon=True),
                   threading.Thread(target=watch_loop, args=(settings, tally, stop, prefix), daemon=True)]
        if args.qc_auditor_rate_per_s:
            deferred = args.bot_takes_deferred
            print(f"a simulated auditor '{QC_BOT}' answers QC samples{' and deferred items' if deferred else ''} "
                  f"(up to {args.qc_auditor_rate_per_s:g}/s){'' if deferred else '; the deferred items wait for you'}",
                  flush=True)
            threads.append(threading.Thread(target=qc_auditor_loop, daemon=True, args=(
                settings, tally, stop, args.qc_auditor_rate_per_s, args.bot_takes_deferred)))
        if args.retrain_every:
            loop = start_loop(settings, args, children)
            loop_thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
            threads.append(loop_thread)
        for t in threads:
            t.start()
        began = time.monotonic()
        while not args.duration_s or time.monotonic() - began < args.duration_s:
            time.sleep(args.report_every_s)
            stop_signal.check()
            if used is not None and not broker.is_running(used):
                raise SystemExit(_broker_gone(used, ours is not None))
            children.check()
            with tally.lock:
                report, versions = tally.report(time.monotonic() - began), tally.by_version()
            if loop is not None:
                report += "".join("\n          " + line for line in loop.report_lines(versions))
            print(report, flush=True)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C or SIGTERM (a shell's Ctrl-C reaches the whole process group, `timeout`
        # signals twice) would abort this clean-up half way and leave the broker running: ignore
        # them until it is done -- each step has its own timeout (children: SIGKILL after it).
        restore = _ignore_stop_signals()
        print(_stopping_line(settings, ours, used), flush=True)
        stop.set()
        if loop_thread is not None and loop_thread.is_alive():
            loop_thread.join(timeout=30)  # its step in progress ends (it may just have started a child)
        if loop is not None:
            loop.stop()
        children.stop()
        if ours is not None:
            broker.stop(settings, only=ours)  # not a broker someone started after the demo's stopped
        print("demo stopped", flush=True)
        restore()

