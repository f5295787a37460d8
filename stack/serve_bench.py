"""``auditstream bench serve``: how much of ONNX Runtime's throughput survives the stream path.

One run, one model, one batch size:

1. **raw ORT**: ``session.run`` on an in-memory batch, repeated for a few seconds;
2. **wire**: encode and decode cost of one request (``InferenceRequest.to_bytes/from_bytes``);
3. **stream, max rate**: N requests produced ahead of time, then the serving consumer
   (:class:`serving.app.ServeApp`, the same code as ``auditstream serve``) drains them:
   consume → decode → infer → triage → produce → flush → commit, timed from its first record to
   its last commit (``mean_batch_size``: the batches it actually formed, of at most
   ``batch_size`` waiting at most ``max_wait_ms``); raw ORT is measured again after the
   consumer left the group (a live consumer's background fetches would slow that measurement);
4. **stream, ~70% load**: ``auditstream serve`` in a child process (as in production), on topics
   of its own (``<prefix>-lat``: the embedded broker's fetches cost more the more batches a
   partition holds), warmed up,
   then requests paced at 70% of the measured rate; end-to-end latency = when the prediction is
   read back here − the request's ``created_at_s``. The pacing producer and the reader are the
   load generator, not what is measured: they use confluent-kafka whatever ``--client`` says
   (``load_generator_client``), because on a small machine they share the cores with the server
   (kafka-python's producer and reader took ~0.36 of a core at 150 requests/s, librdkafka's
   ~0.07). ``latency_cpu_cores`` says how many cores the server, the embedded broker and the load
   generator used meanwhile: a sum near the machine's cores means the step measured a saturated
   machine, not the batch policy;
5. **outcomes**: after the servers stopped, the run's predictions topic is read to its end
   offsets: ``lost``, ``duplicates`` and ``non_identical_duplicates`` count every prediction,
   also a duplicate that arrived after the readers had seen its id once.

Without ``--model`` it builds (no torch: ``onnx.helper``, fixed-seed random weights) a small CNN
whose inference dominates (~0.5 GFLOP per input, VGG-style, 1.5 M weights): 1×28×28 → conv 64 →
conv 128 → pool → conv 256 → conv 256 → pool → conv 256 → dense 10 (3×3 convolutions, ReLU).
``overhead_us_per_record`` (1/stream − 1/raw) is the stream path's own cost per request, whatever
the model: the ratio for another model follows from it and that model's raw time. Its triage threshold is set to the 15th percentile of its confidence on random
inputs, so ~85% of answers are auto-accepted (AUTO, ~2% of them QC-sampled) and ~15% go to the
audit topic, the mix of a certified model in production.
The last line printed is one JSON object (keys: raw_ort_per_s, stream_per_s, ratio, p50_ms,
p99_ms, latency_bound_ms, lost, duplicates, non_identical_duplicates, mean_batch_size, batch_size,
max_wait_ms, latency_budget_ms, raw_client_per_s, client, load_generator_client,
latency_cpu_cores, ratio_tls, ...; ``profile`` with ``--profile``, ``ratio_without_path`` with
``--without-path``).

``drain_wall_share`` (:func:`drain_split`): where step 3's wall time went -- the model (its
histograms), the project's path (the rest of process_batch), poll, produce, checkpoint, rest --
and ``model_in_stream_per_s``, the model's own records/s inside the drain; together they factor
the ratio: ``ratio ≈ model_in_stream_per_s / raw_ort_per_s × drain_wall_share["model"]``, the
first factor what the client's threads and the broker on the same cores cost ONNX Runtime, the
second what the loop spends outside the model.

``raw_client_per_s`` (:func:`stack.serve_profile.raw_client_per_s`): a fresh group drains the
max-rate step's requests again through the same loop and client, forwarding each record's bytes
unchanged (no decoding, no model): the client's and the loop's own ceiling, so a run tells the
client's overhead from the project's path (``--profile`` splits the path further).

With ``--without-path`` the max-rate requests are drained once more by
:class:`stack.serve_profile.PathFreeApp` -- the same app with decoding, postprocessing, triage and
encoding done once per batch size, ONNX Runtime still run on every batch:
``stream_without_path_per_s`` and ``ratio_without_path``, the ratio a path costing nothing would
reach here; ``ratio_without_path - ratio`` is the path's share of the loss, the rest is the
client's, the broker's and the machine's.

With ``--workers N`` (> 1) the max-rate drain is repeated by ``auditstream serve --workers N`` in
a child process (:mod:`stack.workers_bench`: ``stream_workers_per_s``, ``ratio_workers``), after
the latency step, which stays one process: a latency server joining right after the drain's N
workers left got no answers at all (the Tansu group stall of the fault suite's rolling restart,
not yet understood), while N workers joining after one member left settle.

6. **TLS** (unless ``--no-tls``): step 3 again through an embedded broker that serves TLS only
   (:mod:`stack.tls_proxy` in front of Tansu, a throwaway CA from :mod:`stack.pki`):
   ``ratio_tls`` beside ``ratio`` is what encryption costs on this machine, in the same run.
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
import uuid
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from auditstream import topics as T
from auditstream.errors import BrokerUnavailable
from auditstream.kafka import ensure_model_topics, make_consumer, make_producer, read_to_end, resolve_bootstrap
from auditstream.kafka.factory import kafka_python_has_fast_crc
from auditstream.registry import ModelCard, ModelRegistry, RegisteredModel, TensorSpec, TriageSpec
from auditstream.settings import Settings
from auditstream.stream import LoopStats
from auditstream.wire import InferenceRequest
from auditstream.wire.records import parse_latency_headers
from serving.app import ServeApp
from serving.loadgen import inputs_for, produce_requests
from serving.metrics import ServeMetrics
from serving.runtime import load_session
from stack.serve_profile import PathFreeApp, broker_cpu_s, process_cpu_s, profiled, raw_client_per_s
from stack.workers_bench import max_rate_with_workers

BENCH_MODEL = "bench-cnn"
# (in channels, out channels, 2x2 max-pool after): ~0.5 GFLOP and 1.5 M weights per 28x28 input
LAYERS = ((1, 64, False), (64, 128, True), (128, 256, False), (256, 256, True), (256, 256, False))


def bench_cnn_onnx(seed: int = 0, layers: tuple[tuple[int, int, bool], ...] = LAYERS) -> bytes:
    """A small CNN on 1×28×28 inputs (He-initialised random weights; accuracy is irrelevant);
    ``layers`` as :data:`LAYERS` (more of them: a genuinely slower model, ``bench faults``)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32), name))
        return name

    x = "image"
    for i, (cin, cout, pool) in enumerate(layers):
        w, b = weight(f"w{i}", (cout, cin, 3, 3), cin * 9), weight(f"b{i}", (cout,), 1)
        nodes += [helper.make_node("Conv", [x, w, b], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
        if pool:
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"p{i}"
    nodes += [helper.make_node("Flatten", [x], ["flat"], axis=1),
              helper.make_node("MatMul", ["flat", weight("wd", (layers[-1][1] * 49, 10), layers[-1][1] * 49)],
                               ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(nodes, "bench_cnn",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, 28, 28])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="auditstream-bench")
    model.ir_version = 8
    return model.SerializeToString()


def bench_card(onnx_bytes: bytes, coverage: float = 0.85, samples: int = 256) -> ModelCard:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    sample = np.random.default_rng(2).standard_normal((samples, 1, 28, 28)).astype(np.float32)
    threshold = float(np.quantile(session.run(None, {"image": sample})[0].max(axis=1), 1 - coverage))
    return ModelCard(name=BENCH_MODEL, version="0", task="classification",
                     inputs=[TensorSpec("image", "float32", [None, 1, 28, 28])],
                     outputs=[TensorSpec("probs", "float32", [None, 10])],
                     triage=TriageSpec(threshold=round(threshold, 6)), labels=[str(i) for i in range(10)],
                     extra={"purpose": "benchmark only: random weights"})


RAW_CPU_US: list[float] = []  # CPU µs per record of each raw ORT measurement of this process


def raw_ort_per_s(model: RegisteredModel, batch_size: int, min_seconds: float = 3.0,
                  settings: Settings | None = None) -> float:
    """Records/s of ``session.run`` on one in-memory batch, with the serving session's settings
    (device, threads, I/O binding on a GPU); its CPU µs per record is appended to RAW_CPU_US."""
    session = load_session(model, settings=settings)
    inputs = inputs_for(model.card, "random")
    batch = np.stack([next(inputs) for _ in range(batch_size)])
    session.run(batch)
    runs, started, cpu = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - started) < min_seconds or runs < 5:
        session.run(batch)
        runs += 1
    RAW_CPU_US.append((time.process_time() - cpu) / (runs * batch_size) * 1e6)
    return runs * batch_size / elapsed


def wire_cost_us(card: ModelCard, n: int = 2000) -> tuple[float, float]:
    inputs = inputs_for(card, "random")
    requests = [InferenceRequest(f"r{i}", card.name, next(inputs), time.time()) for i in range(n)]
    t0 = time.perf_counter()
    blobs = [r.to_bytes() for r in requests]
    t1 = time.perf_counter()
    for b in blobs:
        InferenceRequest.from_bytes(b)
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


def read_predictions(settings: Settings, ids: set[str], timeout_s: float, group: str,
                     arrivals: dict[str, list[float]], served: dict[str, dict[str, float]] | None = None) -> None:
    """Read the predictions topic until every id in ``ids`` arrived (or timeout); record arrival
    times (and, into ``served``, the latencies the server measured: its latency headers)."""
    consumer = make_consumer(settings, group, [settings.topic(T.PREDICTIONS)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not ids <= arrivals.keys():
            for r in consumer.poll(2000, 200):
                rid = json.loads(r.value)["request_id"]
                if rid in ids:
                    arrivals.setdefault(rid, []).append(time.time())
                    if served is not None:
                        served.setdefault(rid, parse_latency_headers(r.headers))
    finally:
        consumer.close()


def answers_of(settings: Settings, expected: set[str]) -> dict[str, list[bytes]]:
    """Every prediction of ``expected`` request ids, by id: the predictions topic read to its end
    offsets (after the servers stopped, so a late duplicate is there too)."""
    values: dict[str, list[bytes]] = {}
    for record in read_to_end(settings, [settings.topic(T.PREDICTIONS)], timeout_s=120.0):
        request_id = json.loads(record.value)["request_id"]
        if request_id in expected:
            values.setdefault(request_id, []).append(record.value)
    return values


def count_outcomes(settings: Settings, expected: set[str]) -> tuple[int, int, int]:
    """(lost, duplicates, duplicates whose bytes differ) over *every* prediction of the run
    (:func:`answers_of`)."""
    values = answers_of(settings, expected)
    lost = len(expected - values.keys())
    duplicates = sum(len(v) - 1 for v in values.values())
    non_identical = sum(len(set(v)) - 1 for v in values.values())
    return lost, duplicates, non_identical


def serve_process(settings: Settings, card: ModelCard, log_path: Path, log_level: str = "WARNING",
                  workers: int = 1) -> subprocess.Popen:
    """``auditstream serve [--workers N]`` for the benchmark's model, topics and client, in a child process."""
    # the child's own Settings.from_env() reads these back: the benchmark's topics, model and client
    env = {**os.environ, **dataclasses.replace(settings, log_level=log_level).to_env()}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "auditstream.cli", "serve", "--model", card.name,
                                 "--version", card.version, "--workers", str(workers)], env=env, stdout=log, stderr=subprocess.STDOUT)


def load_generator_client(client_under_test: str) -> str:
    """The client of the bench's own pacing producer and readers: confluent-kafka (its I/O in C
    costs the served process's cores least) where it imports, else the client under test."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return client_under_test
    return "confluent"


def _cores_used(before: dict[str, float | None], after: dict[str, float | None], wall_s: float) -> dict[str, float | None]:
    """CPU seconds per wall second of each process between two :func:`_cpu_now` readings."""
    return {name: (round((after[name] - before[name]) / wall_s, 2)  # type: ignore[operator]
                   if before[name] is not None and after[name] is not None and wall_s > 0 else None)
            for name in before}


def _cpu_now(settings: Settings, server: subprocess.Popen) -> dict[str, float | None]:
    return {"serve": process_cpu_s(server.pid), "broker": broker_cpu_s(settings), "load_generator": time.process_time()}


def _cpu_ratio(cpu: dict[str, float | None]) -> float | None:
    if not cpu["stream_process"]:
        return None
    return round(cpu["raw_ort"] / (cpu["stream_process"] + (cpu["broker"] or 0.0)), 3)  # type: ignore[operator]


def _served_breakdown(served: dict[str, dict[str, float]], arrivals: dict[str, list[float]],
                      created: dict[str, float]) -> dict[str, list[float]]:
    """[p50, p99] ms of the server's ``queue-s``, ``end-to-end-s`` minus ``queue-s`` (its batch's
    compute), and the read-back time after the answer was ready."""
    ids = [r for r in served if "queue-s" in served[r] and "end-to-end-s" in served[r] and r in arrivals]
    parts = {"queued": [served[r]["queue-s"] for r in ids],
             "batch_compute": [served[r]["end-to-end-s"] - served[r]["queue-s"] for r in ids],
             "delivery": [arrivals[r][0] - created[r] - served[r]["end-to-end-s"] for r in ids]}
    return {name: [_percentile_ms(v, 50), _percentile_ms(v, 99)] for name, v in parts.items()}


def _percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else float("nan")


def run_bench(base: Settings, args: Any, out: TextIO) -> dict[str, Any]:
    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    client = args.client or base.kafka_client
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="auditstream-bench-") as tmp:
        settings = dataclasses.replace(base, kafka_client=client, max_batch_size=args.batch_size,
                                       topic_prefix=f"bench{run_id}", state_dir=Path(tmp) / "state")
        if args.model:
            model = ModelRegistry.from_settings(base).load(args.model)
            settings = dataclasses.replace(settings, models_dir=base.models_dir)
        else:
            registry = ModelRegistry(Path(tmp) / "models")
            onnx_bytes = bench_cnn_onnx()
            model = registry.publish(bench_card(onnx_bytes), onnx_bytes)
            settings = dataclasses.replace(settings, models_dir=registry.root)
        from stack import broker as embedded

        started_broker = False
        try:
            resolve_bootstrap(base)
            settings = dataclasses.replace(settings, bootstrap_servers=resolve_bootstrap(base))
        except BrokerUnavailable:
            info = embedded.start(settings)
            started_broker = True
            settings = dataclasses.replace(settings, bootstrap_servers=info.bootstrap)
        try:
            return _measure(settings, model, args, client, run_id, say)
        finally:
            if started_broker:
                embedded.stop(settings)


def _ratio(rate: float, raw: float) -> float:
    """``rate / raw`` to three significant digits: 0.916 for the bench CNN, and still above zero
    for a tiny model whose raw ONNX Runtime rate is a thousand times the stream's."""
    return float(f"{rate / raw:.3g}")


