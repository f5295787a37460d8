"""A model's first contact with native code runs in a child process, never in the caller's.

ONNX shape inference and ONNX Runtime are C++: a hostile file can make them abort the process
(a 463-byte ``Expand``/``Slice`` hit an assertion: SIGABRT), run for ever (a ``Loop`` of 1e15
trips), hold the GIL for minutes (functions calling functions: exponential inlining) or allocate
without bound (``ConstantOfShape`` of a computed shape). In a serving process that would kill or
freeze the live version too -- a hot reload loads the next version beside it. So the first time a
process sees a model's bytes, each such step (:func:`run_checked`) runs in a child process with
a memory limit (``RLIMIT_AS``: what the child already maps, plus the model budget, plus
:data:`HEADROOM_BYTES`), a CPU limit
and a wall-clock timeout; a signal death, a timeout or an allocation failure becomes one
:class:`~auditstream.errors.ModelRefused` line saying what happened.

The children are forked from a fork server (a child interpreter of ours) that imported onnx and
ONNX Runtime once (importing onnx alone takes 1-3 s; a fork takes milliseconds): the first check of a
process pays one interpreter start, later ones (hot reloads, tests) do not. The fork server is a
fresh, single-threaded interpreter, so forking it is safe even when the caller runs Kafka and
ONNX Runtime threads. A check that passed is remembered for the process by its key (the bytes'
sha256 and the check's parameters) and not run again.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import IO, Any

from auditstream.errors import ModelRefused

# How long one check may take once its child started (serving passes AUDITSTREAM_MODEL_CHECK_TIMEOUT_S).
DEFAULT_TIMEOUT_S = 60.0
# What a child may map beyond what it maps at the fork: the model budget plus this (ONNX
# Runtime's arenas, the warm-up buffers, the parsed protobuf).
HEADROOM_BYTES = 1024**3
_PRELOAD = ("numpy", "onnx", "onnxruntime", "auditstream.model_safety")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `auditstream` is importable from
_passed: set[Hashable] = set()
_lock = threading.Lock()  # one request at a time to the fork server; guards _passed and _server
_server: subprocess.Popen | None = None


def _start_server() -> subprocess.Popen:
    """The fork server: this interpreter, this sys.path, the preloads imported once. Our own
    rather than multiprocessing's, which re-runs the caller's ``__main__`` script in every child."""
    server = subprocess.Popen([sys.executable, "-P", "-c", "from auditstream.model_sandbox import _serve; _serve()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=os.getcwd(),
                              env={**os.environ, "PYTHONPATH": _ROOT})
    pickle.dump(list(sys.path), server.stdin)  # type: ignore[arg-type]
    server.stdin.flush()  # type: ignore[union-attr]
    return server


def prestart() -> None:
    """Start the fork server now, so its imports overlap the caller's own start-up."""
    global _server
    with _lock:
        if _server is None or _server.poll() is not None:
            _server = _start_server()


def passed(key: Hashable) -> bool:
    with _lock:
        return key in _passed


