"""The fork server the model checks run in: a request's reply never answers another request,
a dead or stuck server is no verdict on the model, the server keeps no request's bytes, and the
child's limits say what ran out."""

from __future__ import annotations

import os
import resource
import signal
import threading
import time

import pytest

from auditstream import model_sandbox as ms
from auditstream.errors import ModelRefused

pytest.importorskip("onnx")


# Tasks: module-level, so the fork server can unpickle them.
def echo(data: bytes) -> int:
    return len(data)


def sleep_then(value: str, seconds: float) -> str:
    time.sleep(seconds)
    return value


def refuse(why: str) -> None:
    raise ModelRefused("", why)


def kill_the_server() -> None:
    os.kill(os.getppid(), signal.SIGKILL)  # the child's parent is the fork server
    time.sleep(3)


def stop_the_server() -> None:
    os.kill(os.getppid(), signal.SIGSTOP)


def run(task, args, **kw):
    kw.setdefault("key", None)
    return ms.run_checked(task, args, what="test", path="m.onnx", memory_bytes=1 << 30, **kw)


def test_an_interrupted_request_never_answers_the_next_one() -> None:
    """A KeyboardInterrupt while waiting left the reply in the pipe: the next check read it and
    cached a refused model as passed."""
    def interrupt(*_):
        raise KeyboardInterrupt

    ms.prestart()
    interrupted = ms._server
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            run(sleep_then, ("answer of the first request", 2.0))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    with pytest.raises(ModelRefused, match="hostile model refused"):
        run(refuse, ("hostile model refused",), key=("test-hostile", time.time()))
    assert run(echo, (b"abc",)) == 3
    assert interrupted.returncode is not None  # killed and reaped, not left with a reply in its pipe


def test_a_server_dying_mid_request_is_retried_on_a_fresh_one() -> None:
    ms.prestart()
    old = ms._server
    threading.Timer(1.0, old.kill).start()
    assert run(sleep_then, ("fine", 2.5)) == "fine"
    assert old.returncode is not None  # reaped, not a zombie


def test_a_server_that_dies_twice_is_no_verdict_on_the_model() -> None:
    with pytest.raises(ms.CheckerFailed, match="the model checking process failed .* not a verdict on the model"):
        run(kill_the_server, (), key=("test-dies", time.time()))
    assert run(echo, (b"ok",)) == 2


def test_a_stuck_server_does_not_block_the_caller_for_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    ms.prestart()
    run(echo, (b"",))  # started and answering: the start-up allowance below is for the stuck request only
    monkeypatch.setattr(ms, "SERVER_START_S", 1.0)
    stuck = ms._server
    started = time.monotonic()
    with pytest.raises(ms.CheckerFailed, match="no answer within"):
        run(stop_the_server, (), timeout_s=1.0)
    assert time.monotonic() - started < 10
    assert stuck.returncode is not None and ms._server is None


def test_the_server_runs_in_its_own_session() -> None:
    """A terminal's Ctrl-C reaches the caller only (the server printed a BrokenPipeError traceback)."""
    ms.prestart()
    assert os.getsid(ms._server.pid) != os.getsid(0)


def test_the_server_keeps_no_request_bytes_after_replying() -> None:
    def rss(pid: int) -> int:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    run(echo, (b"",))
    before = rss(ms._server.pid)
    assert run(echo, (b"x" * (100 << 20),)) == 100 << 20
    assert rss(ms._server.pid) - before < 50 << 20


def test_cpu_soft_limit_comes_a_second_before_the_hard_one() -> None:
    """soft == hard made the kernel send SIGKILL, reported as "likely out of memory"."""
    inf = resource.RLIM_INFINITY
    assert ms._limits(61, inf, 1) == (61, 62)
    assert ms._limits(61, 30, 1) == (29, 30)  # a lower hard limit set outside stays
    assert ms._limits(10**9, inf, 0) == (10**9, 10**9)
    # A SIGKILL after the CPU time ran out is the CPU limit's, not the OOM killer's.
    assert "(CPU time)" in ms._death("ONNX Runtime", ("signal", signal.SIGKILL, 12.0), 10.0, 1 << 30)
    assert "likely out of memory" in ms._death("ONNX Runtime", ("signal", signal.SIGKILL, 0.5), 10.0, 1 << 30)
    assert "(CPU time)" in ms._death("ONNX Runtime", ("signal", signal.SIGXCPU, 3.0), 10.0, 1 << 30)


def test_the_memory_limit_grows_with_the_model_file() -> None:
    """ONNX Runtime maps about 3 times a model's size to load it: a 1.94 GB model within the
    2 GiB budget was refused by a limit of budget + 1 GiB."""
    budget, size = 2 * 1024**3, 1_940_000_000
    assert ms.memory_limit(10**8, budget, size) == 10**8 + budget + 3 * size + ms.HEADROOM_BYTES
    assert ms.memory_limit(0, budget) == budget + ms.HEADROOM_BYTES
    text = ms._death("ONNX Runtime", ("signal", signal.SIGKILL, 0.0), 60.0, budget, size)
    assert "AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES" in text and "raise" in text and "3 times the model file" in text


def test_a_fixed_timeout_does_not_name_a_setting() -> None:
    assert "AUDITSTREAM_MODEL_CHECK_TIMEOUT_S" not in ms._slow("ONNX shape inference", 60.0, None)
    assert "AUDITSTREAM_MODEL_CHECK_TIMEOUT_S" in ms._slow("ONNX Runtime", 60.0)