CONTROL_VIEW_WAIT_S = 60.0


def control_view_read(app: ServeApp) -> float:
    """Seconds waited until ``app``'s control view has read the control topic. A drain is timed
    from its first record, and until the view has read the topic the first batch waits for it
    (serving.app.ControlGate): 1.39 s of a 6.04 s drain here (2026-12-05), a start-up wait, not
    throughput. The view is started with the app: called right after, this is that start."""
    started = time.monotonic()
    if app.control_view is not None and not app.control_view.wait_caught_up(CONTROL_VIEW_WAIT_S):
        raise RuntimeError(f"the control view did not read the control topic within {CONTROL_VIEW_WAIT_S:.0f} s")
    return time.monotonic() - started


def _drain(app: ServeApp, settings: Settings, count: int) -> tuple[LoopStats, float, float | None, float]:
    """``app`` drains ``count`` records once its control view has read the topic: its stats, the
    CPU µs per record of this process and of the embedded broker meanwhile (None: not the bench's
    own broker), which the other jobs on a shared machine disturb far less than wall time, and
    the seconds spent in the model."""
    control_view_read(app)
    cpu, broker_cpu, model_s = time.process_time(), broker_cpu_s(settings), _model_s(app)
    stats = app.run(max_records=count)
    stream_cpu_us = (time.process_time() - cpu) / count * 1e6
    broker_after, model_s = broker_cpu_s(settings), _model_s(app) - model_s
    broker_cpu_us = (broker_after - broker_cpu) / count * 1e6 if broker_cpu is not None and broker_after else None
    return stats, stream_cpu_us, broker_cpu_us, model_s


