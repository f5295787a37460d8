"""TLS and SASL for every Kafka connection auditstream makes, from one place.

The settings (``AUDITSTREAM_KAFKA_SECURITY_PROTOCOL`` and friends, see
:class:`~auditstream.settings.Settings`) are translated here into each client library's own
configuration keys, so the producers, group consumers, readers, the admin client that creates
topics and the lag probe all connect the same way, whichever library serves them:

============================  ==============================  ===============================
setting                       kafka-python                    librdkafka (confluent-kafka)
============================  ==============================  ===============================
kafka_security_protocol       security_protocol               security.protocol
kafka_ssl_cafile              ssl_cafile                      ssl.ca.location
kafka_ssl_certfile / keyfile  ssl_certfile / ssl_keyfile      ssl.certificate/key.location
kafka_ssl_key_password        ssl_password                    ssl.key.password
kafka_ssl_check_hostname      ssl_check_hostname              ssl.endpoint.identification.algorithm
kafka_sasl_mechanism          sasl_mechanism                  sasl.mechanism
kafka_sasl_username/password  sasl_plain_username/password    sasl.username / sasl.password
============================  ==============================  ===============================

A wrong password or an untrusted certificate would make both libraries reconnect forever (a
retry storm that looks like a slow broker), so :func:`check_broker` first makes one bounded
connection and turns the first authentication or TLS failure into :class:`BrokerRefused` with a
message that names the setting to fix. The result is never logged with its secrets.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

from auditstream.errors import BrokerRefused, BrokerUnavailable
from auditstream.settings import Settings

log = logging.getLogger(__name__)

def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's clients (KafkaProducer, KafkaConsumer, KafkaAdminClient)."""
    config: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if uses_tls(settings):
        config["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        for key, value in (("ssl_cafile", settings.kafka_ssl_cafile), ("ssl_certfile", settings.kafka_ssl_certfile),
                           ("ssl_keyfile", settings.kafka_ssl_keyfile), ("ssl_password", settings.kafka_ssl_key_password)):
            if value:
                config[key] = str(value)
    if uses_sasl(settings):
        config.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password)
    return config


def librdkafka_config(settings: Settings) -> dict[str, Any]:
    """Configuration properties for confluent-kafka's clients (librdkafka names)."""
    config: dict[str, Any] = {"security.protocol": settings.kafka_security_protocol.lower()}
    if uses_tls(settings):
        # librdkafka verifies the broker's host name by default ("https"); "none" turns it off.
        config["ssl.endpoint.identification.algorithm"] = "https" if settings.kafka_ssl_check_hostname else "none"
        for key, value in (("ssl.ca.location", settings.kafka_ssl_cafile),
                           ("ssl.certificate.location", settings.kafka_ssl_certfile),
                           ("ssl.key.location", settings.kafka_ssl_keyfile),
                           ("ssl.key.password", settings.kafka_ssl_key_password)):
            if value:
                config[key] = str(value)
    if uses_sasl(settings):
        config.update({"sasl.mechanism": settings.kafka_sasl_mechanism, "sasl.username": settings.kafka_sasl_username,
                       "sasl.password": settings.kafka_sasl_password})
    return config


# Settings whose failure a connection attempt reveals, and what to tell the user to check.
_ADVICE_TLS = ("the broker's certificate must be signed by a CA in AUDITSTREAM_KAFKA_SSL_CAFILE "
               "(or the system's CAs when it is empty) and name the host in AUDITSTREAM_BOOTSTRAP_SERVERS "
               "(AUDITSTREAM_KAFKA_SSL_CHECK_HOSTNAME=false skips the name check)")
_ADVICE_CLIENT_CERT = ("a broker that requires mutual TLS does this to a client without a certificate it trusts: "
                       "check AUDITSTREAM_KAFKA_SSL_CERTFILE and AUDITSTREAM_KAFKA_SSL_KEYFILE")
