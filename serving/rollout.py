"""The versions a running consumer serves, and how it follows a promotion without a restart.

A :class:`ServedVersion` is one loaded model version with everything ``process_batch`` needs
beside the records: its warmed-up session, its :class:`~serving.consumer.ServeConfig` (the card:
thresholds, overrides keyed by its version), its metric series and its failure streak.

:class:`VersionSet` holds the live version and, during a canary, the candidate; it reads the
model's :class:`~auditstream.control.Rollout` from the control view once per batch
(:meth:`VersionSet.follow`, on the loop thread) and:

1. asks the :class:`VersionLoader` for every version the rollout names that is not loaded yet:
   a background thread loads it from the registry (checksum and graph checks), checks that this
   consumer can serve it (its kind; a policy's frame stack and input spec, which the episode
   state was built for), creates its session and warms it up -- polling, inference and commits
   carry on meanwhile;
2. switches between batches, once the version is ready: the batch in flight was answered by the
   old version, the next one by the new; the old session is closed after the switch;
3. a version that fails to load is logged, counted (``version_load_failures_total``) and not
   tried again until the next announcement; the old version keeps serving;
4. a version loaded for an announcement that a newer one replaced before a batch took it (a
   canary called off with ``--canary-share 0``) is closed at once, not kept until shutdown.

Only announcements made after this consumer started move its live version (it read the
registry's ``LIVE`` pointer at start, which ``auditstream promote`` sets before announcing); so a
stale record on the compacted topic never rolls a freshly started consumer back. The canary
settings of the latest record always apply, and no record at all (a tombstone of
``rollout:<model>``, which also stops the monitor counting the canary) ends a running canary:
the live version answers alone, as it does where no rollout was ever announced.

Canary: a record goes to the canary when a stable hash of its key (the request id; an episode's
key for episodes, so an episode stays on one version) is under ``canary_share``; the canary
answers and acts like the live version, and its predictions name its version.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from auditstream import tasks
from auditstream.control import ControlView, Rollout
from auditstream.errors import ModelRefused
from auditstream.kafka import Record
from auditstream.registry import ModelCard, RegisteredModel
from qc.triage import hash_uniform
from serving.consumer import ServeConfig
from auditstream.tasks.policy import frame_stack
from serving.inference import FailureStreak
from serving.runtime import ModelSession

log = logging.getLogger(__name__)
# How far a rollout record's writer's clock may run ahead of this host's and still order the
# record after this consumer's start (NTP keeps hosts within milliseconds; minutes mean a fault).
MAX_ROLLOUT_CLOCK_SKEW_S = 300.0

CANARY_SALT = "canary"


def check_switchable(current: ModelCard, new: RegisteredModel) -> None:
    """ModelRefused unless a running consumer of ``current`` can switch to ``new`` without a
    restart: the same model and kind, and for kinds that keep episode state the same input spec
    and frame stack (the state was built for them)."""
    card = new.card
    rule, current_rule = tasks.lookup(card.task), tasks.lookup(current.task)  # one kind module each
    if card.name != current.name or rule is not current_rule:
        raise ModelRefused(new.onnx_path, f"{card.name} v{card.version} ({card.task}) cannot replace "
                           f"{current.name} v{current.version} ({current.task}) in a running consumer")
    if rule.acts and (card.inputs != current.inputs or frame_stack(card) != frame_stack(current)):
        raise ModelRefused(new.onnx_path, f"v{card.version} changes the input spec or frame stack of v{current.version}; "
                           "the episode state was built for the old one: restart the consumer to switch")


@dataclass
class ServedVersion:
    """One loaded model version and what process_batch needs to serve it."""

    session: ModelSession
    config: ServeConfig
    runner: object  # serving.app.TimedRunner: the session timed into this version's histogram
    children: dict  # this version's metric series (ServeMetrics.children)
    failures: FailureStreak

    @property
    def version(self) -> str:
        return self.config.card.version

    def close(self) -> None:
        self.session.close()


class VersionLoader:
    """Loads versions in background threads; ``load(version)`` builds a :class:`ServedVersion`
    (registry checks, servability, session, warm-up) or raises."""

    def __init__(self, load: Callable[[str], ServedVersion], on_failure: Callable[[str, BaseException], None]) -> None:
        self._load, self._on_failure = load, on_failure
        self._lock = threading.Lock()
        self._loading: set[str] = set()
        self._ready: dict[str, ServedVersion] = {}
        self._failed: set[str] = set()
        self._closed = False  # a load that finishes after close() releases its session itself

    def want(self, version: str) -> None:
        """Start loading ``version`` unless it is loading, ready, or failed since the last :meth:`retry`."""
        with self._lock:
            if version in self._loading or version in self._ready or version in self._failed:
                return
            self._loading.add(version)
        threading.Thread(target=self._run, args=(version,), name=f"load-v{version}", daemon=True).start()

    def _run(self, version: str) -> None:
        started = time.perf_counter()
        try:
            served = self._load(version)
        except BaseException as e:  # noqa: BLE001 - any failure: the old version keeps serving
            with self._lock:
                self._loading.discard(version)
                self._failed.add(version)
            self._on_failure(version, e)
            return
        with self._lock:
            self._loading.discard(version)
            closed = self._closed
            if not closed:
                self._ready[version] = served
        if closed:
            served.close()
            return
        log.info("version %s loaded, verified and warmed up in %.2f s", version, time.perf_counter() - started)

    def take(self, version: str) -> ServedVersion | None:
        """The loaded version (handed over: the caller owns it now), or None while not ready."""
        with self._lock:
            return self._ready.pop(version, None)

    def discard(self, keep: set[str]) -> None:
        """Close the loaded versions not in ``keep`` (an announcement replaced before a batch took
        them: a session held until shutdown would keep its memory, on a GPU host the device's)."""
        with self._lock:
            dropped = [self._ready.pop(v) for v in list(self._ready) if v not in keep]
        for served in dropped:
            log.info("version %s was loaded for a rollout that no longer names it: closed", served.version)
            served.close()

    def busy(self) -> bool:
        with self._lock:
            return bool(self._loading)

    def retry(self) -> None:
        """A new announcement: versions that failed may be tried again."""
        with self._lock:
            self._failed.clear()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = list(self._ready.values()), {}
        for served in ready:
            served.close()


class VersionSet:
    """The live version (and the canary) of one model in one consumer; see the module docstring.

    A watcher thread (:meth:`start`) starts loading announced versions as soon as the control
    view has them, even while no request arrives; :meth:`follow` (loop thread, per batch) makes
    the switch once they are ready."""

    def __init__(self, live: ServedVersion, loader: VersionLoader | None, view: ControlView | None, model: str,
                 canary_salt: str = CANARY_SALT, on_change: Callable[["VersionSet"], None] | None = None) -> None:
        self.live, self.canary, self.canary_share = live, None, 0.0  # type: ServedVersion, ServedVersion | None, float
        self._loader, self._view, self._model, self._salt = loader, view, model, canary_salt
        self._on_change = on_change
        self._started_at_s = time.time()
        self._warned_future: Rollout | None = None
        self._seen: Rollout | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval_s: float = 0.2) -> "VersionSet":
        if self._view is not None and self._loader is not None:
            self._thread = threading.Thread(target=self._watch, args=(interval_s,), name="rollout-watch", daemon=True)
            self._thread.start()
        return self

    def _watch(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                rollout = self._latest()
                wanted = set(filter(None, self._targets(rollout))) if rollout is not None else set()
                for version in wanted:
                    if version not in (self.live.version, self.canary.version if self.canary else None):
                        self._loader.want(version)  # type: ignore[union-attr]
                self._loader.discard(wanted)  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - the watcher must not die; follow() still loads on its own
                log.exception("rollout watcher")

    def _latest(self) -> Rollout | None:
        """The model's latest rollout; a new announcement lets failed versions be tried again."""
        rollout = self._view.rollout(self._model) if self._view is not None else None
        with self._lock:
            if rollout != self._seen:
                self._seen = rollout
                if rollout is not None:
                    self._loader.retry()  # type: ignore[union-attr]
        return rollout

    def _targets(self, rollout: Rollout) -> tuple[str | None, str | None]:
        """(live version to switch to or None, canary version or None) that ``rollout`` asks for.
        Only a record written after this consumer started moves its live version: an older one
        may predate the LIVE pointer it started from. A record dated further ahead of this
        host's clock than any plausible skew proves nothing about that order (a writer with a
        wrong clock, or a hand-made record): it moves no live version either."""
        future = rollout.updated_at_s > time.time() + MAX_ROLLOUT_CLOCK_SKEW_S
        if future and rollout != self._warned_future:
            self._warned_future = rollout
            log.warning("rollout of %s is dated %.0f s ahead of this host's clock: its live version %s is not "
                        "followed (fix the writer's clock, then announce again)", self._model,
                        rollout.updated_at_s - time.time(), rollout.live_version)
        live = rollout.live_version if self._started_at_s < rollout.updated_at_s and not future else self.live.version
        canary = rollout.canary_version if rollout.canary_share > 0 and rollout.canary_version != live else None
        return (live if live != self.live.version else None), canary

    def follow(self) -> None:
        """Apply the latest rollout (loop thread, between batches). No rollout record (none yet,
        or its tombstone) means the live version alone: a running canary ends. Versions loaded
        for an announcement that the latest one no longer names are closed."""
        if self._view is None or self._loader is None:
            return
        rollout = self._latest()
        live, canary = self._targets(rollout) if rollout is not None else (None, None)
        self._loader.discard({v for v in (live, canary) if v is not None})
        changed = self._switch_live(live) if live is not None else False
        changed |= self._set_canary(canary, rollout.canary_share if rollout is not None else 0.0)
        if changed and self._on_change is not None:
            self._on_change(self)

    def _switch_live(self, version: str) -> bool:
        assert self._loader is not None
        if self.canary is not None and self.canary.version == version:  # the canary becomes live
            ready, self.canary, self.canary_share = self.canary, None, 0.0
        else:
            ready = self._loader.take(version)
        if ready is None:
            self._loader.want(version)
            return False
        old, self.live = self.live, ready
        old.close()
        log.info("%s: switched from v%s to v%s between batches", self._model, old.version, version)
        return True

    def _set_canary(self, version: str | None, share: float) -> bool:
        assert self._loader is not None
        current = self.canary.version if self.canary is not None else None
        if version == current:
            changed = self.canary_share != (share if version else 0.0)
            self.canary_share = share if version else 0.0
            return changed
        if version is not None:
            ready = self._loader.take(version)
            if ready is None:
                self._loader.want(version)
                return False
        else:
            ready = None
        if self.canary is not None:
            self.canary.close()
        self.canary, self.canary_share = ready, share if ready is not None else 0.0
        log.info("%s: canary %s", self._model, f"v{version} on {share:.1%} of requests" if ready else "ended")
        return True

    def split(self, records: list[Record]) -> list[tuple[ServedVersion, list[int]]]:
        """Which version answers which records (by index): the canary its hashed share, live the rest."""
        if self.canary is None or self.canary_share <= 0:
            return [(self.live, list(range(len(records))))]
        to_canary = [hash_uniform((r.key or b"").decode("utf-8", "replace"), self._salt) < self.canary_share
                     if r.key else False for r in records]
        live = [i for i, c in enumerate(to_canary) if not c]
        canary = [i for i, c in enumerate(to_canary) if c]
        return [(v, idx) for v, idx in ((self.live, live), (self.canary, canary)) if idx]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.live.close()
        if self.canary is not None:
            self.canary.close()
        if self._loader is not None:
            self._loader.close()