def _cpu_us_per_record(stream_cpu_us: float, broker_cpu_us: float | None) -> dict[str, float | None]:
    """CPU µs per record of raw ORT (the mean of the last two raw measurements: around the
    drain), of the drain's process and of the broker meanwhile, as ``cpu_us_per_record``."""
    return {"raw_ort": round(sum(RAW_CPU_US[-2:]) / 2, 1), "stream_process": round(stream_cpu_us, 1),
            "broker": None if broker_cpu_us is None else round(broker_cpu_us, 1)}


def _model_s(app: ServeApp) -> float:
    """Seconds inside the model so far (ONNX Runtime runs, and a GPU's copies), from the app's
    own histograms."""
    return sum(sample.value for family in app.metrics.registry.collect()
               if family.name in ("auditstream_serve_inference_seconds", "auditstream_serve_device_copy_seconds")
               for sample in family.samples if sample.name.endswith("_sum"))


def drain_split(stats: LoopStats, model_s: float) -> dict[str, float]:
    """Shares of a drain's wall time (first record to last commit): in the model, in the rest of
    process_batch (the project's path: decode, postprocess, triage, JSON), polling, handing
    outputs to the producer, checkpoints (flush + commit), and the loop's own rest. With the
    model's own speed in the stream (``records / model_s``) it factors the ratio:
    ``ratio = (model speed in the stream / raw) × model share``."""
    wall = stats.drain_s
    if wall <= 0:
        return {}
    parts = {"model": model_s, "path": stats.process_s - model_s, "poll": stats.poll_s,
             "produce": stats.produce_s, "checkpoint": stats.checkpoint_s}
    parts["rest"] = wall - sum(parts.values())
    return {name: round(seconds / wall, 4) for name, seconds in parts.items()}


