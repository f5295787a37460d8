"""``scripts/gpu-check`` on a machine without a GPU: it still prints one JSON object, measures what
the host has (raw ONNX Runtime on the CPU), and lists what it could not measure and why; a bad
``--skip`` is refused with a line that says what to write instead.

The GPU steps themselves ran on an H100 host on 2026-12-05 (docs/serving.md, "A GPU host"); no test
needs one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from auditstream.settings import Settings

from stack.gpu_check import SERVE_CLIENTS, parse_skip, serve_counts

REPO = Path(__file__).resolve().parents[2]


def test_parse_skip_takes_known_steps_and_refuses_others() -> None:
    assert parse_skip("train, serve") == {"train", "serve"}
    assert parse_skip("") == set()
    with pytest.raises(argparse.ArgumentTypeError, match="raw, serve, train"):
        parse_skip("train,gpu")


def test_a_fast_host_drains_enough_requests_to_measure_the_stream_not_the_start() -> None:
    assert serve_counts(2, gpu=False) == (3200, 600)
    assert serve_counts(16, gpu=False) == serve_counts(2, gpu=True) == (20000, 3000)
    assert SERVE_CLIENTS[0] == Settings().kafka_client  # the default client measured first


def test_a_cpu_host_gets_one_json_object_with_cpu_numbers_and_what_is_missing() -> None:
    done = subprocess.run([str(REPO / "scripts" / "gpu-check"), "--skip", "serve,train", "--measure-s", "0.2"],
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)  # the whole of stdout is the one object
    assert report["providers_loading"][-1] == "CPUExecutionProvider"
    cpu = report["raw_ort_per_s"]["CPUExecutionProvider"]
    assert set(cpu) == {"1", "64", "256"}
    assert all(cpu[b]["per_s"] > 0 and cpu[b]["used"] == "CPUExecutionProvider" for b in cpu)
    build = report["environment"]["onnxruntime_build"]
    assert build["version"] and build["preload"]
    assert "bench_serve" not in report and "training_steps" not in report  # skipped, not reported empty
    if "CUDAExecutionProvider" not in report["providers_loading"]:
        assert any(m.startswith("CUDAExecutionProvider") for m in report["missing"]), report["missing"]


@pytest.mark.parametrize("argv, said", [(["--skip", "gpu"], "expected a comma-separated list of raw, serve, train"),
                                        (["--measure-s", "nan"], "invalid --measure-s=nan: expected a number from 0.01"),
                                        (["--measure-s", "1e9"], "invalid --measure-s=1000000000.0")])
def test_a_bad_option_is_refused_before_any_work(argv: list[str], said: str) -> None:
    done = subprocess.run([str(REPO / "scripts" / "gpu-check"), *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert said in done.stderr
