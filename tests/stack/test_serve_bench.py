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
        "batch_size", "max_wait_ms", "ratio_tls", "stream_tls_per_s"}


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
