"""The max-rate step with ``auditstream serve --workers N`` (``auditstream bench serve --workers N``).

The in-process max-rate step (:mod:`stack.serve_bench`) measures one serving process. Here
``auditstream serve --workers N`` starts as a child process (as in production: N group members,
``cores / N`` ONNX Runtime threads each); once every worker owns partitions (their
``auditstream_serve_assigned_partitions`` gauges add up to the topic's partitions, so no
rebalance pause falls inside the measurement) and every worker's control view has read the
control topic (``auditstream_serve_control_view_read``: before, a worker's first batch waits for
it), the requests are produced as fast as the producer goes, and the rate is the requests
divided by the time from the start of that production to the moment all were taken (run
through the model), read from the workers' own
``auditstream_serve_records_in_total`` counters (each worker serves /metrics on its own port;
scraped every 50 ms, so the end is late by up to one scrape: the rate errs low).

The drain and the production times come back with the rate (``workers_drain_s``,
``workers_produce_s`` in the bench's JSON): a drain of a second or less says more about the
scrapes than about the workers, and a production that takes most of the drain says the producer
set the pace. Until 2026-12-05 the clock started at the first scrape that saw a record taken, up
to a scrape and a batch late: on the H100 host 20,000 requests drained in about 0.3 s by that
clock and came out at 74,000/s (docs/serving.md, "A GPU host").
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from auditstream.registry import RegisteredModel
from auditstream.settings import Settings
from stack.broker import free_port
from serving.loadgen import inputs_for, produce_requests

SCRAPE_S = 0.05


def metric(port: int, name: str) -> float:
    """The sum of a worker's ``name`` series (0 while its /metrics is not up)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def max_rate_with_workers(settings: Settings, producer: Any, model: RegisteredModel, count: int, workers: int,
                          id_prefix: str, start_server: Callable[..., subprocess.Popen], log_path: Path,
                          timeout_s: float = 600.0) -> tuple[float, list[str], float, float]:
    """(records/s of ``serve --workers N`` draining ``count`` requests, their ids, the drain's and the
    production's seconds)."""
    card = model.card
    port = free_port(workers)
    server = start_server(dataclasses.replace(settings, metrics_port=port), card, log_path, workers=workers)
    try:
        ports = range(port, port + workers)
        deadline = time.monotonic() + 120
        settled, unread = False, []
        while time.monotonic() < deadline and server.poll() is None:
            owned = [metric(p, "auditstream_serve_assigned_partitions") for p in ports]
            settled = all(owned) and sum(owned) == settings.partitions
            unread = [i for i, p in enumerate(ports) if metric(p, "auditstream_serve_control_view_read") != 1]
            if settled and not unread:
                break
            time.sleep(0.2)
        else:
            what = (f"settled in its group, but the control views of workers {unread} never read the control topic"
                    if settled else "did not settle in its group")
            raise RuntimeError(f"serve --workers {workers} {what} (exit status {server.poll()}); see {log_path}")
        started = time.monotonic()
        sent = produce_requests(producer, settings.request_topic(card.name), card.name,
                                inputs_for(card, "random", seed=4), count, 0.0, id_prefix=id_prefix, progress=False)
        produced_s = time.monotonic() - started
        deadline, total, now = started + timeout_s, 0.0, started
        while time.monotonic() < deadline and server.poll() is None:
            total = sum(metric(p, "auditstream_serve_records_in_total") for p in ports)
            now = time.monotonic()
            if total >= count:
                break
            time.sleep(SCRAPE_S)
        if total < count:
            raise RuntimeError(f"serve --workers {workers} took {total:.0f} of {count} requests "
                               f"(exit status {server.poll()}); see {log_path}")
        drain_s = now - started
        return count / max(drain_s, SCRAPE_S), sent.request_ids, drain_s, produced_s
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