def run_checked(task: Callable[..., Any], args: tuple, *, what: str, path: object, key: Hashable | None,
                memory_bytes: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """``task(*args)`` in a child process; its return value (picklable), or ModelRefused.

    ``task`` (a module-level function) raises ``ModelRefused`` for an ordinary refusal (passed
    on as is); ``what`` names the step in the messages ("ONNX Runtime", "ONNX shape inference").
    ``memory_bytes``: the model budget. With a ``key`` that passed before in this process nothing
    runs and None is returned."""
    global _server
    with _lock:
        if key is not None and key in _passed:
            return None
        if _server is None or _server.poll() is not None:
            _server = _start_server()
        try:
            pickle.dump((task, args, memory_bytes, timeout_s), _server.stdin)  # type: ignore[arg-type]
            _server.stdin.flush()  # type: ignore[union-attr]
            answer, status = pickle.load(_server.stdout)  # type: ignore[arg-type]
        except (OSError, EOFError, pickle.UnpicklingError) as e:
            _server.kill()
            _server = None
            raise ModelRefused(path, f"the model checking process failed ({e!r}): see its error output above") from None
    if answer is None:  # died without a word, or was killed at the timeout
        raise ModelRefused(path, _death(what, status, timeout_s, memory_bytes))
    kind, value = answer
    if kind == "refused":
        raise ModelRefused(path, value)
    if kind == "memory":
        raise ModelRefused(path, f"{what} needed more than {_size(memory_bytes + HEADROOM_BYTES)} of memory while "
                           f"checking the model (the model budget AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES plus "
                           f"{_size(HEADROOM_BYTES)}; {value}): not a model this project serves")
    if kind == "timeout":
        raise ModelRefused(path, _slow(what, timeout_s))
    if key is not None:
        with _lock:
            _passed.add(key)
    return value


def _death(what: str, status: tuple, timeout_s: float, memory_bytes: int) -> str:
    how, number = status
    if how == "timeout":
        return _slow(what, timeout_s)
    if how == "signal":
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        if number == signal.SIGXCPU:
            return _slow(what, timeout_s) + " (CPU time)"
        if number == signal.SIGKILL:  # not ours (that is a timeout): the OOM killer's
            return (f"{what} was killed (SIGKILL, likely out of memory) while checking the model "
                    f"(limit {_size(memory_bytes + HEADROOM_BYTES)}): not a model this project serves")
        return f"{what} crashed ({name}) while checking the model: the file is damaged or hostile; re-export it"
    return f"{what} exited with code {number} while checking the model: the file is damaged or hostile; re-export it"


def _slow(what: str, timeout_s: float) -> str:
    return (f"{what} took longer than {timeout_s:g} s to load and warm up the model "
            "(AUDITSTREAM_MODEL_CHECK_TIMEOUT_S): a graph that big or a loop that long is not a model this "
            "project serves; raise the setting if it is")


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 / 10 else f"{n:,} bytes"


def _mapped_bytes() -> int:
    """What this process maps now (VmSize); 0 where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def is_allocation_failure(error: BaseException) -> bool:
    """ONNX Runtime reports a failed allocation as its own exception, not MemoryError."""
    text = str(error)
    return isinstance(error, MemoryError) or any(s in text for s in ("bad_alloc", "bad allocation",
                                                                      "Failed to allocate", "std::length_error"))


def _serve() -> None:
    """The fork server's loop: one request (task, args, budget, timeout) at a time from stdin,
    run in a forked child; (answer or None, status) back on the original stdout."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what native code prints goes to stderr, never into a reply
    requests = sys.stdin.buffer
    sys.path[:] = pickle.load(requests)
    import importlib

    for name in _PRELOAD:
        importlib.import_module(name)
    while True:
        try:
            task, args, memory_bytes, timeout_s = pickle.load(requests)
        except EOFError:  # the caller is gone
            return
        pickle.dump(_fork_one(task, args, memory_bytes, timeout_s), replies)
        replies.flush()


def _fork_one(task: Callable[..., Any], args: tuple, memory_bytes: int, timeout_s: float) -> tuple:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: limits, the task, the answer, out
        try:
            os.close(read_end)
            _child(os.fdopen(write_end, "wb"), task, args, memory_bytes, timeout_s)
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + timeout_s
    data, timed_out = b"", False
    with os.fdopen(read_end, "rb", buffering=0) as answers:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([answers], [], [], left)[0]:
                timed_out = True
                break
            chunk = answers.read(1 << 16)
            if not chunk:
                break
            data += chunk
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, wait_status = os.waitpid(pid, 0)
    if timed_out:
        return None, ("timeout", None)
    if os.WIFSIGNALED(wait_status):
        return None, ("signal", os.WTERMSIG(wait_status))
    try:
        return pickle.loads(data), ("exit", os.WEXITSTATUS(wait_status))
    except Exception:  # noqa: BLE001 - no complete answer: the child died writing it
        return None, ("exit", os.WEXITSTATUS(wait_status))


def _child(answers: IO[bytes], task: Callable[..., Any], args: tuple, memory_bytes: int, timeout_s: float) -> None:
    import resource

    for which, wanted in ((resource.RLIMIT_AS, _mapped_bytes() + memory_bytes + HEADROOM_BYTES),
                          (resource.RLIMIT_CPU, math.ceil(timeout_s) + 1)):  # a fork's CPU time starts at zero
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:  # a lower limit set outside (ulimit) stays
            wanted = min(wanted, hard)
        resource.setrlimit(which, (wanted, wanted if hard == resource.RLIM_INFINITY else hard))
    try:
        answer: tuple = ("ok", task(*args))
    except ModelRefused as e:
        answer = ("refused", e.why)
    except BaseException as e:  # noqa: BLE001 - everything else is told to the parent, not printed
        if is_allocation_failure(e):
            answer = ("memory", _first_line(e))
        else:
            answer = ("refused", f"checking the model failed: {type(e).__name__}: {_first_line(e)}")
    answers.write(pickle.dumps(answer))
    answers.flush()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else repr(error))[:500]
