"""``auditstream serve --workers 2`` on the embedded broker: both workers join the group and
split the partitions, every request is answered once, SIGTERM stops all of them cleanly; a
worker killed from outside stops the service with exit 1 and a line naming it; ``--shadow
--version V --workers 2`` starts shadow workers, in the shadow group, that write flagged
predictions only (before, each worker was started as ``serve --model M --version V``: a live
consumer of the candidate in the live group, writing decisions); a SIGKILLed supervisor's
workers each drain and exit 0 (before, they served on as orphans nobody stopped). The thread
share, the per-worker environment and every serve option reaching each worker's command line
are checked without processes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests.serving.kafka_readers import read_topic

from auditstream import topics as T
from auditstream.cli import build_parser, main
from auditstream.errors import BadArguments, ConfigError
from auditstream.kafka import make_producer
from auditstream.settings import Settings
from auditstream.wire import Prediction
from stack.broker import free_port
from serving import workers
from serving.app import group_id, shadow_group_id
from serving.loadgen import inputs_for, produce_requests
from serving.workers import Supervisor, threads_per_worker, worker_argv, worker_env
from tests.serving.kafka_readers import committed_offsets


@pytest.mark.parametrize("configured, cores, workers, expected", [(0, 16, 4, 4), (0, 2, 4, 1), (0, 16, 3, 5), (3, 16, 4, 3)])
def test_threads_per_worker(configured: int, cores: int, workers: int, expected: int) -> None:
    assert threads_per_worker(configured, cores, workers) == expected


def test_worker_env_gives_each_its_threads_and_metrics_port() -> None:
    env = worker_env(Settings(metrics_port=9100, max_batch_size=32), 2, 4, 16, base={"PATH": "/bin"})
    assert env["AUDITSTREAM_INTRA_OP_THREADS"] == "4" and env["AUDITSTREAM_METRICS_PORT"] == "9102"
    assert env["AUDITSTREAM_MAX_BATCH_SIZE"] == "32" and env["PATH"] == "/bin"
    assert worker_env(Settings(), 1, 2, 2, base={})["AUDITSTREAM_METRICS_PORT"] == "0"  # off stays off


def test_workers_do_not_repeat_the_supervisors_unknown_variable_warnings() -> None:
    """The supervisor warns once about a misspelt variable; N workers repeated it N times."""
    base = {"PATH": "/bin", "AUDITSTREAM_BOOTSTRAP_SERVER": "kafka:9092", "AUDITSTREAM_TEST_POSTGRES_URL": "x",
            "AUDITSTREAM_DASHBOARD_SERVICE_HOST": "10.0.0.5"}
    env = worker_env(Settings(), 0, 2, 2, base=base)
    assert "AUDITSTREAM_BOOTSTRAP_SERVER" not in env
    assert env["AUDITSTREAM_TEST_POSTGRES_URL"] == "x" and env["AUDITSTREAM_DASHBOARD_SERVICE_HOST"] == "10.0.0.5"
    assert env["PATH"] == "/bin" and "AUDITSTREAM_BOOTSTRAP_SERVERS" in env  # the settings themselves


def _serve_options(argv: list[str]) -> dict:
    """``serve``'s own options as the CLI parses ``argv`` (without --workers)."""
    parsed = vars(build_parser().parse_args(["serve", *argv]))
    return {k: v for k, v in parsed.items() if k not in ("command", "handler", "log_level", "workers")}


