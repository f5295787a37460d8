"""Where a stream record's time goes (``auditstream bench serve``).

:func:`raw_client_per_s`: the same records consumed and produced again by the same client in
the same at-least-once loop, with no model and no decoding (``raw_client_per_s`` in the bench's
JSON): what the Kafka client and the loop cost on their own, apart from the project's path.

:class:`PathFreeApp` (``--without-path``): the serving app with the project's own path taken
out -- each batch still polled, run through ONNX Runtime on inputs of its shape and answered with
as many outputs of the same sizes, but decoding, postprocessing, triage and JSON encoding are
done once per batch size and their outputs sent again: the ratio a path that cost nothing would
reach with this client, broker and machine (``ratio_without_path``), so ``ratio_without_path -
ratio`` is the path's share of what is lost.

With ``--profile``, :func:`profiled` takes two views of the max-rate run, taken together (cProfile's own overhead inflates the Python
parts, so the bench reports the unprofiled run's throughput beside them):

- **sections** of the loop's thread, from cProfile's cumulative times, in µs per record: the
  client's poll (fetch + wire parsing), decoding the requests, ONNX Runtime, the answer (triage +
  JSON encoding of the outputs), the client's send, the checkpoint's flush and commit;
- **CPU per thread group**, from ``/proc/self/task/<tid>/stat`` (Linux; empty elsewhere): the loop's
  thread, the other Python threads (kafka-python's I/O threads; the lag probe's and control
  view's clients), librdkafka's ``rdk:`` threads and the native rest (ONNX Runtime's intra-op
  pool), so a client's background cost -- invisible to cProfile, but competing for the same
  cores -- is counted.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import re
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from auditstream.kafka import Record, ensure_topics
from auditstream.settings import Settings
from auditstream.stream import LoopStats, Output, StreamLoop
from auditstream.wire import InferenceRequest
from serving.app import ServeApp
from serving.inputs import prepare_input

# (label, file suffix, function name): cumulative time of that function on the loop's thread
SECTIONS = (
    ("loop total", "auditstream/stream.py", "run"),
    ("poll (client fetch + parse)", "auditstream/kafka/clients.py", "poll"),
    ("process_batch", "serving/consumer.py", "process_batch"),
    ("  decode requests", "serving/consumer.py", "_decode"),
    ("  ONNX Runtime", "serving/runtime.py", "run"),
    ("  answer: triage + outputs", "serving/consumer.py", "_answer"),
    ("    JSON encoding of outputs", "auditstream/wire/codec.py", "_dumps"),
    ("produce (client send)", "auditstream/kafka/clients.py", "send"),
    ("checkpoint flush", "auditstream/kafka/clients.py", "flush"),
    ("checkpoint commit", "auditstream/kafka/clients.py", "commit"),
)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds so far of this process's threads, by group: ``loop`` (the calling thread),
    ``python: <thread name>`` (kafka-python's I/O threads, the lag probe, the control view),
    ``librdkafka`` (its ``rdk:`` threads), ``native`` (ONNX Runtime's intra-op pool, ...)."""
    python_names = {t.native_id: t.name for t in threading.enumerate()}
    me = threading.get_native_id()
    out = {"loop": 0.0, "librdkafka": 0.0, "native": 0.0}
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return {}
    for task in tasks.iterdir():
        comm, cpu = _stat_cpu_s(task / "stat")
        if comm is None:  # the thread ended meanwhile
            continue
        tid = int(task.name)
        group = ("loop" if tid == me else f"python: {_thread_kind(python_names[tid])}" if tid in python_names
                 else "librdkafka" if comm.startswith("rdk:") else "native")
        out[group] = out.get(group, 0.0) + cpu
    return out


