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
        "latency_bound_ms", "served_ms", "cpu_us_per_record", "cpu_ratio"}


def test_bench_serve_json_line(stream_settings: Settings) -> None:
    env = dict(os.environ, AUDITSTREAM_BOOTSTRAP_SERVERS=stream_settings.bootstrap_servers,
               AUDITSTREAM_MODELS_DIR=str(stream_settings.models_dir), AUDITSTREAM_LOG_LEVEL="WARNING")
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "bench", "serve", "--json", "--model", "tiny",
                           "--count", "640", "--latency-count", "200", "--client", "confluent"],
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
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["latency_budget_ms"] == 100
    assert result["requests"] == 640 + 640 + 200 + 2 * 64  # max rate, workers' drain, latency, warm-up
    sections = result["profile"]["sections_us_per_record"]
    assert sections["  ONNX Runtime"] > 0 and sections["produce (client send)"] > 0
    assert sections["loop total"] >= sections["process_batch"] >= sections["  decode requests"]
    assert result["profile"]["thread_cpu_us_per_record"]["loop"] > 0
