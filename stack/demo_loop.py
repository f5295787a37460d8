"""The demo's learning loop, live: ``auditstream demo --retrain-every N``.

For each demo model that ``auditstream retrain`` can retrain (training/retrain.py's families:
digits and zip-reader; the detector and the captioner are skipped, and the demo says so once), a
:class:`ModelLoop` runs this cycle, stepped by one background thread of the demo:

1. **waiting**: counts the model's *new verdicts* -- decisive verdicts (accept, correct, reject;
   skips and gold items not) on the model's items, by any auditor, on any route, since the last
   retrain began (or since the demo started);
2. **training**, once N have arrived: ``auditstream retrain --model NAME --json`` as a child process
   at a lower CPU priority (``os.nice``) and with a small fine-tuning budget (``--epochs`` /
   ``--steps``), so the serving consumers keep their cores; it fine-tunes the LIVE version's
   ``weights.pt`` on the store's verdicts and publishes version N+1 as a candidate, not live;
3. **shadow**: ``auditstream serve --model NAME --version V --shadow`` (also niced) answers the
   live requests, the monitor keeps its answers of audited requests, and the loop asks the real
   gate (:func:`monitor.promotion.promote`, what ``auditstream promote`` runs) when every route
   holds enough pairs to settle it for an identical candidate, and again after a "too few pairs"
   decision once the pairs it asked for have arrived (each look is recorded; none spends delta:
   the gate's bound is anytime-valid, so asking again is allowed);
4. **promoted**: ``LIVE`` moved and a Rollout announced; the running consumer loads the version
   and switches between batches, without a restart, and the predictions name the new version;
   or **refused** with the gate's code and reason; or **failed** (the retrain or the shadow
   consumer exited; the reason is the last line of its log). Then back to 1: the next retrain
   fine-tunes from whatever is LIVE. One candidate at a time: while one waits in shadow for the
   pairs the gate needs, new verdicts are counted but the next retrain waits (the report shows
   both), so a slow route (few deferred items) slows the loop visibly instead of being skipped.

Every change of state is printed as one ``loop:`` line, and :meth:`DemoLoop.report_lines` adds
one line per model to the progress report: the version serving, its certified coverage and the
auto-sorted share of its answers, the new verdicts counted, and the candidate's state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from auditstream.settings import Settings
from qc.paired import PairedGateConfig, look_delta, pairs_needed

TICK_S = 2.0
DECISIVE = ("accept", "correct", "reject")


@dataclass(frozen=True)
class LoopConfig:
    """What the demo's options set (stack/demo.py's DemoArgs documents each)."""

    retrain_every: int
    digits_epochs: int
    zip_steps: int
    nice: int
    gate: PairedGateConfig


@dataclass
class Candidate:
    """The version the loop is working on now, and where it stands."""

    state: str  # training | shadow | promoted | refused | failed
    started_s: float
    version: str | None = None
    detail: str = ""
    proc: subprocess.Popen | None = None
    log: Path | None = None
    next_look_pairs: int = 0  # the gate is asked once every route holds this many pairs
    pairs: int = 0  # the fewest pairs of any stratum (route, or all pooled), last counted
    stratum_pairs: dict[str, int] = field(default_factory=dict)
    decided_s: float = 0.0


def retrainable(models: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The models ``retrain`` can retrain, and for the others the reason it refuses them."""
    from training.retrain import CannotRetrain, family_of

    ok, refused = [], {}
    for name in models:
        try:
            family_of(name)
            ok.append(name)
        except CannotRetrain as e:
            refused[name] = str(e)
    return ok, refused


