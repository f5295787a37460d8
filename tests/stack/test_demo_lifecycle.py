"""``auditstream demo`` on real processes, where it goes wrong: a second demo on the same state
dir is refused before it touches the first one's broker or auditor account, a model whose
training fails ends the demo with one line of its own (no traceback), everything stopped, and the
demo stops only the broker it launched: one that ran before it, or one started after its own was
stopped (which ends the demo, in one line), keeps running.

The registry is seeded with the tiny stand-ins of tests/stack/test_demo.py (no torch).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack.test_demo import free_port_block, seed_registry

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _demo_env(models: Path, state: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "AUDITSTREAM_MODELS_DIR": str(models), "AUDITSTREAM_STATE_DIR": str(state),
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **extra}
    env.pop("AUDITSTREAM_BOOTSTRAP_SERVERS", None)  # the demo starts its own embedded broker
    return env


def _demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "auditstream.cli", "demo", "--dashboard-port", "0", "--rate-per-s", "1",
            "--digits-rate-per-s", "1", "--labels-rate-per-s", "0", "--scenes-rate-per-s", "0",
            "--metrics-port-base", str(free_port_block()), "--report-every-s", "2", *args]


def _password_hash(state: Path) -> str:
    with sqlite3.connect(state / "audit.db") as db:
        return db.execute("SELECT password_hash FROM users WHERE name = 'demo'").fetchone()[0]


def _tansu_of(state: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"tansu" in (entry / "cmdline").read_bytes() and \
                    os.readlink(entry / "fd" / "1").startswith(str(state.resolve()) + "/"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_second_demo_on_the_same_state_dir_is_refused_before_it_touches_the_first(tmp_path: Path) -> None:
    """It reset the running demo's auditor password (the one the first demo printed stopped
    working), then failed on a busy metrics port or ran on beside it, sharing its log files."""
    models, state = tmp_path / "models", tmp_path / "state"
    seed_registry(models)
    env = _demo_env(models, state)
    first = subprocess.Popen(_demo(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    out: list[str] = []
    try:
        for line in first.stdout:  # type: ignore[union-attr]
            out.append(line)
            if line.startswith("logs in "):  # broker, account and children up
                break
        assert first.poll() is None, "".join(out)[-3000:]
        before = _password_hash(state)
        second = subprocess.run(_demo("--duration-s", "20"), env=env, capture_output=True, text=True, timeout=180,
                                cwd=REPO)
        assert second.returncode == 1, (second.returncode, second.stdout[-2000:], second.stderr[-2000:])
        assert second.stderr.strip() == (f"auditstream demo: another demo is running on this state dir ({state}, pid "
                                         f"{first.pid}); stop it or use another AUDITSTREAM_STATE_DIR"), second.stderr
        assert "embedded broker" not in second.stdout
        assert _password_hash(state) == before, "the second demo reset the running demo's password"
        assert first.poll() is None, "the first demo stopped"
        first.send_signal(signal.SIGTERM)
        rest, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:  # the test failed half way: still the demo's own clean stop
            first.send_signal(signal.SIGTERM)
            try:
                first.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                first.kill()
                first.wait()
    assert first.returncode == 0 and rest.rstrip().endswith("demo stopped"), rest[-2000:]
    assert not _tansu_of(state) and not (state / "broker.json").exists()


def test_a_failed_training_ends_the_demo_in_one_line_and_stops_what_it_started(tmp_path: Path) -> None:
    """--retrain with a training child that fails (a torch that cannot load stands in for an
    out-of-memory kill): the demo said so with a CalledProcessError traceback of its own."""
    fake = tmp_path / "faketorch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("simulated: training failed")\n')
    models, state = tmp_path / "models", tmp_path / "state"
    env = _demo_env(models, state, PYTHONPATH=f"{fake.parent}{os.pathsep}{REPO}")
    done = subprocess.run(_demo("--retrain", "--duration-s", "5"), env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 1, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last == ("auditstream demo: training digits failed (exit 1); see its output above, or run "
                    "'auditstream train digits' on its own"), done.stderr[-3000:]
    # the child's own traceback is its output; the demo adds none of its own
    assert "CalledProcessError" not in done.stderr and "stack/demo.py" not in done.stderr, done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("demo stopped"), done.stdout[-2000:]
    assert not _tansu_of(state) and not (state / "broker.json").exists()


def _broker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditstream.cli", "broker", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_a_demo_whose_broker_was_stopped_ends_saying_so_and_leaves_the_broker_started_since(tmp_path: Path) -> None:
    """Review 2026-12-05: after 'broker stop; broker start --durable' beside a running demo, the
    demo counted "sent" on into a dead broker, filled its log with librdkafka's "Connection
    refused", and its clean-up then stopped the user's new broker (whatever broker.json named)."""
    models, state = tmp_path / "models", tmp_path / "state"
    seed_registry(models)
    env = _demo_env(models, state)
    # long enough for 'broker stop' (Tansu takes up to 10 s to exit) and 'broker start' on a loaded machine
    errors = open(tmp_path / "demo.err", "w+")  # (a pipe left unread while the broker stops could fill up)
    demo = subprocess.Popen(_demo("--duration-s", "150"), env=env, stdout=subprocess.PIPE, stderr=errors, text=True,
                            cwd=REPO)
    out: list[str] = []
    try:
        for line in demo.stdout:  # type: ignore[union-attr]
            out.append(line)
            if line.startswith("logs in "):
                break
        demos = json.loads(_broker(env, "status").stdout)
        assert _broker(env, "stop").stdout.strip() == "broker stopped"
        started = _broker(env, "start")
        assert started.returncode == 0, started.stderr[-2000:]
        theirs = json.loads(_broker(env, "status").stdout)
        rest, _ = demo.communicate(timeout=150)
        text, err = "".join(out) + rest, (tmp_path / "demo.err").read_text()
        assert demo.returncode == 1, (demo.returncode, text[-3000:], err[-3000:])
        said = [line for line in err.splitlines() if line.startswith("auditstream demo:")]
        assert said == [f"auditstream demo: the embedded broker it started (pid {demos['pid']}, {demos['bootstrap']}) "
                        f"stopped; the demo stops too (broker log {demos['log']})"], err[-3000:]
        # (the demo may notice before the new broker is up: then the line names none running now)
        assert (f"stopping the demo's processes (the embedded broker it started, pid {demos['pid']}, has stopped "
                "already") in text, text[-3000:]
        assert text.rstrip().endswith("demo stopped"), text[-2000:]
        after = _broker(env, "status")
        assert after.returncode == 0 and json.loads(after.stdout)["pid"] == theirs["pid"], "the demo stopped it"
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
            try:
                demo.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
        errors.close()
        _broker(env, "stop")
    assert not _tansu_of(state)


def test_a_broker_that_ran_before_the_demo_is_used_and_left_running_saying_so(tmp_path: Path) -> None:
    """The demo left it running, but said "stopping the demo: its processes, then the broker"."""
    models, state = tmp_path / "models", tmp_path / "state"
    seed_registry(models)
    env = _demo_env(models, state)
    try:
        assert _broker(env, "start").returncode == 0
        theirs = json.loads(_broker(env, "status").stdout)
        done = subprocess.run(_demo("--duration-s", "4"), env=env, capture_output=True, text=True, timeout=180,
                              cwd=REPO)
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
        assert (f"embedded broker (Tansu) at {theirs['bootstrap']} (pid {theirs['pid']}, running before the demo: it "
                "stays running)") in done.stdout, done.stdout
        assert (f"stopping the demo's processes (the embedded broker at {theirs['bootstrap']}, pid {theirs['pid']}, "
                "is not the demo's: it keeps running)") in done.stdout, done.stdout
        after = _broker(env, "status")
        assert after.returncode == 0 and json.loads(after.stdout)["pid"] == theirs["pid"]
    finally:
        _broker(env, "stop")
    assert not _tansu_of(state)
