"""``auditstream bench serve`` end to end on a small run: the JSON line has its keys, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from auditstream.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

KEYS = {"raw_ort_per_s", "stream_per_s", "ratio", "p50_ms", "p99_ms", "lost", "duplicates", "client",
        "wire_encode_us", "wire_decode_us", "overhead_us_per_record", "non_identical_duplicates", "mean_batch_size",
        "batch_size", "max_wait_ms", "ratio_tls", "stream_tls_per_s", "raw_client_per_s", "latency_budget_ms",
        "latency_bound_ms", "served_ms", "cpu_us_per_record", "cpu_ratio", "load_generator_client",
        "latency_cpu_cores"}


def test_bench_serve_json_line(stream_settings: Settings) -> None:
    env = dict(os.environ, AUDITSTREAM_BOOTSTRAP_SERVERS=stream_settings.bootstrap_servers,
               AUDITSTREAM_MODELS_DIR=str(stream_settings.models_dir), AUDITSTREAM_LOG_LEVEL="WARNING")
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "bench", "serve", "--json", "--model", "tiny",
                           "--count", "640", "--latency-count", "200", "--client", "confluent", "--without-path"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert KEYS <= result.keys()
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["client"] == "confluent"
    assert result["non_identical_duplicates"] == 0 and 1 <= result["mean_batch_size"] <= 64
    assert result["requests"] == 640 + 200 + 2 * 64 and result["stream_per_s"] > 0 and result["p99_ms"] >= result["p50_ms"]
    assert result["ratio_tls"] > 0 and result["stream_tls_per_s"] > 0  # the same drain over TLS
    # the client alone (no model) is faster than the whole path
    assert result["raw_client_per_s"] > result["stream_per_s"]
    assert set(result["served_ms"]) == {"queued", "batch_compute", "delivery"}
    # the same drain with the path taken out (its answers are not the requests': not counted above)
    assert result["stream_without_path_per_s"] > 0 and result["ratio_without_path"] > 0
    # where the drain's wall time went: shares that add up to the whole, the model's among them
    split = result["drain_wall_share"]
    assert set(split) == {"model", "path", "poll", "produce", "checkpoint", "rest"}
    assert abs(sum(split.values()) - 1) < 0.01 and 0 < split["model"] < 1 and split["path"] > 0
    assert result["model_in_stream_per_s"] > 0


def test_bench_serve_with_workers_and_profile(stream_settings: Settings) -> None:
    env = dict(os.environ, AUDITSTREAM_BOOTSTRAP_SERVERS=stream_settings.bootstrap_servers,
               AUDITSTREAM_MODELS_DIR=str(stream_settings.models_dir), AUDITSTREAM_LOG_LEVEL="WARNING",
               AUDITSTREAM_LATENCY_BUDGET_MS="100")
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "bench", "serve", "--json", "--model", "tiny",
                           "--count", "640", "--latency-count", "200", "--client", "kafka-python", "--no-tls",
                           "--workers", "2", "--profile"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["workers"] == 2 and result["stream_workers_per_s"] > 0 and "ratio_workers" in result
    # the rate is the requests over the drain, timed from the start of their production
    assert 0 < result["workers_produce_s"] <= result["workers_drain_s"]
    assert result["stream_workers_per_s"] == pytest.approx(640 / result["workers_drain_s"], rel=0.01)
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["latency_budget_ms"] == 100
    assert result["requests"] == 640 + 640 + 200 + 2 * 64  # max rate, workers' drain, latency, warm-up
    sections = result["profile"]["sections_us_per_record"]
    assert sections["  ONNX Runtime"] > 0 and sections["produce (client send)"] > 0
    assert sections["loop total"] >= sections["process_batch"] >= sections["  decode requests"]
    assert result["profile"]["thread_cpu_us_per_record"]["loop"] > 0
    # the server runs the client under test; the pacing producer and the readers are the load
    # generator's (librdkafka: the cheapest on the cores the server needs)
    assert result["client"] == "kafka-python" and result["load_generator_client"] == "confluent"
    cores = result["latency_cpu_cores"]
    assert cores["serve"] > 0 and cores["load_generator"] > 0
    assert cores["broker"] is None  # not the bench's own broker: its CPU is not read


def test_load_generator_falls_back_to_the_client_under_test(monkeypatch: pytest.MonkeyPatch) -> None:
    from stack.serve_bench import load_generator_client

    assert load_generator_client("kafka-python") == "confluent"
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # import fails: not installed
    assert load_generator_client("kafka-python") == "kafka-python"


def test_cores_used_per_process() -> None:
    from stack.serve_bench import _cores_used

    before = {"serve": 10.0, "broker": None, "load_generator": 1.0}
    after = {"serve": 13.0, "broker": 5.0, "load_generator": 1.5}
    assert _cores_used(before, after, 2.0) == {"serve": 1.5, "broker": None, "load_generator": 0.25}
    assert _cores_used(before, after, 0.0) == {"serve": None, "broker": None, "load_generator": None}


def test_ratios_keep_three_significant_digits() -> None:
    # The tiny model's raw ONNX Runtime rate (~5 M/s) is ~1,000x a stream's: rounded to three
    # decimals a loaded machine's TLS drain (~2,000/s) read 0.0 and failed the check above.
    from stack.serve_bench import _ratio

    assert _ratio(2_000, 4.9e6) == 0.000408 and _ratio(378, 412.6) == 0.916


def test_the_drain_split_factors_the_ratio() -> None:
    from auditstream.stream import LoopStats
    from stack.serve_bench import drain_split

    # 10 s of drain: 8 s in the model, 1 s in the rest of process_batch, 0.5 s checkpoints
    stats = LoopStats(records_in=1000, first_record_at=100.0, last_commit_at=110.0, process_s=9.0, poll_s=0.2,
                      produce_s=0.3, checkpoint_s=0.5)
    split = drain_split(stats, model_s=8.0)
    assert split == {"model": 0.8, "path": 0.1, "poll": 0.02, "produce": 0.03, "checkpoint": 0.05, "rest": 0.0}
    # stream rate = model's own rate in the drain × its share of the wall time
    assert stats.drain_rate_per_s == (1000 / 8.0) * split["model"]
    assert drain_split(LoopStats(records_in=5), model_s=1.0) == {}  # nothing committed: no wall time to split