@pytest.mark.parametrize("argv", [
    ["--model", "tiny"],
    ["--model", "tiny", "--version", "5"],
    ["--model", "tiny", "--version", "5", "--shadow"],
    ["--shadow", "--version", "12", "--model=-odd"],  # a value that starts like an option
])
def test_each_worker_is_started_with_every_serve_option(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI: the worker's command line, parsed as the worker parses it, is the same
    ``serve`` (workers = 1). Any serve option added later takes this path too, or is refused."""
    supervisors: list[Supervisor] = []
    monkeypatch.setattr(Supervisor, "run", lambda self: supervisors.append(self) or 0)
    assert main(["--log-level", "debug", "serve", *argv, "--workers", "3"]) == 0
    [supervisor] = supervisors
    assert _serve_options(supervisor.args) == _serve_options(argv)
    assert ("--shadow" in supervisor.args) == ("--shadow" in argv)
    assert supervisor.settings.log_level == "DEBUG"  # --log-level reaches the workers through their settings


def test_the_workers_of_a_shadow_run_are_started_as_shadows(monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[list[str]] = []

    class Started:
        pid, returncode = 4242, None

        def __init__(self, argv: list[str], env: dict[str, str]) -> None:
            launched.append(argv)

    monkeypatch.setattr(workers.subprocess, "Popen", Started)
    Supervisor(Settings(), {"model": "tiny", "version": "5", "shadow": True}, 2, command=["serve"]).start()
    assert launched == [["serve", "--model=tiny", "--version=5", "--shadow", f"--supervisor-pid={os.getpid()}"]] * 2


def test_an_option_the_supervisor_cannot_pass_on_is_refused() -> None:
    assert worker_argv({"model": "m", "version": "", "shadow": False, "limit": None}) == ["--model=m"]
    with pytest.raises(BadArguments, match=r"cannot pass --tags=\['a'\] on to its workers"):
        worker_argv({"model": "m", "tags": ["a"]})


def test_a_metrics_port_without_room_for_every_worker_is_refused_before_any_starts() -> None:
    with pytest.raises(ConfigError, match="AUDITSTREAM_METRICS_PORT=65535: expected a port from 1 to 65534"):
        Supervisor(Settings(metrics_port=65535), {"model": "tiny"}, 2)
    assert Supervisor(Settings(metrics_port=65534), {"model": "tiny"}, 2).workers == 2
    for count in (0, 1025):
        with pytest.raises(ConfigError, match="--workers"):
            Supervisor(Settings(), {"model": "tiny"}, count)


def test_shadow_without_a_version_is_one_line_before_anything_starts(monkeypatch, capsys) -> None:
    monkeypatch.setattr(Supervisor, "start", lambda self: pytest.fail("workers started"))
    monkeypatch.setattr("serving.app.ModelRegistry.from_settings", lambda settings: pytest.fail("model loaded"))
    for workers_n in ("1", "2"):
        assert main(["serve", "--model", "tiny", "--shadow", "--workers", workers_n]) == 2
        err = capsys.readouterr().err
        assert err.startswith("auditstream: error: serve --shadow needs --version V") and len(err.splitlines()) == 1


def _free_port_pair() -> int:
    return free_port(2)  # below the ephemeral range: a Kafka client's connection cannot take it meanwhile


def _assigned(port: int, model: str = "tiny") -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("auditstream_serve_assigned_partitions{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def _start(settings: Settings, port: int, log: Path, *serve: str) -> subprocess.Popen:
    env = {**os.environ, **settings.to_env(), "AUDITSTREAM_METRICS_PORT": str(port), "AUDITSTREAM_MAX_BATCH_SIZE": "16",
           "AUDITSTREAM_LOG_LEVEL": "INFO"}
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "auditstream.cli", "serve", "--model", "tiny", "--workers", "2",
                                 *serve], env=env, stdout=f, stderr=subprocess.STDOUT)


def _wait_split(port: int, timeout_s: float) -> list[float | None]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        parts = [_assigned(port), _assigned(port + 1)]
        if all(p for p in parts) and sum(parts) == 12:  # type: ignore[arg-type]
            return parts
        time.sleep(0.5)
    return parts


@pytest.mark.kafka
@pytest.mark.slow
def test_two_workers_split_the_group_answer_everything_and_stop_on_sigterm(stream_settings: Settings,
                                                                           tmp_path: Path) -> None:
    settings, log = stream_settings, tmp_path / "serve.log"
    _split_answer_and_stop(settings, log, 400)
    text = log.read_text()
    assert text.count("worker ") >= 2 and " ERROR " not in text and "Traceback" not in text
    assert text.count("stopped after") == 2  # each worker drained and said so


@pytest.mark.kafka
@pytest.mark.slow
def test_a_dead_worker_stops_the_service_with_exit_1(stream_settings: Settings, tmp_path: Path) -> None:
    settings, port, log = stream_settings, _free_port_pair(), tmp_path / "serve.log"
    proc = _start(settings, port, log)
    try:
        assert all(_wait_split(port, 90)), log.read_text()[-3000:]
        victim = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()[0])
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(timeout=90) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"(pid {victim}) exited with status -9" in log.read_text()


PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="waits for the orphans as their adopter: Linux's PR_SET_CHILD_SUBREAPER")


@contextlib.contextmanager
def adopting_orphans():
    """This process adopts any descendant orphaned meanwhile (as init would), so a test can wait
    for the workers of a killed supervisor and read their exit status."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    assert prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1)) == 0, os.strerror(ctypes.get_errno())
    try:
        yield
    finally:
        prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(0))