def lower_priority(pid: int, niceness: int) -> None:
    """Add ``niceness`` to a child's (``os.nice`` from outside: ``preexec_fn`` is not safe in a
    process with threads, and the demo has several). The child is a Python interpreter that is
    still importing when this runs, before it trains or serves anything."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + niceness))
    except ProcessLookupError:  # it exited already: its exit code and log say why
        pass


def _pairs(c: Candidate) -> str:
    return ", ".join(f"{s} {n}" for s, n in sorted(c.stratum_pairs.items()))


def _pct(x: Any) -> str:
    return f"{x:.2%}" if isinstance(x, (int, float)) else "-"


def _last_line(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class ModelLoop:
    """The retrain → shadow → gate cycle of one model (module docstring)."""

    def __init__(self, model: str, settings: Settings, env: dict[str, str], config: LoopConfig, log_dir: Path,
                 say: Callable[[str], None]) -> None:
        from training.retrain import family_of

        self.model, self.settings, self.env, self.config = model, settings, env, config
        self.log_dir, self.say = log_dir, say
        family = family_of(model)
        self.budget = (f"--{family.budget_field}",
                       str(config.digits_epochs if family.budget_field == "epochs" else config.zip_steps))
        self.baseline: int | None = None  # decisive verdicts counted when the last retrain began
        self.new_verdicts = 0
        self.candidate: Candidate | None = None
        self.history: list[Candidate] = []
        self.broken = ""  # an unexpected error stopped this model's loop (said once, shown in the report)

    # -- one step ---------------------------------------------------------------------------

    def step(self, store: Any, now_s: float) -> None:
        total = sum(n for kind, n in store.verdict_counts(self.model).items() if kind.value in DECISIVE)
        if self.baseline is None:
            self.baseline = total
        self.new_verdicts = total - self.baseline
        c = self.candidate
        if c is not None and c.state == "training":
            self._after_training(c, now_s)
        elif c is not None and c.state == "shadow":
            self._shadow_step(c, store, now_s)
        elif self.new_verdicts >= self.config.retrain_every:
            self._start_retrain(total, now_s)

    def _start_retrain(self, total: int, now_s: float) -> None:
        self.baseline, self.new_verdicts = total, 0
        log = self.log_dir / f"retrain-{self.model}-{int(now_s)}.log"
        argv = [sys.executable, "-m", "auditstream.cli", "retrain", "--model", self.model, "--json", *self.budget]
        self.candidate = Candidate("training", now_s, proc=self._spawn(argv, log), log=log)
        self.say(f"{self.model}: {self.config.retrain_every} new verdicts: retraining from LIVE "
                 f"({self.budget[0][2:]} {self.budget[1]}, nice +{self.config.nice}; log {log.name})")

    def _after_training(self, c: Candidate, now_s: float) -> None:
        assert c.proc is not None
        if c.proc.poll() is None:
            return
        summary = self._summary(c.log)
        if c.proc.returncode != 0 or summary is None:
            self._finish(c, "failed", f"retrain exited with code {c.proc.returncode}: {_last_line(c.log)}", now_s)
            return
        c.version = str(summary["version"])
        self.say(f"{self.model}: v{c.version} published in {now_s - c.started_s:.0f} s, fine-tuned from "
                 f"v{summary.get('base_version')} on {summary.get('verdicts_learnt')} verdicts: certified risk "
                 f"{_pct(summary.get('certified_risk'))} at coverage {_pct(summary.get('coverage'))} (target "
                 f"{_pct(summary.get('target_risk'))}); now in shadow")
        log = self.log_dir / f"shadow-{self.model}-v{c.version}.log"
        argv = [sys.executable, "-m", "auditstream.cli", "serve", "--model", self.model, "--version", c.version,
                "--shadow"]
        c.state, c.proc, c.log, c.started_s = "shadow", self._spawn(argv, log, shadow=True), log, now_s

    def _shadow_step(self, c: Candidate, store: Any, now_s: float) -> None:
        from auditstream.registry import ModelRegistry
        from monitor.promotion import judged_pairs, live_card, promote, recorded_looks

        assert c.version is not None
        if c.proc is not None and c.proc.poll() is not None:
            self._finish(c, "failed", f"the shadow consumer exited with code {c.proc.returncode}: {_last_line(c.log)}",
                         now_s)
            return
        registry = ModelRegistry.from_settings(self.settings)
        cand, live = registry.card(self.model, c.version), live_card(registry, self.model, c.version)
        gate = self.config.gate
        strata, _ = judged_pairs(store, cand, live, gate)
        c.pairs = min((s.n for s in strata), default=0)
        c.stratum_pairs = {s.stratum: s.n for s in strata}
        look = recorded_looks(registry, self.model, c.version) + 1
        # what an identical candidate needs at this look, spread over the routes as the gate spreads delta
        floor = pairs_needed(0, 0, 0, gate.margin, look_delta(gate.delta, look) / max(1, len(strata)))
        c.next_look_pairs = max(c.next_look_pairs, floor or 0)
        if strata and c.pairs >= c.next_look_pairs:
            decision = promote(self.settings, self.model, c.version, config=gate, store=store)
            if decision.promote:
                self._finish(c, "promoted", decision.reason, now_s)
                self.say(f"{self.model}: v{c.version} PROMOTED over v{decision.live} (look {decision.look}): LIVE "
                         "moved and announced; the running consumer switches without a restart")
            elif decision.code == "too_few_pairs" and decision.pairs_needed:
                c.next_look_pairs = c.pairs + decision.pairs_needed
                self.say(f"{self.model}: v{c.version} gate look {decision.look}: too few pairs ({_pairs(c)}); "
                         f"asking again at about {c.next_look_pairs}")
            else:
                self._finish(c, "refused", f"{decision.code}: {decision.reason}", now_s)

    def _finish(self, c: Candidate, state: str, detail: str, now_s: float) -> None:
        c.state, c.detail, c.decided_s = state, detail, now_s
        _stop(c.proc)
        c.proc = None
        self.history.append(c)
        if state != "promoted":
            self.say(f"{self.model}: v{c.version or '?'} {state.upper()}: {detail}")

    # -- helpers ----------------------------------------------------------------------------

    def _spawn(self, argv: list[str], log: Path, shadow: bool = False) -> subprocess.Popen:
        env = dict(self.env)
        if shadow:
            env["AUDITSTREAM_METRICS_PORT"] = "0"  # the live consumer owns the model's metrics port
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        lower_priority(proc.pid, self.config.nice)
        return proc

    @staticmethod
    def _summary(log: Path | None) -> dict[str, Any] | None:
        """The retrain's JSON summary: the last line of its log that is one."""
        if log is None or not log.is_file():
            return None
        for line in reversed(log.read_text(errors="replace").splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None
        return None

    def stop(self) -> None:
        if self.candidate is not None:
            _stop(self.candidate.proc)

    def status(self) -> str:
        c = self.candidate
        if self.broken:
            return f"loop stopped: {self.broken}"
        if c is None:
            return "no candidate yet"
        if c.state == "training":
            return f"candidate: training ({time.time() - c.started_s:.0f} s)"
        if c.state == "shadow":
            return f"candidate v{c.version}: shadow, pairs {_pairs(c) or 'none yet'} of {c.next_look_pairs} for the gate"
        detail = c.detail if len(c.detail) < 110 else c.detail[:107] + "..."
        return f"candidate v{c.version or '?'}: {c.state}" + ("" if c.state == "promoted" else f" ({detail})")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class DemoLoop:
    """Every retrainable model's :class:`ModelLoop`, stepped by one thread (:meth:`run`)."""

    def __init__(self, models: list[str], settings: Settings, env: dict[str, str], config: LoopConfig,
                 log_dir: Path, consumer_pids: dict[str, int] | None = None) -> None:
        self.settings, self.config = settings, config
        self.consumer_pids = consumer_pids or {}  # model -> pid of the serving consumer the demo started
        self._print_lock = threading.Lock()
        self.loops = [ModelLoop(m, settings, env, config, log_dir, self.say) for m in models]
        self._cards: dict[tuple[str, str], Any] = {}
        self._seen_serving: set[tuple[str, str]] = set()  # promoted versions already seen answering

    def say(self, text: str) -> None:
        with self._print_lock:
            print(f"loop: {text}", flush=True)

    def run(self, stop: threading.Event) -> None:
        from store import open_store

        try:
            with open_store(self.settings.resolved_store_url, create=True) as store:
                while not stop.is_set():
                    for loop in self.loops:
                        if loop.broken:
                            continue
                        try:
                            loop.step(store, time.time())
                        except Exception as e:  # noqa: BLE001 - said and shown; serving and the other model go on
                            loop.broken = f"{type(e).__name__}: {e}"[:300]
                            loop.stop()
                            self.say(f"{loop.model}: the loop stopped on an unexpected error: {loop.broken}")
                    stop.wait(TICK_S)
        finally:
            for loop in self.loops:
                loop.stop()

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop()

    def coverage(self, model: str, version: str) -> str:
        """The version's certified coverage and risk, from its card."""
        from auditstream.registry import ModelRegistry

        key = (model, version)
        if key not in self._cards:
            try:
                self._cards[key] = ModelRegistry.from_settings(self.settings).card(model, version).triage
            except Exception:  # noqa: BLE001 - a version of another registry: shown without its card
                return "card unknown"
        t = self._cards[key]
        if t.coverage is None or t.target_risk is None:
            return "no certificate"
        return f"certified coverage {t.coverage:.1%} at {t.target_risk:.0%} risk"

    def report_lines(self, by_version: dict[str, dict[str, tuple[int, int]]]) -> list[str]:
        """One line per model: ``by_version[model][version] = (answers, auto-sorted)`` from the
        demo's own view of the predictions topic; the serving version is the newest that answered."""
        lines = []
        for loop in self.loops:
            versions = by_version.get(loop.model, {})
            self._announce_switches(loop, versions)
            if versions:
                serving = max(versions, key=int)
                answers, auto = versions[serving]
                share = f"{auto / answers:.0%}" if answers else "-"
                counts = ", ".join(f"v{v} {n}" for v, (n, _) in sorted(versions.items(), key=lambda kv: int(kv[0])))
                now = (f"serving v{serving} ({self.coverage(loop.model, serving)}; auto-sorted {share} of its "
                       f"{answers} answers; answers by version: {counts})")
            else:
                now = "no answer yet"
            busy = loop.candidate is not None and loop.candidate.state in ("training", "shadow")
            due = busy and loop.new_verdicts >= self.config.retrain_every
            waits = " (the next retrain waits for this candidate)" if due else ""
            lines.append(f"loop {loop.model:<10} {now}  new verdicts {loop.new_verdicts}/{self.config.retrain_every}  "
                         f"{loop.status()}{waits}")
        return lines

    def _announce_switches(self, loop: ModelLoop, versions: dict[str, tuple[int, int]]) -> None:
        """Once per promoted version: the running consumer's first answers with it."""
        for c in loop.history:
            key = (loop.model, c.version or "")
            if c.state == "promoted" and c.version in versions and key not in self._seen_serving:
                self._seen_serving.add(key)
                pid = self.consumer_pids.get(loop.model)
                self.say(f"{loop.model}: the running consumer{f' (pid {pid}, started with the demo)' if pid else ''} "
                         f"answers with v{c.version} ({versions[c.version][0]} answers so far): hot-reloaded, "
                         "no restart")
