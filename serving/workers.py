"""``auditstream serve --workers N``: N serving processes of one model on this host, each a member
of the model's consumer group (Kafka spreads the partitions; no coordination of our own).

One Python process cannot keep a many-core host busy: its loop (decode, triage, JSON, the
Kafka client) runs on one core while ONNX Runtime's threads wait for the next batch. N workers
overlap those phases. They share the cores: each worker's ONNX Runtime gets
``cores / N`` intra-op threads (at least 1) unless ``AUDITSTREAM_INTRA_OP_THREADS`` is set, so
N workers never start N × cores threads. With ``AUDITSTREAM_METRICS_PORT=P`` worker ``i`` serves
``/metrics`` on ``P + i``.

Life cycle: SIGTERM or SIGINT to this supervisor is passed to every worker, each finishes its
batch, checkpoints and exits; the supervisor waits for all of them (then kills what is left
after ``delivery_timeout_s`` + 30 s). **A worker that dies on its own stops the whole service**:
the others get SIGTERM and the supervisor exits 1, naming the worker and its exit status. Not a
restart in place: the usual cause is a broken model or broker that would take down its
replacement too, and a crash loop hidden inside one process is worse than a restart the
orchestrator (systemd, Kubernetes) sees, counts and backs off. The dead worker's partitions move
to the survivors while they drain (at-least-once: its uncommitted batches are answered again).

**A supervisor that is killed takes its workers with it**: SIGKILL (``kill -9``, the OOM killer,
an orchestrator's hard kill) gives it no chance to pass anything on, so each worker is started
with ``--supervisor-pid`` and arranges, first thing, to get SIGTERM when that parent ends
(:func:`follow_supervisor`): it drains, checkpoints and exits 0, as on a SIGTERM passed on,
instead of consuming on as an orphan nobody stops. On Linux the kernel sends it
(``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread of the worker polls its parent pid every second.
The worker sets this itself, after ``exec``, rather than in a ``preexec_fn`` (unsafe in a process
with threads, and it would cost ``subprocess`` its fast spawn). The kernel sends it when the
*thread* that forked the worker ends, not the process: here that is the supervisor's main thread
(:meth:`Supervisor.run` installs signal handlers, which only the main thread may, and starts the
workers), which ends only with the process. The restart is the orchestrator's, as above.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Mapping, Sequence

from auditstream.errors import BadArguments, ConfigError
from auditstream.settings import ENV_PREFIX, Settings, unknown_variables

log = logging.getLogger(__name__)
POLL_S = 0.2
# Each worker is a whole serving process (a model session, Kafka clients, a metrics port): more
# than a host has cores share them to no gain, and more than the topic's partitions sit idle.
MAX_WORKERS = 1024
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0  # the fallback's poll of the parent pid, where prctl is missing


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def threads_per_worker(configured: int, cores: int, workers: int) -> int:
    """``configured`` if set (> 0), else an equal share of the cores, at least 1."""
    return configured if configured > 0 else max(1, cores // workers)


def worker_env(settings: Settings, index: int, workers: int, cores: int,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker ``index``: these settings, its thread share, its metrics port.
    ``AUDITSTREAM_*`` variables that are no setting are left out: the supervisor warned about
    each once, and a worker reads only settings (each worker repeated the warnings)."""
    base = dict(os.environ if base is None else base)
    for name, _closest in unknown_variables(base):
        del base[name]
    env = {**base, **settings.to_env()}
    env[ENV_PREFIX + "INTRA_OP_THREADS"] = str(threads_per_worker(settings.intra_op_threads, cores, workers))
    env[ENV_PREFIX + "METRICS_PORT"] = str(settings.metrics_port + index if settings.metrics_port else 0)
    return env


def worker_argv(options: Mapping[str, object]) -> list[str]:
    """The ``serve`` arguments of every worker: each of the supervisor's ``serve`` options (but
    ``--workers``), so a worker serves exactly what ``serve`` alone would -- a ``--shadow`` run
    starts shadow workers. An option this cannot write is refused, never dropped."""
    argv: list[str] = []
    for dest, value in options.items():
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, bool):  # serve's flags are store_true: False is the default, nothing to pass
            argv += [flag] if value else []
        elif isinstance(value, (str, int, float)):
            argv += [f"{flag}={value}"] if value != "" else []  # "=": a value may start with "-"
        elif value is not None:
            raise BadArguments(f"serve --workers cannot pass {flag}={value!r} on to its workers; start the "
                               "workers yourself (serve --workers 1 each, same group) or leave the option out")
    return argv