def _max_rate(settings: Settings, producer: Any, model: RegisteredModel, args: Any, id_prefix: str,
              say) -> tuple[Any, Any, float, tuple[float, float], dict[str, Any] | None, dict[str, float | None],
                            dict[str, Any]]:
    """The serving consumer drains ``args.count`` requests produced before it starts: (what was
    sent, its run stats, records/s from first record to last commit, raw ORT before and after,
    with ``args.profile`` where the time of a second drain went (:func:`profiled`), CPU µs per
    record of raw ORT, of this process's drain and of the embedded broker meanwhile, and where
    the drain's wall time went (:func:`drain_split`, the model's own records/s in it))."""
    from prometheus_client import CollectorRegistry

    card = model.card

    def serving_app() -> ServeApp:
        return ServeApp(settings, model, ServeMetrics(card.name, CollectorRegistry()))  # one registry per app

    app = serving_app()
    try:
        # The view's start (its group join), waited out before anything is timed: the serving
        # process's own start-up wait, reported as control_view_wait_s.
        view_wait_s = control_view_read(app)
        sent = produce_requests(producer, settings.request_topic(card.name), card.name, inputs_for(card, "random"),
                                args.count, 0.0, id_prefix=id_prefix, progress=False)
        # The machine's load drifts: raw throughput is measured right before and right after.
        raw_before = raw_ort_per_s(model, args.batch_size, settings=settings)
        say(f"raw ONNX Runtime: {raw_before:,.0f} records/s")
        stats, stream_cpu_us, broker_cpu_us, model_s = _drain(app, settings, args.count)
    finally:
        # Leaves the group before raw ORT is measured again: a live consumer keeps fetching in the
        # background (librdkafka's threads, and the embedded broker answering them, took 6-13%
        # off the "after" measurement), and the next step's group gets every partition.
        app.close()
    stream = stats.drain_rate_per_s
    raw_after = raw_ort_per_s(model, args.batch_size, settings=settings)
    ratio = stream / ((raw_before + raw_after) / 2)
    say(f"stream (max rate{', TLS' if settings.kafka_security_protocol != 'PLAINTEXT' else ''}): {stats.records_in} "
        f"requests in {stats.records_in / stream:.2f} s = {stream:,.0f}/s; raw ORT after: {raw_after:,.0f}/s; "
        f"ratio {ratio:.3f}")
    cpu_us = _cpu_us_per_record(stream_cpu_us, broker_cpu_us)
    report = None
    if args.profile:  # the same drain again by a fresh member, under cProfile (slower: not the measurement)
        produce_requests(producer, settings.request_topic(card.name), card.name, inputs_for(card, "random", seed=3),
                         args.count, 0.0, id_prefix=f"prof{id_prefix}", progress=False)
        app = serving_app()
        try:
            control_view_read(app)
            _stats, report = profiled(lambda: app.run(max_records=args.count), lambda s: s.records_in)
        finally:
            app.close()
        say(json.dumps(report, indent=1))
    split = {"control_view_wait_s": round(view_wait_s, 3), "drain_wall_share": drain_split(stats, model_s),
             "model_in_stream_per_s": round(stats.records_in / model_s, 1) if model_s > 0 else None}
    say("drain wall time: " + ", ".join(f"{k} {v:.1%}" for k, v in split["drain_wall_share"].items())
        + f"; the model alone ran at {split['model_in_stream_per_s']}/s in it")
    return sent, stats, stream, (raw_before, raw_after), report, cpu_us, split


