"""``bench faults`` scenario ``soak``: 70% of the measured maximum rate for ``--soak-s`` seconds
(docs/RELIABILITY 17, issue 13 scenario 9; bench only, default 30 minutes).

Three ``auditstream serve`` processes (the bench CNN). First the maximum rate is measured: a
backlog of ``--requests`` requests sent at once, answered requests per second from the first
answer to the last. Then requests are paced at ``--soak-share`` of it for ``--soak-s``; every
10 s the bench samples the lag (requests acknowledged but not yet answered) and each serve
process's resident memory (``VmRSS``). The first ``--soak-warmup-s`` is warm-up. Adds:

- ``max_rate_per_s``, ``rate_per_s``, ``soak_s``;
- ``lag_max`` and ``lag_max_second_half`` (requests; bounded: the second half no worse than the
  first half's maximum plus one batch per consumer), ``lag_end``;
- ``rss_mb_after_warmup`` / ``rss_mb_end`` per process and ``rss_growth_max`` (fraction; < 0.05);
- ``latency_p50_s`` / ``latency_p99_s`` (send to answer seen, soak requests);
- ``log_errors``: ERROR lines and tracebacks in the serve logs (0 unhandled exceptions).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from stack.faults_bench import FaultsArgs, Run

SAMPLE_EVERY_S = 10.0


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def max_rate_per_s(run: Run, requests: int) -> float:
    """Answers per second while a backlog of ``requests`` drains (first answer to last)."""
    before = set(run.acked)
    run.produce(requests, 100_000.0, "max")
    ids = run.acked - before
    if not run.wait_answered(ids, 600):
        raise RuntimeError(f"the max-rate backlog was not answered within 600 s; see the logs in {run.log_dir}")
    times = sorted(run.arrivals[r] for r in ids)
    return len(times) / max(times[-1] - times[0], 1e-3)


def soak(run: Run, args: FaultsArgs, say: Callable[[str], None]) -> None:
    from stack.faults_bench import CONSUMERS, _warm_up

    for _ in range(CONSUMERS):
        run.start_server()
    _warm_up(run, say)
    top = max_rate_per_s(run, args.requests)
    rate = args.soak_share * top
    say(f"  maximum {top:.0f} requests/s; soak at {rate:.0f}/s for {args.soak_s:g} s")
    run.sent_at.clear()  # latency and recovery of the soak requests only
    feeder = threading.Thread(target=run.produce, args=(max(1, int(rate * args.soak_s)), rate, "soak"), daemon=True)
    started = time.monotonic()
    feeder.start()
    samples: list[tuple[float, int, list[float]]] = []  # (seconds into the soak, lag, rss per process)
    while feeder.is_alive():
        feeder.join(timeout=SAMPLE_EVERY_S)
        lag = sum(1 for r in list(run.sent_at) if r in run.acked and r not in run.arrivals)
        samples.append((time.monotonic() - started, lag, [rss_mb(p.pid) for p in run.servers if p.poll() is None]))
        if len(samples) % 6 == 0:
            say(f"  {samples[-1][0]:.0f} s: lag {lag}, rss {', '.join(f'{m:.0f}' for m in samples[-1][2])} MB")
    run.wait_answered(set(run.acked), 180)
    run.extra = {"max_rate_per_s": round(top, 1), "rate_per_s": round(rate, 1), "soak_s": args.soak_s,
                 **soak_figures(samples, args.soak_warmup_s, CONSUMERS * run.settings.max_batch_size),
                 **_latencies(run), "log_errors": log_errors(run.log_dir)}


def soak_figures(samples: list[tuple[float, int, list[float]]], warmup_s: float, slack: int) -> dict[str, Any]:
    """Lag and memory figures from the samples (pure: tested on its own)."""
    if not samples:
        return {"lag_max": None, "lag_bounded": False, "rss_growth_max": None}
    half = samples[-1][0] / 2
    first = [lag for t, lag, _ in samples if t <= half] or [0]
    second = [lag for t, lag, _ in samples if t > half] or [0]
    warm = next((rss for t, _, rss in samples if t >= warmup_s), samples[-1][2])
    end = samples[-1][2]
    growth = [(e - w) / w for w, e in zip(warm, end)] if len(warm) == len(end) else []
    return {"lag_max": max(first + second), "lag_max_second_half": max(second), "lag_end": samples[-1][1],
            "lag_bounded": max(second) <= max(first) + slack,
            "rss_mb_after_warmup": [round(m, 1) for m in warm], "rss_mb_end": [round(m, 1) for m in end],
            "rss_growth_max": round(max(growth), 4) if growth else None}


def _latencies(run: Run) -> dict[str, float | None]:
    waits = [run.arrivals[r] - t for r, t in run.sent_at.items() if r in run.arrivals]
    if not waits:
        return {"latency_p50_s": None, "latency_p99_s": None}
    return {"latency_p50_s": round(float(np.percentile(waits, 50)), 3),
            "latency_p99_s": round(float(np.percentile(waits, 99)), 3)}


def log_errors(log_dir: Path) -> int:
    """ERROR lines and tracebacks in the serve logs."""
    return sum(line.count(" ERROR ") + line.startswith("Traceback") for path in log_dir.glob("serve-*.log")
               for line in path.read_text(errors="replace").splitlines())


def soak_passed(outcome: dict[str, Any]) -> bool:
    return (outcome["lag_bounded"] and outcome["rss_growth_max"] is not None and outcome["rss_growth_max"] < 0.05
            and outcome["log_errors"] == 0)