def _exit_status(pid: int, timeout_s: float) -> int | None:
    """The exit status of adopted process ``pid`` (-N: killed by signal N); None when it still ran
    after ``timeout_s`` (it is then killed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [p for child in map(int, children) for p in (child, *_descendants(child))]


def _running(pid: int) -> bool:
    """Running; a zombie (ended, not yet reaped) is not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.kafka
@pytest.mark.slow
@linux_only
def test_the_workers_of_a_killed_supervisor_drain_and_exit_0(stream_settings: Settings, tmp_path: Path) -> None:
    """SIGKILL to the supervisor (kill -9, the OOM killer) gives it no chance to pass SIGTERM on:
    each worker gets it from the kernel, drains, checkpoints and exits 0, and nothing the service
    started keeps running. Before, both workers went on consuming, orphans nobody stopped."""
    settings, port, log = stream_settings, _free_port_pair(), tmp_path / "serve.log"
    with adopting_orphans():
        proc = _start(settings, port, log)
        try:
            assert all(_wait_split(port, 90)), log.read_text()[-3000:]
            tree = _descendants(proc.pid)
            workers_started = [int(p) for p in subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()]
            proc.kill()
            assert proc.wait(timeout=30) == -signal.SIGKILL
            statuses = {pid: _exit_status(pid, 90) for pid in workers_started}
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert len(workers_started) == 2 and statuses == dict.fromkeys(workers_started, 0), f"{statuses}\n{text[-3000:]}"
    assert text.count("stopped after") == 2, text[-3000:]  # each drained and said so
    assert [pid for pid in tree if _running(pid)] == []