def _max_rate_without_path(settings: Settings, producer: Any, model: RegisteredModel, args: Any, run_id: str,
                           raw_before: float, say) -> dict[str, float]:
    """The max-rate drain again by a fresh :class:`~stack.serve_profile.PathFreeApp` (ORT runs,
    the project's path does not): ``stream_without_path_per_s`` and ``ratio_without_path``, raw
    ORT taken as the mean of ``raw_before`` (the measurement that ended the drain before) and one
    right after; ``cpu_ratio_without_path`` as ``cpu_ratio``."""
    from prometheus_client import CollectorRegistry

    card = model.card
    produce_requests(producer, settings.request_topic(card.name), card.name, inputs_for(card, "random", seed=4),
                     args.count, 0.0, id_prefix=f"nopath{run_id}", progress=False)
    app = PathFreeApp(settings, model, ServeMetrics(card.name, CollectorRegistry()))
    try:
        stats, stream_cpu_us, broker_cpu_us, _ = _drain(app, settings, args.count)
    finally:
        app.close()
    rate = stats.drain_rate_per_s
    raw_after = raw_ort_per_s(model, args.batch_size, settings=settings)
    ratio = _ratio(rate, (raw_before + raw_after) / 2)
    cpu_ratio = _cpu_ratio(_cpu_us_per_record(stream_cpu_us, broker_cpu_us))
    say(f"stream without the path (outputs of the first batch sent again, ORT still run): {rate:,.0f}/s; "
        f"raw ORT after: {raw_after:,.0f}/s; ratio {ratio}, cpu_ratio {cpu_ratio}")
    return {"stream_without_path_per_s": round(rate, 1), "ratio_without_path": ratio,
            "cpu_ratio_without_path": cpu_ratio}