def broker_cpu_s(settings: Settings) -> float | None:
    """CPU seconds so far of the embedded broker of ``settings.state_dir`` (None: not ours, or not Linux)."""
    from stack import broker as embedded

    info = embedded.status(settings)
    return process_cpu_s(info.pid) if info is not None else None


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds so far of process ``pid``, all its threads (None: gone, or not Linux)."""
    return _stat_cpu_s(Path(f"/proc/{pid}/stat"))[1]


def _stat_cpu_s(stat_path: Path) -> tuple[str | None, float | None]:
    """(command name, utime + stime in seconds) from a /proc ``stat`` file; (None, None) if gone."""
    try:
        stat = stat_path.read_text()
    except OSError:
        return None, None
    fields = stat[stat.rindex(")") + 2:].split()
    return stat[stat.index("(") + 1:stat.rindex(")")], (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _thread_kind(name: str) -> str:
    """A thread's name without its numbers and client ids: ``bench-x.producer-network-thread`` ->
    ``producer-network-thread``."""
    return re.sub(r"\d+", "N", name.rsplit(".", 1)[-1])


def _cumulative_s(stats: pstats.Stats, suffix: str, function: str) -> float:
    total = 0.0
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name == function and filename.replace(os.sep, "/").endswith(suffix):
            total += ct
    return total


def profiled(run: Callable[[], Any], records: Callable[[Any], int]) -> tuple[Any, dict[str, Any]]:
    """Call ``run()`` under cProfile; return its result and the report (µs per record of each
    section, CPU µs per record per thread group, the 15 functions with the most own time)."""
    before = thread_cpu_s()
    profiler = cProfile.Profile()
    result = profiler.runcall(run)
    after = thread_cpu_s()
    n = max(1, records(result))
    stats = pstats.Stats(profiler)
    sections = {label: round(_cumulative_s(stats, suffix, fn) / n * 1e6, 1) for label, suffix, fn in SECTIONS}
    cpu = {group: round((after[group] - before.get(group, 0.0)) / n * 1e6, 1) for group in after
           if after[group] - before.get(group, 0.0) > 0}
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    return result, {"sections_us_per_record": sections, "thread_cpu_us_per_record": cpu,
                    "top_own_time": _top_lines(text.getvalue())}


def _top_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), len(lines))
    return [" ".join(line.split()) for line in lines[start + 1:] if line.strip()]


def raw_client_per_s(settings: Settings, producer: Any, topic: str, count: int, group: str) -> tuple[float, LoopStats]:
    """Records/s of a fresh group draining ``count`` records of ``topic`` through
    :class:`~auditstream.stream.StreamLoop` (poll, batch, produce each value unchanged to
    ``<prefix>.bench-echo``, flush, commit), from its first record to its last commit."""
    echo = settings.topic("bench-echo")
    ensure_topics(settings, [echo])

    def forward(records: list[Record]) -> list[list[Output]]:
        return [[Output(echo, r.key, r.value)] for r in records]

    loop = StreamLoop.connect(settings, group, [topic], forward, producer, client_id=f"{group}.consumer")
    try:
        stats = loop.run(max_records=count)
    finally:
        loop.consumer.close()  # type: ignore[union-attr]  # the producer belongs to the caller
    return stats.drain_rate_per_s, stats


class PathFreeApp(ServeApp):
    """:class:`~serving.app.ServeApp` whose batches skip the project's path after the first of
    their size: ONNX Runtime still runs a batch of that size (the first one's inputs) through the
    live version's runner, and that first batch's outputs are sent again -- the same records and
    bytes to the same topics. A benchmark only: its answers belong to other requests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answered: dict[int, tuple[list[list[Output]], np.ndarray]] = {}  # batch size -> (outputs, inputs)

    def _process(self, records: list[Record]) -> list[list[Output]]:
        cached = self._answered.get(len(records))
        if cached is None:
            spec = self.model.card.inputs[0]
            inputs = np.stack([prepare_input(InferenceRequest.from_bytes(r.value).input, spec) for r in records])
            cached = self._answered[len(records)] = (super()._process(records), inputs)
        else:
            self.versions.live.runner.run(cached[1])  # type: ignore[attr-defined]  # TimedRunner
        return cached[0]