# A worker of a stand-in supervisor: follows it, prints its pid, and exits 0 on SIGTERM (serve's
# loop drains first); argv: the supervisor's pid, "prctl" or "polled" (as where prctl is missing).
FOLLOWER = """
import os, signal, sys, time
from serving import workers
if sys.argv[2] == "polled":
    workers._parent_death_signal = lambda signum: False
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
workers.follow_supervisor(int(sys.argv[1]))
print(os.getpid(), flush=True)
time.sleep(120)
sys.exit(3)
"""
STAND_IN = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
time.sleep(120)
"""


@linux_only
@pytest.mark.parametrize("mechanism", ["prctl", "polled"])
def test_a_worker_gets_sigterm_when_its_supervisor_is_killed(mechanism: str) -> None:
    """Both ways of following the supervisor, without a broker: the kernel's parent-death signal
    (Linux) and the fallback that polls the parent pid (elsewhere)."""
    with adopting_orphans():
        stand_in = subprocess.Popen([sys.executable, "-c", STAND_IN, FOLLOWER, mechanism], stdout=subprocess.PIPE,
                                    text=True)
        try:
            worker = int(stand_in.stdout.readline())  # type: ignore[union-attr]
            stand_in.kill()
            stand_in.wait()
            status = _exit_status(worker, 30)
        finally:
            stand_in.kill()
            stand_in.wait()
            stand_in.stdout.close()  # type: ignore[union-attr]
    assert status == 0


def test_a_worker_whose_supervisor_has_ended_does_not_start(tmp_path: Path) -> None:
    """The supervisor died before its worker got to follow it (the worker now has another
    parent): one line, exit 2, before any model is loaded (the registry here is empty)."""
    ended = subprocess.Popen(["true"])
    ended.wait()  # its pid is nobody's parent now
    run = subprocess.run([sys.executable, "-m", "auditstream.cli", "serve", "--model", "tiny",
                          f"--supervisor-pid={ended.pid}"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "AUDITSTREAM_MODELS_DIR": str(tmp_path / "empty")})
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith(f"auditstream: error: serve --supervisor-pid {ended.pid}: that process is not "
                                 "this one's parent"), run.stderr


@pytest.mark.kafka
@pytest.mark.slow
def test_a_shadow_run_starts_shadow_workers_in_the_shadow_group(stream_settings: Settings, tmp_path: Path) -> None:
    """Both workers read the live requests in the shadow group and write flagged predictions
    only: no decisions, no commits in the live group."""
    settings, log = stream_settings, tmp_path / "serve.log"
    predictions = _split_answer_and_stop(settings, log, 120, "--version", "1", "--shadow")
    assert all(Prediction.from_bytes(p.value).shadow for p in predictions)
    text = log.read_text()
    assert text.count(" in shadow from ") == 2 and "Traceback" not in text, text[-3000:]
    assert sum(committed_offsets(settings, shadow_group_id(settings, "tiny", "1")).values()) == 120
    assert committed_offsets(settings, group_id(settings, "tiny")) == {}
    assert read_topic(settings, settings.topic(T.DECISIONS), timeout_s=10) == []


def _split_answer_and_stop(settings: Settings, log: Path, count: int, *serve_args: str) -> list:
    """``serve --workers 2 [serve_args]``: the two workers split the 12 partitions, every one of
    ``count`` requests is answered, and SIGTERM stops the service with exit 0; the predictions."""
    port = _free_port_pair()
    proc = _start(settings, port, log, *serve_args)
    try:
        parts = _wait_split(port, 90)
        assert parts == [6, 6], f"assigned partitions per worker: {parts}; log:\n{log.read_text()[-3000:]}"
        producer = make_producer(settings)
        try:
            sent = produce_requests(producer, settings.request_topic("tiny"), "tiny",
                                    inputs_for(settings_card(settings), "random"), count, 0.0, progress=False)
        finally:
            producer.close()
        predictions = read_topic(settings, settings.topic(T.PREDICTIONS), until_count=count, timeout_s=90, idle_s=5)
        assert sorted({p.key.decode() for p in predictions}) == sorted(sent.request_ids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    return predictions


def settings_card(settings: Settings):
    from auditstream.registry import ModelRegistry

    return ModelRegistry(settings.models_dir).card("tiny")


def test_a_sigterm_while_a_worker_is_being_started_stops_that_worker_too(monkeypatch) -> None:
    """The handler runs while Popen starts worker 1: stop() cannot signal a process not yet in
    the list, so start() must. (Before: worker 1 ran on until the drain deadline, was killed,
    and the service exited 1.)"""
    worker = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
              "time.sleep(120)\n")
    real_popen = subprocess.Popen
    supervisor = Supervisor(Settings(delivery_timeout_s=1.0), {"model": "tiny"}, 2,
                            command=[sys.executable, "-c", worker])

    def popen_during_which_sigterm_arrives(*args, **kwargs):
        supervisor.stop()  # as the SIGTERM handler would, between fork and the list's append
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(workers.subprocess, "Popen", popen_during_which_sigterm_arrives)
    monkeypatch.setattr(workers.signal, "signal", lambda *a: None)  # run()'s handlers stay out of pytest
    assert supervisor.run() == 0
    assert len(supervisor.procs) == 1, "a worker started after the stop"
    assert supervisor.procs[0].returncode in (0, -signal.SIGTERM)