def _max_rate_over_tls(settings: Settings, model: RegisteredModel, args: Any, run_id: str, say) -> dict[str, float]:
    """The max-rate run again through an embedded broker that serves TLS only (a fresh
    throwaway PKI), so ``ratio_tls`` beside ``ratio`` is the cost of encryption on this machine."""
    from stack import broker as embedded
    from stack.pki import make_pki

    state = Path(settings.state_dir) / "tls-broker"
    pki = make_pki(state / "pki")
    tls = dataclasses.replace(settings, state_dir=state, bootstrap_servers="", kafka_security_protocol="SSL",
                              kafka_ssl_cafile=str(pki.ca))
    info = embedded.start(tls, models=[model.card.name], options=embedded.BrokerOptions(
        tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)))
    try:
        tls = dataclasses.replace(tls, bootstrap_servers=info.bootstrap)
        producer = make_producer(tls, client_id="bench-producer-tls")
        try:
            _sent, _stats, stream, (before, after), _, _, _ = _max_rate(tls, producer, model, args, f"tls{run_id}", say)
        finally:
            producer.close()
    finally:
        embedded.stop(tls)
    raw = (before + after) / 2
    return {"ratio": _ratio(stream, raw), "stream_per_s": round(stream, 1), "raw_ort_per_s": round(raw, 1)}