_ADVICE_SASL = ("check AUDITSTREAM_KAFKA_SASL_USERNAME, AUDITSTREAM_KAFKA_SASL_PASSWORD and "
                "AUDITSTREAM_KAFKA_SASL_MECHANISM (the broker must know the user for that mechanism)")

_checked: set[str] = set()
_checked_lock = threading.Lock()


def check_broker(settings: Settings, bootstrap: str, timeout_s: float = 20.0) -> None:
    """One bounded connection with the configured security: returns once the broker answered a
    metadata request, raises :class:`BrokerRefused` at the first TLS or authentication failure and
    :class:`BrokerUnavailable` when nothing answered within ``timeout_s``.

    PLAINTEXT connections are not checked (the clients' own errors say enough), and a process
    checks each broker and configuration once.
    """
    if settings.kafka_security_protocol == "PLAINTEXT":
        return
    # Hashed: the set lives as long as the process and the configuration holds the password.
    fingerprint = hashlib.sha256(repr((bootstrap, sorted(librdkafka_config(settings).items()))).encode()).hexdigest()
    with _checked_lock:
        if fingerprint in _checked:
            return
    if settings.kafka_security_protocol == "SASL_PLAINTEXT" and settings.kafka_sasl_mechanism == "PLAIN":
        # kafka-python says so on each connection, librdkafka never: one line here for both
        log.warning("SASL PLAIN over SASL_PLAINTEXT sends the password to %s in clear text: use "
                    "AUDITSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL, or a SCRAM mechanism", bootstrap)
    from confluent_kafka import KafkaError, KafkaException, Producer

    refused: list[str] = []
    after_handshake: list[str] = []

    def on_error(error: Any) -> None:
        if error.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED):
            refused.append(error.str())
        elif "SSL handshake failed" in error.str() or "certificate verify failed" in error.str():
            refused.append(error.str())

    class DisconnectLog(logging.Logger):
        """librdkafka's connection log: with TLS 1.3 a broker that wants a client certificate
        completes the handshake and then resets the connection, which is logged, not reported."""

        def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
            text = msg % args if args else msg
            if "Disconnected" in text and "state APIVERSION_QUERY" in text and uses_tls(settings):
                after_handshake.append(text)

    # A probe that gives up fast: one reconnect per second at most while it waits.
    probe = Producer({"bootstrap.servers": bootstrap, "client.id": "auditstream-preflight", "error_cb": on_error,
                      "logger": DisconnectLog("auditstream.preflight"), "log_level": 6,
                      "log.connection.close": True, "reconnect.backoff.ms": 1000, "reconnect.backoff.max.ms": 1000,
                      "socket.timeout.ms": max(1000, int(timeout_s * 1000)), **librdkafka_config(settings)})
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                probe.list_topics(timeout=0.5)
                break
            except KafkaException:
                pass
            probe.poll(0)  # serves error_cb and the log
            if refused:
                raise _refusal(settings, bootstrap, refused[0]) from None
            if len(after_handshake) >= 2:  # twice: not a one-off reset
                raise BrokerRefused(bootstrap, f"the broker closed every connection right after the TLS handshake "
                                    f"({after_handshake[0].strip()}); {_ADVICE_CLIENT_CERT}") from None
            if time.monotonic() > deadline:
                raise BrokerUnavailable(bootstrap, f"no answer over {settings.kafka_security_protocol} within "
                                        f"{timeout_s:.0f} s")
    finally:
        probe.flush(0)
        del probe
    with _checked_lock:
        _checked.add(fingerprint)


def _refusal(settings: Settings, bootstrap: str, detail: str) -> BrokerRefused:
    lowered = detail.lower()
    if "sasl" in lowered or "authentication" in lowered:
        user = settings.kafka_sasl_username
        return BrokerRefused(bootstrap, f"SASL {settings.kafka_sasl_mechanism} authentication of user {user!r} "
                             f"failed ({detail.strip()}); {_ADVICE_SASL}")
    return BrokerRefused(bootstrap, f"TLS handshake failed ({detail.strip()}); {_ADVICE_TLS}")
