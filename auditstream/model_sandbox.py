"""A model's first contact with native code runs in a child process, never in the caller's.

ONNX shape inference and ONNX Runtime are C++: a hostile file can make them abort the process
(a 463-byte ``Expand``/``Slice`` hit an assertion: SIGABRT), run for ever (a ``Loop`` of 1e15
trips), hold the GIL for minutes (functions calling functions: exponential inlining) or allocate
without bound (``ConstantOfShape`` of a computed shape). In a serving process that would kill or
freeze the live version too -- a hot reload loads the next version beside it. So the first time a
process sees a model's bytes, each such step (:func:`run_checked`) runs in a child process with
a memory limit (``RLIMIT_AS``: what the child already maps at the fork, plus the model budget, plus
:data:`MODEL_COPIES` times the model file, plus :data:`HEADROOM_BYTES`), a CPU limit (the soft
limit's SIGXCPU a second before the hard one's SIGKILL) and a wall-clock timeout; a signal
death, a timeout or an allocation failure becomes one :class:`~auditstream.errors.ModelRefused`
line saying what happened.

The children are forked from a fork server (a child interpreter of ours, in its own session so
a terminal's Ctrl-C goes to the caller only) that imported onnx and ONNX Runtime once (importing
onnx alone takes 1-3 s; a fork takes milliseconds): the first check of a process pays one
interpreter start, later ones (hot reloads, tests) do not. The fork server is not
single-threaded (numpy's import starts its BLAS thread pool), but it only imports and forks: it
never runs a session or a task itself, so its threads sit idle and a fork from it does not copy
a lock held mid-operation -- as a fork from the caller, with its Kafka and ONNX Runtime threads,
could. Each request carries an id its reply echoes; anything going wrong while the caller talks
to the server (the server dying or hanging, a KeyboardInterrupt) kills and reaps the server, so
a late reply is never read as the next request's. A check that passed is remembered for the
process by its key (the bytes' sha256 and the check's parameters) and not run again.
"""

from __future__ import annotations

import itertools
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
# What a child may map beyond what it maps at the fork (the request, the model's bytes among it,
# included): the model budget, MODEL_COPIES times the model file (ONNX Runtime parses the
# protobuf, builds its initializers from it and may pre-pack weights: a 400 MB MatMul model peaked
# at about 3 times its size over what the process mapped) plus this (ONNX Runtime's arenas, the
# warm-up buffers).
HEADROOM_BYTES = 1024**3
MODEL_COPIES = 3
BUDGET_SETTING = "AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES"
TIMEOUT_SETTING = "AUDITSTREAM_MODEL_CHECK_TIMEOUT_S"
# How long a caller waits for the fork server beyond the check's own timeout: the server's start
# (importing onnx and ONNX Runtime) and the request's transfer.
SERVER_START_S = 60.0
_PRELOAD = ("numpy", "onnx", "onnxruntime", "auditstream.model_safety")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `auditstream` is importable from
_passed: set[Hashable] = set()
_lock = threading.Lock()  # one request at a time to the fork server; guards _passed and _server
_server: subprocess.Popen | None = None
_request_ids = itertools.count(1)
_server_fds: tuple[int, ...] = ()  # in the fork server: its request and reply pipes (a child closes them)


def memory_limit(mapped: int, memory_bytes: int, model_bytes: int = 0) -> int:
    """The child's RLIMIT_AS: what it maps at the fork, the budget, the model's copies, headroom."""
    return mapped + memory_bytes + MODEL_COPIES * model_bytes + HEADROOM_BYTES


def _limit_text(memory_bytes: int, model_bytes: int) -> str:
    copies = f" plus {MODEL_COPIES} times the model file's {_size(model_bytes)}" if model_bytes else ""
    return (f"{_size(memory_bytes + MODEL_COPIES * model_bytes + HEADROOM_BYTES)} (the model budget "
            f"{BUDGET_SETTING}{copies} plus {_size(HEADROOM_BYTES)})")