def _measure(settings: Settings, model: RegisteredModel, args: Any, client: str, run_id: str, say) -> dict[str, Any]:
    card = model.card
    say(f"model {card.name} v{card.version}, batch {args.batch_size}, client {client}, broker {settings.bootstrap_servers}")
    encode_us, decode_us = wire_cost_us(card)
    say(f"wire: encode {encode_us:.1f} us, decode {decode_us:.1f} us per request")

    producer = make_producer(settings, client_id="bench-producer")
    topic = settings.request_topic(card.name)
    arrivals: dict[str, list[float]] = {}
    sent, stats, stream, (raw_before, raw_after), profile, cpu_us, split = _max_rate(
        settings, producer, model, args, f"max{run_id}", say)
    raw = (raw_before + raw_after) / 2
    read_predictions(settings, set(sent.request_ids), 60.0, f"bench-reader-a-{run_id}", arrivals)
    # the client alone: a fresh group drains the same requests and forwards them, no model
    raw_client, _ = raw_client_per_s(settings, producer, topic, args.count, f"bench-raw-client-{run_id}")
    say(f"raw client (consume + produce, no model): {raw_client:,.0f} records/s")
    without_path = (_max_rate_without_path(settings, producer, model, args, run_id, raw_after, say)
                    if args.without_path else {})
    tls = _max_rate_over_tls(settings, model, args, run_id, say) if args.tls else None

    # latency at ~70% of the measured max rate: `auditstream serve` in its own process (as in
    # production, with the client under test), requests paced and predictions read back here by
    # the load generator's client. On topics of its own: the embedded broker lists every batch
    # stored in a partition on each fetch, so the drains' thousands of records would make each of
    # the ~200 fetches a second of the server and the reader cost more (docs/serving.md).
    rate = 0.7 * min(stream, raw)
    latency_topics = dataclasses.replace(settings, topic_prefix=f"{settings.topic_prefix}-lat")
    ensure_model_topics(latency_topics, [card.name])
    lat_topic = latency_topics.request_topic(card.name)
    generator = dataclasses.replace(latency_topics, kafka_client=load_generator_client(client))
    ids = {f"lat{run_id}-{i}" for i in range(args.latency_count)}
    lat_arrivals: dict[str, list[float]] = {}
    served: dict[str, dict[str, float]] = {}
    server = serve_process(latency_topics, card, Path(settings.state_dir) / "serve.log")
    pacer = make_producer(generator, client_id="bench-pacer")
    try:
        reader = threading.Thread(target=read_predictions, args=(generator, ids, 180.0, f"bench-reader-b-{run_id}",
                                                                 lat_arrivals, served), daemon=True)
        reader.start()
        # warm-up: the server has joined its group and answers before the clock starts
        warm = produce_requests(pacer, lat_topic, card.name, inputs_for(card, "random", seed=2), 2 * args.batch_size,
                                0.0, id_prefix=f"warm{run_id}", progress=False)
        read_predictions(generator, set(warm.request_ids), 120.0, f"bench-reader-w-{run_id}", arrivals)
        time.sleep(1.0)
        cpu_before, wall_before = _cpu_now(settings, server), time.monotonic()
        paced = produce_requests(pacer, lat_topic, card.name, inputs_for(card, "random", seed=1), args.latency_count,
                                 rate, id_prefix=f"lat{run_id}", progress=False)
        reader.join()
        latency_cpu = _cores_used(cpu_before, _cpu_now(settings, server), time.monotonic() - wall_before)
    finally:
        pacer.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    workers: dict[str, Any] = {}
    # after the latency step: Tansu can leave a group unassigned when N members that left together are
    # replaced (docs/serving.md, fault suite); one member leaving and N joining settles
    if args.workers > 1:  # the same drain by `auditstream serve --workers N` in a child process
        before = raw_ort_per_s(model, args.batch_size, settings=settings)
        w_rate, w_ids, w_drain_s, w_produce_s = max_rate_with_workers(
            settings, producer, model, args.count, args.workers, f"wrk{run_id}", serve_process,
            Path(settings.state_dir) / "workers.log")
        after = raw_ort_per_s(model, args.batch_size, settings=settings)
        sent.request_ids.extend(w_ids)
        workers = {"workers": args.workers, "stream_workers_per_s": round(w_rate, 1),
                   "ratio_workers": _ratio(w_rate, (before + after) / 2),
                   "workers_drain_s": round(w_drain_s, 3), "workers_produce_s": round(w_produce_s, 3)}
        say(f"stream, serve --workers {args.workers}: {w_rate:,.0f}/s ({args.count} requests in {w_drain_s:.2f} s, "
            f"produced in {w_produce_s:.2f} s); raw ORT {before:,.0f} / {after:,.0f}; ratio {workers['ratio_workers']}")
    producer.close()
    latencies = [lat_arrivals[r][0] - paced.created_at_s[r] for r in ids if r in lat_arrivals]
    expected, latency_expected = set(sent.request_ids), ids | set(warm.request_ids)
    lost, duplicates, non_identical = (a + b for a, b in zip(count_outcomes(settings, expected),
                                                             count_outcomes(latency_topics, latency_expected)))
    mean_batch = sum(stats.batch_sizes) / len(stats.batch_sizes) if stats.batch_sizes else float("nan")
    result = {
        "raw_ort_per_s": round(raw, 1), "raw_ort_before_after": [round(raw_before, 1), round(raw_after, 1)], "stream_per_s": round(stream, 1), "ratio": _ratio(stream, raw),
        "overhead_us_per_record": round((1 / stream - 1 / raw) * 1e6, 1),
        "p50_ms": _percentile_ms(latencies, 50), "p99_ms": _percentile_ms(latencies, 99),
        # where the latency went, by the server's own clock: before its batch started (Kafka +
        # batching wait), until the answer was ready (compute), and after (produce + read back)
        "served_ms": _served_breakdown(served, lat_arrivals, paced.created_at_s),
        "latency_rate_per_s": round(rate, 1), "lost": lost, "duplicates": duplicates,
        "non_identical_duplicates": non_identical, "client": client,
        "load_generator_client": generator.kafka_client, "latency_cpu_cores": latency_cpu,
        "model": card.name, "batch_size": args.batch_size, "mean_batch_size": round(mean_batch, 1),
        "max_wait_ms": settings.max_wait_ms, "latency_budget_ms": settings.latency_budget_ms,
        "raw_client_per_s": round(raw_client, 1), "kafka_python_crc32c_c": kafka_python_has_fast_crc(),
        # CPU µs per record of raw ORT, of the serving process's drain (all its threads) and of the
        # embedded broker meanwhile; cpu_ratio = raw / (stream + broker): the ratio a machine that
        # runs nothing else would reach if it is CPU-bound (robust to other jobs' load)
        "cpu_us_per_record": cpu_us, "cpu_ratio": _cpu_ratio(cpu_us),
        # the issue-15 bound on p99 at 70% load: 2 x (max wait + one full batch's compute)
        "latency_bound_ms": round(2 * (settings.max_wait_ms + 1000 * args.batch_size / raw), 1),
        "requests": len(expected) + len(latency_expected),
        "wire_encode_us": round(encode_us, 1), "wire_decode_us": round(decode_us, 1),
    }
    result.update(split)
    result.update(workers)
    result.update(without_path)
    if profile is not None:
        result["profile"] = profile
    if tls is not None:
        result.update(ratio_tls=tls["ratio"], stream_tls_per_s=tls["stream_per_s"], raw_ort_tls_per_s=tls["raw_ort_per_s"])
    say(f"latency at {rate:,.0f}/s: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; lost {lost}, duplicates "
        f"{duplicates} ({non_identical} not byte-identical); mean batch {result['mean_batch_size']} of {args.batch_size}")
    return result
