"""``scripts/gpu-check`` on a machine without a GPU: it still prints one JSON object, measures what
the host has (raw ONNX Runtime on the CPU), and lists what it could not measure and why; a bad
``--skip`` is refused with a line that says what to write instead.

The GPU steps themselves ran on an H100 host on 2026-12-05 (docs/serving.md, "A GPU host"); no test
needs one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditstream.settings import Settings
from stack import gpu_check
from stack.gpu_check import GRACE_S, MAX_BENCH_S, MIN_BENCH_S, SERVE_CLIENTS, bench_timeout, parse_skip, serve_counts

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


def test_a_bench_is_started_only_with_time_for_a_bench_and_its_clean_up() -> None:
    assert bench_timeout(MIN_BENCH_S + GRACE_S - 1) is None  # listed as missing instead of killed half-way
    assert bench_timeout(MIN_BENCH_S + GRACE_S) == MIN_BENCH_S
    assert bench_timeout(1000) == MAX_BENCH_S


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"  # reaped soon
    except (OSError, IndexError):
        return True


def test_a_bench_past_its_time_is_interrupted_then_its_process_group_ended(tmp_path, monkeypatch) -> None:
    # SIGINT first: the bench's own clean-up (finally blocks) stops the broker and serve processes it started
    cleaned = tmp_path / "cleaned"
    polite = f"import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    open({str(cleaned)!r}, 'w').close()\n"
    assert gpu_check.run_bounded([sys.executable, "-c", polite], dict(os.environ), 1.0) is None
    assert cleaned.exists()
    # a bench that ignores it is killed GRACE_S later, with the children in its process group
    pid_file = tmp_path / "child.pid"
    stubborn = ("import signal, subprocess, sys, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
                "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)'])\n"
                f"open({str(pid_file)!r}, 'w').write(str(child.pid))\ntime.sleep(60)\n")
    monkeypatch.setattr(gpu_check, "GRACE_S", 0.5)
    assert gpu_check.run_bounded([sys.executable, "-c", stubborn], dict(os.environ), 2.0) is None
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child), f"pid {child} outlived the bench"
    done = gpu_check.run_bounded([sys.executable, "-c", "print('out')"], dict(os.environ), 30)
    assert done is not None and done.returncode == 0 and done.stdout == "out\n"


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