def follow_supervisor(supervisor_pid: int) -> None:
    """A worker's first step: SIGTERM to this process once ``supervisor_pid``, its parent, ends
    (however it ends), so the worker drains and exits 0 instead of serving on as an orphan. A
    SIGTERM that comes before the worker's loop has its handler ends the process at once (nothing
    consumed yet, nothing to drain). :class:`BadArguments` when that process is not this one's
    parent: it ended before this ran, or the pid is wrong."""
    armed = _parent_death_signal(signal.SIGTERM)
    # After the prctl: a supervisor that ended before it took effect shows here (this process was
    # handed to init or a subreaper) instead of being missed.
    if os.getppid() != supervisor_pid:
        raise BadArguments(f"serve --supervisor-pid {supervisor_pid}: that process is not this one's parent (it "
                           "has ended, or the pid is wrong); serve --workers N sets it, leave it out otherwise")
    if not armed:
        threading.Thread(target=_watch_parent, args=(supervisor_pid,), name="supervisor-watch", daemon=True).start()
    log.debug("stopping with supervisor pid %d (%s)", supervisor_pid, "prctl" if armed else "polled")


def _parent_death_signal(signum: int) -> bool:
    """Linux: the kernel sends ``signum`` to this process when its parent ends; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum)) == 0
    except (OSError, AttributeError):  # no libc to load, or one without prctl: poll instead
        return False


def _watch_parent(supervisor_pid: int) -> None:
    """The portable fallback: an ended parent shows as a new parent pid (init's, or a subreaper's)."""
    while os.getppid() == supervisor_pid:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # as from outside: the loop's handler runs on the main thread


class Supervisor:
    """Starts the workers, passes SIGTERM on, and stops everything when one dies."""

    def __init__(self, settings: Settings, options: Mapping[str, object], workers: int,
                 command: Sequence[str] | None = None) -> None:
        """``options``: the ``serve`` options by argparse dest (``model``, ``version``,
        ``shadow``, ...), every one of them passed on to each worker (:func:`worker_argv`)."""
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise ConfigError("--workers", workers, f"a whole number from 1 to {MAX_WORKERS}")
        if settings.metrics_port and settings.metrics_port + workers - 1 > 65535:  # worker i: port + i
            raise ConfigError(ENV_PREFIX + "METRICS_PORT", settings.metrics_port, f"a port from 1 to {65536 - workers} "
                              f"with --workers {workers} (worker i serves /metrics on port + i)")
        self.settings, self.workers = settings, workers
        self.args = worker_argv(options)
        self.command = list(command or [sys.executable, "-m", "auditstream.cli", "serve"])
        self.procs: list[subprocess.Popen] = []
        self._stopping = False

    def start(self) -> None:
        cores = available_cores()
        for i in range(self.workers):
            if self._stopping:  # SIGTERM while starting: start no more
                break
            proc = subprocess.Popen(self.command + self.args + [f"--supervisor-pid={os.getpid()}"],
                                    env=worker_env(self.settings, i, self.workers, cores))
            self.procs.append(proc)
            log.info("worker %d/%d started: pid %d, %s intra-op threads", i + 1, self.workers, proc.pid,
                     threads_per_worker(self.settings.intra_op_threads, cores, self.workers))
            if self._stopping:  # the signal came while it was being started: stop() did not know it
                proc.send_signal(signal.SIGTERM)

    def stop(self, *_: object) -> None:
        """Signal-safe: ask every worker to finish its batch, checkpoint and exit."""
        self._stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Wait until stopped (0 if every worker exited cleanly) or a worker died (1)."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.start()
        died = False
        while not self._stopping and not died:
            died = any(proc.poll() is not None for proc in self.procs)
            if died:
                log.error("%s: stopping the other workers (restart the service once the cause is fixed)",
                          "; ".join(self._exits(clean_too=True)))
                self.stop()
            else:
                time.sleep(POLL_S)
        self._wait_all(self.settings.delivery_timeout_s + 30.0)
        if not died and self._exits():
            log.error("while stopping: %s", "; ".join(self._exits()))
        return 1 if died or self._exits() else 0

    def _exits(self, clean_too: bool = False) -> list[str]:
        """The workers that ended (with a non-zero status, unless ``clean_too``), by name. Once
        stopping, one that SIGTERM ended outright counts as clean: it had not yet installed the
        handler that drains, so it had taken no record."""
        def clean(code: int) -> bool:
            return code == 0 or (self._stopping and code == -signal.SIGTERM)

        return [f"worker {i + 1} (pid {p.pid}) exited with status {p.returncode}" for i, p in enumerate(self.procs)
                if p.returncode is not None and (clean_too or not clean(p.returncode))]

    def _wait_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop within %.0f s: killed", proc.pid, timeout_s)
                proc.kill()
                proc.wait()