def _start_server() -> subprocess.Popen:
    """The fork server: this interpreter, this sys.path, the preloads imported once. Our own
    rather than multiprocessing's, which re-runs the caller's ``__main__`` script in every child."""
    server = subprocess.Popen([sys.executable, "-P", "-c", "from auditstream.model_sandbox import _serve; _serve()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=os.getcwd(),
                              env={**os.environ, "PYTHONPATH": _ROOT},
                              # Its own session: a terminal's Ctrl-C goes to the caller, not to it (it exits
                              # when the caller goes: end of file on its stdin).
                              start_new_session=True)
    pickle.dump(list(sys.path), server.stdin)  # type: ignore[arg-type]
    server.stdin.flush()  # type: ignore[union-attr]
    return server


def prestart() -> None:
    """Start the fork server now, so its imports overlap the caller's own start-up."""
    global _server
    with _lock:
        if _server is None or _server.poll() is not None:
            _discard_server()
            _server = _start_server()


def passed(key: Hashable) -> bool:
    with _lock:
        return key in _passed


def run_checked(task: Callable[..., Any], args: tuple, *, what: str, path: object, key: Hashable | None,
                memory_bytes: int, timeout_s: float = DEFAULT_TIMEOUT_S, model_bytes: int = 0,
                timeout_setting: str | None = TIMEOUT_SETTING) -> Any:
    """``task(*args)`` in a child process; its return value (picklable), or ModelRefused.

    ``task`` (a module-level function) raises ``ModelRefused`` for an ordinary refusal (passed
    on as is); ``what`` names the step in the messages ("ONNX Runtime", "ONNX shape inference").
    ``memory_bytes``: the model budget; ``model_bytes``: the size of the model file the task
    loads (the memory limit grows with it: :func:`memory_limit`). ``timeout_setting``: the
    setting that sets ``timeout_s``, named in a timeout's message (None: a fixed limit). With a
    ``key`` that passed before in this process nothing runs and None is returned.

    The fork server failing (it died, or did not answer within ``timeout_s`` plus
    :data:`SERVER_START_S`) is :class:`CheckerFailed`, a ModelRefused that is no verdict on the
    model; a server that died is replaced and the check retried once first. Any other exception
    while talking to the server (KeyboardInterrupt, a signal handler's) kills the server and is
    raised: its reply must never be read as the next request's."""
    with _lock:
        if key is not None and key in _passed:
            return None
        request = (task, args, memory_bytes, model_bytes, timeout_s)
        for attempt in (1, 2):
            try:
                answer, status = _ask(request, timeout_s)
                break
            except _ServerFailed as e:
                if attempt == 2 or e.stuck:
                    raise CheckerFailed(path, f"the model checking process failed ({e}) while running {what}: "
                                        "not a verdict on the model; see the error output above and retry") from None
        del request
    if answer is None:  # died without a word, or was killed at the timeout
        raise ModelRefused(path, _death(what, status, timeout_s, memory_bytes, model_bytes, timeout_setting))
    kind, value = answer
    if kind == "refused":
        raise ModelRefused(path, value)
    if kind == "memory":
        raise ModelRefused(path, f"{what} needed more than {_limit_text(memory_bytes, model_bytes)} of memory while "
                           f"checking the model ({value}): not a model this project serves; raise "
                           f"{BUDGET_SETTING} if it is")
    if kind == "timeout":
        raise ModelRefused(path, _slow(what, timeout_s, timeout_setting))
    if key is not None:
        with _lock:
            _passed.add(key)
    return value


class CheckerFailed(ModelRefused):
    """The model checking process itself failed (the fork server died or hung): the model is not
    loaded, but this says nothing about it -- it is not remembered, and a retry may pass."""


class _ServerFailed(Exception):
    def __init__(self, why: str, stuck: bool = False) -> None:
        super().__init__(why)
        self.stuck = stuck


def _ask(request: tuple, timeout_s: float) -> tuple:
    """Send one request to the fork server (started if needed) and read its reply, echoing a
    fresh request id; the caller holds ``_lock``. The server failing is _ServerFailed (it is
    killed and reaped first); any other exception kills and reaps it too, and is raised."""
    global _server
    if _server is None or _server.poll() is not None:
        _discard_server()
        _server = _start_server()
    server = _server
    request_id = next(_request_ids)
    deadline = time.monotonic() + timeout_s + SERVER_START_S
    try:
        try:
            _send(server.stdin.fileno(), pickle.dumps((request_id,) + request, protocol=pickle.HIGHEST_PROTOCOL),  # type: ignore[union-attr]
                  deadline)
            reply = _receive(server.stdout.fileno(), deadline)  # type: ignore[union-attr]
            replied_id, answer, status = pickle.loads(reply)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
            raise _ServerFailed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
        if replied_id != request_id:
            raise _ServerFailed(f"it answered request {replied_id!r} to request {request_id}")
    except BaseException:  # _ServerFailed, KeyboardInterrupt, ...: its reply must not answer the next request
        _discard_server()
        raise
    return answer, status


def _discard_server() -> None:
    """Kill the fork server (if any), reap it and close its pipes; ``_server`` becomes None."""
    global _server
    server, _server = _server, None
    if server is None:
        return
    try:
        server.kill()
    except OSError:
        pass
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process in uninterruptible sleep
        pass
    for pipe in (server.stdin, server.stdout):
        try:
            pipe.close()  # type: ignore[union-attr]
        except OSError:
            pass


def _send(fd: int, data: bytes, deadline: float) -> None:
    """Write ``data`` to the pipe ``fd`` by the ``deadline`` (a stuck reader does not block us)."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise _ServerFailed(_NO_ANSWER, stuck=True)
            try:
                view = view[os.write(fd, view[:1 << 20]):]
            except BlockingIOError:
                continue
    finally:
        view.release()


def _receive(fd: int, deadline: float) -> bytes:
    """One reply frame (8-byte length, then a pickle) from ``fd`` by the ``deadline``."""
    def read(n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise _ServerFailed(_NO_ANSWER, stuck=True)
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                raise EOFError("the checking process exited")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    return read(int.from_bytes(read(8), "big"))


_NO_ANSWER = "no answer within the check's timeout plus the checking process's start-up allowance"


def _death(what: str, status: tuple, timeout_s: float, memory_bytes: int, model_bytes: int = 0,
           timeout_setting: str | None = TIMEOUT_SETTING) -> str:
    how, number = status[:2]
    if how == "timeout":
        return _slow(what, timeout_s, timeout_setting)
    if how == "signal":
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        cpu_s = status[2] if len(status) > 2 else 0.0
        if number == signal.SIGXCPU or (number == signal.SIGKILL and cpu_s >= _cpu_limit(timeout_s)):
            return _slow(what, timeout_s, timeout_setting) + " (CPU time)"
        if number == signal.SIGKILL:  # not ours (that is a timeout): the OOM killer's
            return (f"{what} was killed (SIGKILL, likely out of memory) while checking the model "
                    f"(limit {_limit_text(memory_bytes, model_bytes)}): not a model this project serves; raise "
                    f"{BUDGET_SETTING} if it is")
        return f"{what} crashed ({name}) while checking the model: the file is damaged or hostile; re-export it"
    return f"{what} exited with code {number} while checking the model: the file is damaged or hostile; re-export it"


def _slow(what: str, timeout_s: float, setting: str | None = TIMEOUT_SETTING) -> str:
    if setting is None:
        return (f"{what} took longer than its fixed limit of {timeout_s:g} s on the model: a graph that big or a "
                "loop that long is not a model this project serves")
    return (f"{what} took longer than {timeout_s:g} s to load and warm up the model "
            f"({setting}): a graph that big or a loop that long is not a model this "
            "project serves; raise the setting if it is")


def _cpu_limit(timeout_s: float) -> int:
    """The child's RLIMIT_CPU soft limit (a fork's CPU time starts at zero)."""
    return math.ceil(timeout_s) + 1


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
    global _server_fds
    replies = os.fdopen(os.dup(1), "wb")
    _server_fds = (0, replies.fileno())
    os.dup2(2, 1)  # what native code prints goes to stderr, never into a reply
    requests = sys.stdin.buffer
    sys.path[:] = pickle.load(requests)
    import importlib

    for name in _PRELOAD:
        importlib.import_module(name)
    while True:
        try:
            request_id, task, args, memory_bytes, model_bytes, timeout_s = pickle.load(requests)
        except EOFError:  # the caller is gone
            return
        reply = pickle.dumps((request_id,) + _fork_one(task, args, memory_bytes, model_bytes, timeout_s),
                             protocol=pickle.HIGHEST_PROTOCOL)
        del task, args  # the model's bytes: not kept while the server waits for the next request
        try:
            replies.write(len(reply).to_bytes(8, "big") + reply)
            replies.flush()
        except BrokenPipeError:  # the caller is gone (or gave up on this request and killed us)
            return
        del reply


def _fork_one(task: Callable[..., Any], args: tuple, memory_bytes: int, model_bytes: int, timeout_s: float) -> tuple:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: limits, the task, the answer, out
        try:
            os.close(read_end)
            for fd in _server_fds:  # a child outliving a killed server must not hold the caller's pipes open
                os.close(fd)
            _child(os.fdopen(write_end, "wb"), task, args, memory_bytes, model_bytes, timeout_s)
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
    _, wait_status, usage = os.wait4(pid, 0)
    if timed_out:
        return None, ("timeout", None)
    if os.WIFSIGNALED(wait_status):  # with the CPU time it used: a SIGKILL at the hard CPU limit is no OOM kill
        return None, ("signal", os.WTERMSIG(wait_status), usage.ru_utime + usage.ru_stime)
    try:
        return pickle.loads(data), ("exit", os.WEXITSTATUS(wait_status))
    except Exception:  # noqa: BLE001 - no complete answer: the child died writing it
        return None, ("exit", os.WEXITSTATUS(wait_status))


def _child(answers: IO[bytes], task: Callable[..., Any], args: tuple, memory_bytes: int, model_bytes: int,
           timeout_s: float) -> None:
    import resource

    for which, (soft, hard) in ((resource.RLIMIT_AS, _limits(memory_limit(_mapped_bytes(), memory_bytes, model_bytes),
                                                             resource.getrlimit(resource.RLIMIT_AS)[1], 0)),
                                (resource.RLIMIT_CPU, _limits(_cpu_limit(timeout_s),
                                                              resource.getrlimit(resource.RLIMIT_CPU)[1], 1))):
        resource.setrlimit(which, (soft, hard))
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


def _limits(wanted: int, hard: int, gap: int, infinity: int | None = None) -> tuple[int, int]:
    """(soft, hard) for a limit of ``wanted`` under an existing ``hard`` limit (a lower limit set
    outside, by ulimit, stays). ``gap``: how far above the soft limit the hard one goes where the
    existing hard limit allows -- for RLIMIT_CPU 1 s, so the soft limit's SIGXCPU (reported as
    CPU time) comes before the hard limit's SIGKILL (which reads as the OOM killer's)."""
    if infinity is None:
        import resource

        infinity = resource.RLIM_INFINITY
    if hard == infinity:
        return wanted, wanted + gap
    soft = max(min(wanted, hard - gap), 0)
    return soft, min(soft + gap, hard)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else repr(error))[:500]
