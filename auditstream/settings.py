"""Process settings: one frozen object, built once in ``main()`` from ``AUDITSTREAM_*``
environment variables and passed down. Nothing else in the project reads ``os.environ`` (the
test suite's own variables, :data:`OTHER_VARIABLES`, aside).

An ``AUDITSTREAM_*`` variable that is no setting (``AUDITSTREAM_BOOTSTRAP_SERVER``, one S short)
is warned about, once per process, with the closest setting's name: otherwise the process would
quietly run on the default (the embedded broker, the local SQLite store). It is a warning, not a
refusal: one environment is often shared by several releases (a rolling upgrade, a common env
file), and a variable that a newer release reads must not stop an older one from starting.

Kubernetes' service links are no typos and are not warned about: unless a pod sets
``enableServiceLinks: false`` (the project's manifests do), every pod gets variables for each
Service of its namespace that has a cluster IP -- a Service ``auditstream-dashboard`` gives
``AUDITSTREAM_DASHBOARD_SERVICE_HOST``, ``AUDITSTREAM_DASHBOARD_PORT_8501_TCP_ADDR`` and so on
(:func:`is_service_link`).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import logging
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from auditstream.errors import ConfigError
from auditstream.text import is_utf8

ENV_PREFIX = "AUDITSTREAM_"
# AUDITSTREAM_* variables that are not settings but are read elsewhere in the project (the test
# suite's): no "not a setting" warning for them. tests/auditstream/test_settings.py holds this
# list equal to the names the repository reads from os.environ.
OTHER_VARIABLES = ("AUDITSTREAM_TEST_POSTGRES_URL", "AUDITSTREAM_TEST_LIFECYCLE_EXAMPLES")
log = logging.getLogger(__name__)
_warned_unknown: set[str] = set()  # one warning per variable per process (from_env runs once per command part)
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL")
_EXPECTED = {int: "an integer", float: "a number", bool: "true or false (1/0, yes/no, on/off)"}

# The most requests in one inference batch. Far above any batch that pays (the project's models
# flatten out by a few hundred; docs/serving.md), and well inside what the clients derive from it:
# confluent-kafka's consume() takes at most 1,000,000 records, librdkafka's queued.min.messages
# (4 batches) at most 10,000,000, kafka-python's max_poll_records follows it.
MAX_BATCH_SIZE = 65_536
# Kafka's topic names: at most 249 of these characters. The longest name auditstream makes is
# "<prefix>.episode-state.<model>", a model name at most 64 characters (auditstream/model_card.py).
MAX_TOPIC_PREFIX_CHARS = 249 - len(".episode-state.") - 64
_TOPIC_PREFIX = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_TOPIC_PREFIX_CHARS}}}")
_BOOTSTRAP_SERVER = re.compile(r"(?:[A-Za-z_]+://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?")

# A partial batch's wait, or a latency budget, of more than ten minutes holds a request that long:
# no serving, most likely a slip of units (seconds or microseconds for milliseconds).
MAX_BATCH_WAIT_MS = 600_000
# More uncommitted batches than this, and under steady load the loop commits only when the stream
# goes quiet: a crash answers everything since then again (1,000 batches of 64: 64,000 requests).
MAX_IN_FLIGHT_BATCHES = 1_000
BROKER_STATE_FILE = "broker.json"  # the embedded broker's record (stack/broker.py): {"pid", "bootstrap", ...}
# Public: fine for the embedded broker's demo and tests; serve and monitor warn on a real cluster.
DEFAULT_QC_SALT = "qc"

# Integer settings: (lowest, highest or None, a note for the error). A value past an upper end
# would pass here and fail later with a raw error: librdkafka refuses its properties out of their
# ranges when the first client is built (session.timeout.ms 1..3,600,000, max.poll.interval.ms
# 1..86,400,000, fetch.wait.max.ms 0..300,000), kafka-python packs partitions into an int32 (and
# a broker holds a few thousand partitions well, not millions), ONNX Runtime would try to start
# that many threads.
INT_RANGES: dict[str, tuple[int, int | None, str]] = {
    "partitions": (1, 10_000, " per topic"),
    "replication_factor": (0, 32_767, " (0: the broker's default.replication.factor)"),
    "max_batch_size": (1, MAX_BATCH_SIZE, " (requests in one inference batch)"),
    "max_in_flight_batches": (1, MAX_IN_FLIGHT_BATCHES, " (uncommitted batches: what a crash answers again)"),
    "max_request_bytes": (1, None, ""),
    "max_model_constant_bytes": (1, None, ""),
    "max_wait_ms": (0, MAX_BATCH_WAIT_MS, " (ten minutes: a longer wait is no serving)"),
    "latency_budget_ms": (0, MAX_BATCH_WAIT_MS, " (ten minutes: a longer budget is no serving)"),
    "intra_op_threads": (0, 1024, " (0: the cores this process may use)"),
    "fetch_max_wait_ms": (0, 300_000, " (librdkafka's fetch.wait.max.ms range)"),
    "session_timeout_ms": (1, 3_600_000, " (librdkafka's session.timeout.ms range)"),
    "heartbeat_interval_ms": (1, None, ""),
    "max_poll_interval_ms": (1, 86_400_000, " (librdkafka's max.poll.interval.ms range)"),
    "max_human_queue_depth": (0, None, " (0: no limit)"),
}


def setting_variables() -> list[str]:
    """The ``AUDITSTREAM_*`` variable of every setting."""
    return [ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)]


# The variables a kubelet gives a pod for each Service of its namespace that has a cluster IP
# (pkg/kubelet/envvars: the Service's name upper-cased, "-" as "_", then one of these tails; a
# port's name and protocol likewise). Headless Services (clusterIP: None) give none.
_SERVICE_LINK = re.compile(
    r"(?P<service>[A-Z0-9_]+?)_(?:"
    r"(?P<host>SERVICE_HOST)"
    r"|(?P<service_port>SERVICE_PORT(?:_[A-Z0-9_]+)?)"
    r"|(?P<url>PORT(?:_(?P<n>\d{1,5})_(?P<proto>TCP|UDP|SCTP))?)"
    r"|PORT_(?P<n2>\d{1,5})_(?P<proto2>TCP|UDP|SCTP)_(?P<part>PROTO|PORT|ADDR)"
    r")")  # fmt: skip
_PORT_NUMBER = re.compile(r"[1-9][0-9]{0,4}")
_PORT_URL = re.compile(r"(?P<proto>tcp|udp|sctp)://(?P<host>\[[0-9A-Fa-f:.]+\]|[0-9.]+):(?P<port>[1-9][0-9]{0,4})")


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_service_link(name: str, value: str) -> bool:
    """Whether ``name=value`` is a variable Kubernetes' service links put into a pod: the name one
    of ``<SVC>_SERVICE_HOST``, ``<SVC>_SERVICE_PORT``, ``<SVC>_SERVICE_PORT_<PORT NAME>``,
    ``<SVC>_PORT``, ``<SVC>_PORT_<n>_<TCP|UDP|SCTP>`` (each with ``_PROTO``, ``_PORT`` or
    ``_ADDR`` after it, or none) *and* the value what the kubelet writes there (an IP address, a
    port number, ``tcp://10.0.0.5:9400``, ``tcp``). Both must match: a typo such as
    ``AUDITSTREAM_METRIC_PORT=9400`` has a service link's name but not its value, and is still
    warned about."""
    match = _SERVICE_LINK.fullmatch(name)
    if match is None:
        return False
    if match["host"]:
        return _ip(value)
    if match["service_port"]:
        return _PORT_NUMBER.fullmatch(value) is not None
    if match["url"]:
        url = _PORT_URL.fullmatch(value)
        return (url is not None and _ip(url["host"].strip("[]")) and int(url["port"]) <= 65535
                and (match["n"] is None or (url["port"] == match["n"] and url["proto"] == match["proto"].lower())))
    part, n, proto = match["part"], match["n2"], match["proto2"]
    if part == "PROTO":
        return value == proto.lower()
    if part == "PORT":
        return value == n
    return _ip(value)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``(variable, closest setting's variable or None)`` for each ``AUDITSTREAM_*`` variable of
    ``environ`` that is neither a setting nor one of :data:`OTHER_VARIABLES`, sorted. Kubernetes'
    service links (:func:`is_service_link`) are left out: a pod in a namespace with a Service
    named ``auditstream-*`` gets them whether the process reads them or not."""
    known = setting_variables()
    allowed = set(known) | set(OTHER_VARIABLES)
    unknown = sorted(name for name, value in environ.items() if name.upper().startswith(ENV_PREFIX)
                     and name not in allowed and not is_service_link(name, value))
    # compared without the prefix, which every name shares and which would make any two look alike
    tails = {name[len(ENV_PREFIX):]: name for name in known}

    def closest(name: str) -> str | None:
        match = difflib.get_close_matches(name.upper()[len(ENV_PREFIX):], list(tails), n=1, cutoff=0.6)
        return tails[match[0]] if match else None

    return [(name, closest(name)) for name in unknown]


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """One warning line per :func:`unknown_variables` entry, the first time this process sees it."""
    for name, closest in unknown_variables(environ):
        if name in _warned_unknown:
            continue
        _warned_unknown.add(name)
        hint = f"did you mean {closest}?" if closest else "the settings are listed in auditstream/settings.py"
        log.warning("%s is not an auditstream setting and is ignored: %s", name, hint)


def _bootstrap_server_ok(server: str) -> bool:
    match = _BOOTSTRAP_SERVER.fullmatch(server)
    return match is not None and (match.group(1) is None or 1 <= int(match.group(1)) <= 65535)


def _doc(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True, repr=False)
class Settings:
    """Settings shared by every long-running auditstream process."""

    bootstrap_servers: str = _doc(
        "Kafka bootstrap servers (host:port,...). Empty: use the embedded broker started by "
        "'auditstream broker start' (its address is read from the state directory).",
        "",
    )
    # confluent by default: less CPU per record than kafka-python's pure Python on the serving path,
    # the cores ONNX Runtime needs (docs/serving.md, "Which client, measured").
    kafka_client: str = _doc("Kafka client library: 'confluent' (librdkafka, default) or 'kafka-python'.", "confluent")
    # Security of every Kafka connection (auditstream/kafka/security.py; docs/serving.md, "Managed Kafka").
    kafka_security_protocol: str = _doc("PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (TLS + SASL).", "PLAINTEXT")
    kafka_ssl_cafile: str = _doc("PEM file of the CAs that sign the broker's certificate. Empty: the system's CAs.", "")
    kafka_ssl_certfile: str = _doc("PEM client certificate, for brokers that require mutual TLS. Empty: none.", "")
    kafka_ssl_keyfile: str = _doc("PEM private key of the client certificate.", "")
    kafka_ssl_key_password: str = _doc("Password of the client key, if it is encrypted. Secret: never logged.", "")
    kafka_ssl_check_hostname: bool = _doc("Check that the broker's certificate names the host connected to.", True)
    kafka_sasl_mechanism: str = _doc("SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.", "SCRAM-SHA-512")
    kafka_sasl_username: str = _doc("SASL user name.", "")
    kafka_sasl_password: str = _doc("SASL password. Secret: never logged; give it from the orchestrator's secret store.", "")
    topic_prefix: str = _doc("Prefix of every topic name.", "auditstream")
    partitions: int = _doc("Partitions of each topic auditstream creates.", 12)
    # 0 asks the broker (replication.factor -1, Kafka 2.4+): a cluster's default.replication.factor
    # and min.insync.replicas are set together, and a fixed 1 beside min.insync.replicas 2 made
    # every acks=all write to a topic serve created fail (NOT_ENOUGH_REPLICAS).
    replication_factor: int = _doc("Replicas of each topic auditstream creates. 0: the broker's "
                                   "default.replication.factor.", 0)
    models_dir: Path = _doc("Root of the model registry (models/<name>/<version>/).", Path("models"))
    state_dir: Path = _doc("Where local state lives: embedded broker pid/port, default SQLite store.", Path(".auditstream"))
    store_url: str = _doc(
        "Audit store: 'sqlite:///relative/path.db' (under the working directory), 'sqlite:////absolute/path.db' "
        "(four slashes), or 'postgresql://user@host:port/db'. Empty: SQLite in the state dir.",
        "",
    )
    # Tansu holds a group's first JoinGroup for about half the session timeout: 10 s joins in ~5 s.
    # A long max poll interval keeps a slow batch from pushing the consumer out of the group.
    session_timeout_ms: int = _doc("Consumer group session timeout (ms); Tansu joins in about half of it.", 10_000)
    heartbeat_interval_ms: int = _doc("Consumer heartbeat interval (ms), well under the session timeout.", 3_000)
    max_poll_interval_ms: int = _doc("Longest gap between polls before the consumer leaves its group (ms).", 300_000)
    fetch_max_wait_ms: int = _doc(
        "Longest the broker may hold a consumer's fetch (ms). 0: 10 ms, or 500 ms on a durable embedded broker "
        "(its S3 engine stops listing a partition's stored batches when this wait is over; docs/serving.md).", 0)
    max_batch_size: int = _doc("Most requests in one inference batch.", 64)
    max_wait_ms: int = _doc("Longest a partial batch waits for more requests (ms), counted from when its oldest "
                            "request was written to Kafka.", 20)
    max_in_flight_batches: int = _doc("Cap on batches decoded but not yet committed.", 2)
    # auditstream/batching.py; docs/serving.md "Latency-aware batching"
    latency_budget_ms: int = _doc(
        "Target for a request's wait + its batch's compute (ms): a batch stops collecting once its oldest request "
        "has waited so long that the measured compute of a full batch would overrun it. 0: only max_batch_size "
        "and max_wait_ms cut batches.", 0)
    # serving/runtime.py, serving/providers.py; docs/serving.md "GPU"
    intra_op_threads: int = _doc("ONNX Runtime intra-op threads per serving process. 0: the cores this process may "
                                 "use, divided by the workers of 'auditstream serve --workers N'.", 0)
    device: str = _doc("Where models run: 'auto' (a GPU provider if one really loads, else the CPU), 'cpu', or "
                       "'cuda:N' (GPU N; start-up fails if it cannot be used).", "auto")
    gpu_fp16: bool = _doc("Let TensorRT build FP16 engines where the card has fast FP16. Off by default: a model's "
                          "certified threshold was calibrated on FP32 confidences; turn it on after checking the "
                          "FP16 confidences against the card (training/ parity check).", False)
    trt_cache_dir: str = _doc("TensorRT engine cache (built engines survive restarts). Empty: <state_dir>/trt-cache.", "")
    max_request_bytes: int = _doc("Requests larger than this go to the dead-letter topic.", 1_048_576)
    # Kafka's own default (delivery.timeout.ms): a broker hiccup of a minute on the output side
    # is waited out; past it the loop stops without committing and the batch is redelivered.
    delivery_timeout_s: float = _doc("Longest a consumer waits for its outputs to be acknowledged before it stops "
                                     "without committing (s); under max_poll_interval_ms.", 120.0)
    max_model_constant_bytes: int = _doc(
        "Memory budget of a model file: its constant tensors, and any tensor whose size is fixed by constants "
        "alone, must fit, or the model is refused before a session is created (2 GiB; the project's models "
        "hold < 10 MB).", 2 * 1024**3)
    model_check_timeout_s: float = _doc(
        "Longest the first load of a model version may take in its checking child process (ONNX shape "
        "inference; the ONNX Runtime session and its warm-up runs): a model past it is refused (s).", 60.0)
    qc_rate: float = _doc("Share of auto-accepted answers sampled for QC audit (uniform policy).", 0.02)
    qc_salt: str = _doc("Secret mixed into the request-id hash that picks QC samples, so producers cannot choose "
                        "ids that are never audited. Set the same value on every consumer and the monitor; never "
                        "logged. Default 'qc' (public).", DEFAULT_QC_SALT)
    triage_policy: str = _doc("Named triage policy: 'uniform' or 'risk-weighted' QC sampling, or 'no-qc' "
                              "(qc/triage.py).", "uniform")
    max_human_queue_depth: int = _doc("Human queue depth at which deferrals are flagged over capacity; 0: no limit.", 0)
    auto_tighten: bool = _doc("The monitor raises a model version's threshold when its audited error bound "
                              "goes over the certified risk (auditstream/control.py).", False)
    metrics_port: int = _doc("Port of the Prometheus /metrics endpoint; 0 disables it.", 0)
    log_level: str = _doc("Logging level.", "INFO")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from ``AUDITSTREAM_<FIELD>`` variables; keyword overrides win."""
        environ = os.environ if environ is None else environ
        warn_unknown_variables(environ)
        values: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                try:
                    values[f.name] = _convert(f.name, raw, hints[f.name])
                except ConfigError as e:
                    if not is_service_link(e.name, raw):
                        raise
                    # AUDITSTREAM_METRICS_PORT=tcp://10.0.0.5:9400: a Service named auditstream-metrics
                    raise ConfigError(e.name, raw, f"{e.expected}; this value is a Kubernetes service link of "
                                      "a Service whose name makes this variable: set enableServiceLinks: false "
                                      "in the pod spec, or rename the Service") from None
        from_env = set(values)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ConfigError as e:
            if e.name in from_env and e.name not in overrides:  # name the variable the user set
                raise ConfigError(ENV_PREFIX + e.name.upper(), e.value, e.expected) from None
            raise

    def __post_init__(self) -> None:
        if self.kafka_client not in ("kafka-python", "confluent"):
            raise ConfigError("kafka_client", self.kafka_client, "'kafka-python' or 'confluent'")
        self._check_text()
        self._check_kafka_security()
        for name, (low, high, note) in INT_RANGES.items():
            value = getattr(self, name)
            if not low <= value <= (value if high is None else high):
                words = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
                raise ConfigError(name, value, words + note)
        if self.device != "auto" and self.device != "cpu" and not re.fullmatch(r"cuda:\d+", self.device):
            raise ConfigError("device", self.device, "'auto', 'cpu' or 'cuda:N' (N: the GPU's index)")
        if not 0.0 <= self.qc_rate <= 1.0:
            raise ConfigError("qc_rate", self.qc_rate, "a probability in [0, 1]")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ConfigError("heartbeat_interval_ms", self.heartbeat_interval_ms, "at most a third of session_timeout_ms")
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ConfigError("max_poll_interval_ms", self.max_poll_interval_ms, "at least session_timeout_ms")
        if not 0 < self.delivery_timeout_s * 1000 < self.max_poll_interval_ms:
            raise ConfigError("delivery_timeout_s", self.delivery_timeout_s,
                              "seconds > 0 and under max_poll_interval_ms (a consumer waiting longer is pushed out of its group)")
        if not 0 < self.model_check_timeout_s <= 86_400:  # NaN fails too
            raise ConfigError("model_check_timeout_s", self.model_check_timeout_s, "seconds in (0, 86400]")
        if self.triage_policy not in ("uniform", "risk-weighted", "no-qc"):
            raise ConfigError("triage_policy", self.triage_policy, "'uniform', 'risk-weighted' or 'no-qc'")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError("metrics_port", self.metrics_port, "a TCP port in [0, 65535] (0 disables /metrics)")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError("log_level", self.log_level, f"one of {', '.join(LOG_LEVELS)}")
        object.__setattr__(self, "models_dir", Path(self.models_dir))
        object.__setattr__(self, "state_dir", Path(self.state_dir))

    def _check_text(self) -> None:
        """Text settings that the clients, topic names and hashes downstream would refuse only
        later, with a raw error (after the model was loaded and the broker contacted)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and (not is_utf8(value) or "\0" in value):
                # A variable's bytes that are not UTF-8 come in as lone surrogates: no client,
                # child process environment or hash can take them.
                shown = ("***" if f.name in SECRET_FIELDS else (redact_url(value) if f.name == "store_url" else value)
                         .encode("utf-8", "backslashreplace").decode())
                raise ConfigError(f.name, shown, "UTF-8 text without NUL characters")
        if not self.qc_salt:  # TriagePolicy refuses it too, but only once a consumer starts
            raise ConfigError("qc_salt", "", "a non-empty secret, the same on every consumer and the monitor "
                              "(unset: the public default 'qc')")
        if not _TOPIC_PREFIX.fullmatch(self.topic_prefix):
            raise ConfigError("topic_prefix", self.topic_prefix, f"1 to {MAX_TOPIC_PREFIX_CHARS} of the characters "
                              "Kafka allows in a topic name: ASCII letters, digits, '.', '_' and '-'")
        servers = self.bootstrap_servers.split(",") if self.bootstrap_servers else []
        if any(not _bootstrap_server_ok(server.strip()) for server in servers):
            raise ConfigError("bootstrap_servers", self.bootstrap_servers, "host:port[,host:port...] with ports from 1 "
                              "to 65535 (empty: the embedded broker)")

    def _check_kafka_security(self) -> None:
        if self.kafka_security_protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ConfigError("kafka_security_protocol", self.kafka_security_protocol,
                              " or ".join(KAFKA_SECURITY_PROTOCOLS))
        if self.kafka_security_protocol.startswith("SASL_"):
            if self.kafka_sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError("kafka_sasl_mechanism", self.kafka_sasl_mechanism, " or ".join(SASL_MECHANISMS))
            for name in ("kafka_sasl_username", "kafka_sasl_password"):
                if not getattr(self, name):  # unset: name the variable to set
                    raise ConfigError(ENV_PREFIX + name.upper(), "", f"a non-empty value with "
                                      f"kafka_security_protocol={self.kafka_security_protocol}")
        # A credential made from a file (kubectl create secret --from-file, echo > file) keeps its
        # final newline, which the broker takes as part of it: the login fails as a "wrong
        # password". Refused rather than stripped: a secret is used as given, never guessed at.
        for name in ("kafka_sasl_username", "kafka_sasl_password", "kafka_ssl_key_password"):
            value = getattr(self, name)
            if value != value.strip("\r\n"):
                raise ConfigError(ENV_PREFIX + name.upper(), "***" if name in SECRET_FIELDS else value,
                                  "a value without a leading or trailing line break (a secret made with kubectl "
                                  "create secret --from-file keeps the file's final newline: make it with "
                                  "--from-literal, or write the file with printf '%s', without one)")
        # A TLS file or SASL credential the protocol does not use: the operator meant to encrypt
        # or authenticate, and the clients would connect in plaintext without a word.
        unused = ([n for n in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password")
                   if getattr(self, n)] if self.kafka_security_protocol not in ("SSL", "SASL_SSL") else []) + \
                 ([n for n in ("kafka_sasl_username", "kafka_sasl_password") if getattr(self, n)]
                  if not self.kafka_security_protocol.startswith("SASL_") else [])
        if unused:
            raise ConfigError(ENV_PREFIX + "KAFKA_SECURITY_PROTOCOL", self.kafka_security_protocol,
                              f"a protocol that uses the {ENV_PREFIX}{unused[0].upper()} that is set (SSL or SASL_SSL "
                              "for TLS settings, SASL_SSL or SASL_PLAINTEXT for SASL ones), or leave that variable unset")
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
                path = getattr(self, name)
                if path and not Path(path).is_file():
                    raise ConfigError(name, path, "a readable PEM file (or empty)")
            if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
                raise ConfigError("kafka_ssl_keyfile", self.kafka_ssl_keyfile,
                                  "set together with kafka_ssl_certfile (a client certificate needs its key)")

    def __repr__(self) -> str:
        # Settings get logged at start-up; a store URL may carry a password.
        # The QC salt is a secret: knowing it, a producer could pick request ids that are never audited.
        parts = [f"{f.name}={redact_url(getattr(self, f.name))!r}" if f.name == "store_url"
                 else f"{f.name}='***'" if f.name in SECRET_FIELDS and getattr(self, f.name)
                 else f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)]
        return f"Settings({', '.join(parts)})"

    def to_env(self) -> dict[str, str]:
        """Every setting as the ``AUDITSTREAM_*`` variable that :meth:`from_env` reads back to
        these settings (for child processes; secrets included, so never log the result)."""
        def text(value: Any) -> str:
            return ("true" if value else "false") if isinstance(value, bool) else str(value)

        return {ENV_PREFIX + f.name.upper(): text(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.state_dir / 'audit.db'}"

    def topic(self, name: str) -> str:
        """Full topic name, e.g. ``topic('predictions') -> 'auditstream.predictions'``."""
        return f"{self.topic_prefix}.{name}"

    def request_topic(self, model: str) -> str:
        return self.topic(f"requests.{model}")

    def episode_state_topic(self, model: str) -> str:
        """``<prefix>.episode-state.<model>``: a policy model's compacted per-episode state."""
        return self.topic(f"episode-state.{model}")

    def is_embedded_broker(self, bootstrap: str) -> bool:
        """Whether ``bootstrap`` is the embedded broker this state dir records (a demo's or a
        bench's children are given its address explicitly)."""
        try:
            return str(json.loads((Path(self.state_dir) / BROKER_STATE_FILE).read_text())["bootstrap"]) == bootstrap
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def public_qc_salt_warning(self) -> str | None:
        """What to tell a consumer or monitor on a real cluster that still uses the public default
        QC salt (anyone who reads this code can choose request ids that are never QC-sampled);
        None on the embedded broker, where the demo and tests run with it."""
        if self.bootstrap_servers and self.qc_salt == DEFAULT_QC_SALT and not self.is_embedded_broker(self.bootstrap_servers):
            return (f"AUDITSTREAM_QC_SALT is the public default {DEFAULT_QC_SALT!r}: a producer can choose request "
                    "ids that are never sampled for QC. Set the same secret on every consumer and the monitor "
                    "(docs/qc-statistics.md)")
        return None


SECRET_FIELDS = frozenset({"qc_salt", "kafka_ssl_key_password", "kafka_sasl_password"})  # shown as '***'


def redact_url(url: str) -> str:
    """A URL safe for logs, errors and reprs: the password in the authority and secret query
    parameters (``password``, ``sslpassword``, ``...key``, ``...token``) become ``***``.

    ``postgresql://u:s3/cr@t@h/db?sslpassword=x`` -> ``postgresql://u:***@h/db?sslpassword=***``.
    Parsed by hand and on the safe side, since a password may hold ``/``, ``@``, ``#``, ``?``,
    ``=`` or ``&`` and drivers split such URLs differently (libpq ends the credentials at the
    first ``@``, urlsplit at the last): a ``:`` before the first ``@`` starts a password, and
    everything from it to the *last* ``@`` is hidden -- with an ``@`` in a query value that
    hides the host too, which costs a log line some detail and never a secret.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    colon, first_at, last_at = rest.find(":"), rest.find("@"), rest.rfind("@")
    if colon != -1 and first_at != -1 and colon < first_at:  # a user name holds no ':' or '@' unencoded
        rest = rest[:colon] + ":***" + rest[last_at:]
    return f"{scheme}://{_SECRET_QUERY_VALUE.sub(lambda m: m.group(1) + '***', rest)}"


# A query parameter whose name says secret, anywhere after the credentials: its value up to the next '&'.
_SECRET_QUERY_VALUE = re.compile(r"([?&][^=&?]*(?:pass|secret|token|key)[^=&?]*=)[^&]*", re.IGNORECASE)


def _convert(name: str, raw: str, hint: Any) -> Any:
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return hint(raw)
    except ValueError:
        expected = _EXPECTED.get(hint, getattr(hint, "__name__", str(hint)))
        raise ConfigError(ENV_PREFIX + name.upper(), raw, expected) from None
