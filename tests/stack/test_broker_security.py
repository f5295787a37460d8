"""TLS, SASL and the durable broker, for real: the embedded broker (Tansu) behind the project's
TLS terminator, with certificates made here, both Kafka client libraries, and Tansu's S3 storage
engine on a local S3 server.

What the embedded broker cannot do is said in docs/serving.md ("Managed Kafka"): Tansu 0.6.0
stores no SCRAM credentials in its memory and S3 engines (tansu-storage/src/dynostore.rs:
``upsert_user_scram_credential`` is a no-op, ``user_scram_credential`` returns ``None``), so no
SASL login can succeed on it; the tests here prove what it can show -- that the clients really
run the SASL exchange with the configured mechanism and that a refused login stops at once with
a message that names the setting and never the password.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from auditstream import topics as T
from auditstream.errors import BrokerRefused
from auditstream.kafka import ensure_topics, make_consumer, make_producer, read_to_end
from auditstream.settings import Settings
from stack import broker as embedded
from stack.pki import Pki, make_pki

pytestmark = pytest.mark.slow
CLIENTS = ("kafka-python", "confluent")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_settings(state_dir: Path, pki: Pki, **overrides: object) -> Settings:
    values = dict(state_dir=state_dir, kafka_security_protocol="SSL", kafka_ssl_cafile=str(pki.ca),
                  topic_prefix=f"t{uuid.uuid4().hex[:8]}", partitions=2)
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki):
    """An embedded broker that serves TLS only (its certificate signed by ``pki.ca``)."""
    state = tmp_path_factory.mktemp("tls-broker")
    settings = _tls_settings(state, pki)
    info = embedded.start(settings, options=embedded.BrokerOptions(tls_cert=str(pki.server_cert),
                                                                   tls_key=str(pki.server_key)))
    try:
        yield info
    finally:
        embedded.stop(settings)


def _round_trip(settings: Settings) -> None:
    """Produce three records, read them back, and join a group and consume them."""
    topic = settings.topic(f"roundtrip-{uuid.uuid4().hex[:6]}")
    ensure_topics(settings, [topic])
    producer = make_producer(settings)
    for i in range(3):
        producer.send(topic, f"k{i}".encode(), f"v{i}".encode())
    producer.flush(30)
    producer.close()
    assert sorted(r.value for r in read_to_end(settings, [topic])) == [b"v0", b"v1", b"v2"]
    consumer = make_consumer(settings, f"g-{uuid.uuid4().hex[:6]}", [topic])
    try:
        seen: list[bytes] = []
        for _ in range(100):
            seen += [r.value for r in consumer.poll(100, 500)]
            if len(seen) >= 3:
                break
        assert sorted(seen) == [b"v0", b"v1", b"v2"]
    finally:
        consumer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_tls_with_the_trusted_ca_carries_produce_read_and_group_consumption(tls_broker, pki, tmp_path, client, caplog):
    settings = _tls_settings(tmp_path, pki, bootstrap_servers=tls_broker.bootstrap, kafka_client=client)
    _round_trip(settings)
    # what serve asks at start-up (the topics' max.message.bytes) is answered over TLS too
    from auditstream.kafka.limits import MAX_PRODUCE_BYTES, topic_limits

    topic = settings.topic(T.DEAD_LETTER)
    ensure_topics(settings, [topic])
    with caplog.at_level(logging.WARNING, "auditstream.kafka.limits"):
        assert topic_limits(settings, [topic], tls_broker.bootstrap) == {topic: MAX_PRODUCE_BYTES}
    assert not caplog.records


@pytest.mark.parametrize("client", CLIENTS)
def test_an_untrusted_broker_certificate_is_refused_with_the_setting_to_fix(tls_broker, pki, tmp_path, client):
    settings = _tls_settings(tmp_path, pki, bootstrap_servers=tls_broker.bootstrap, kafka_client=client,
                             kafka_ssl_cafile=str(pki.other_ca))
    with pytest.raises(BrokerRefused, match="certificate verify failed.*AUDITSTREAM_KAFKA_SSL_CAFILE"):
        make_producer(settings)


def test_a_certificate_for_another_host_is_refused_unless_the_name_check_is_off(pki, tmp_path):
    settings = _tls_settings(tmp_path / "state", pki, kafka_ssl_check_hostname=False)
    info = embedded.start(settings, options=embedded.BrokerOptions(tls_cert=str(pki.wrong_host_cert),
                                                                   tls_key=str(pki.wrong_host_key)))
    try:
        for client in CLIENTS:
            checked = dataclasses.replace(settings, bootstrap_servers=info.bootstrap, kafka_client=client,
                                          kafka_ssl_check_hostname=True)
            with pytest.raises(BrokerRefused, match="AUDITSTREAM_KAFKA_SSL_CHECK_HOSTNAME"):
                make_producer(checked)
            _round_trip(dataclasses.replace(checked, kafka_ssl_check_hostname=False))
    finally:
        embedded.stop(settings)


def test_mutual_tls_needs_the_client_certificate(pki, tmp_path):
    settings = _tls_settings(tmp_path / "state", pki, kafka_ssl_certfile=str(pki.client_cert),
                             kafka_ssl_keyfile=str(pki.client_key))
    info = embedded.start(settings, options=embedded.BrokerOptions(
        tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca)))
    try:
        with_cert = dataclasses.replace(settings, bootstrap_servers=info.bootstrap)
        for client in CLIENTS:
            _round_trip(dataclasses.replace(with_cert, kafka_client=client))
        without = dataclasses.replace(with_cert, kafka_ssl_certfile="", kafka_ssl_keyfile="")
        with pytest.raises(BrokerRefused, match="AUDITSTREAM_KAFKA_SSL_CERTFILE"):
            make_producer(without)
    finally:
        embedded.stop(settings)


def test_the_cli_reports_a_refused_certificate_in_one_line_and_exits_2(tls_broker, pki, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), AUDITSTREAM_BOOTSTRAP_SERVERS=tls_broker.bootstrap,
               AUDITSTREAM_KAFKA_SECURITY_PROTOCOL="SSL", AUDITSTREAM_KAFKA_SSL_CAFILE=str(pki.other_ca),
               AUDITSTREAM_STATE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "dlq", "replay"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "refused the connection: TLS handshake failed" in done.stderr


# -- SASL ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authenticating_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki):
    """Tansu with ``--authentication`` on a plaintext port, and the TLS terminator in front of a
    second one: (SASL_PLAINTEXT bootstrap, SASL_SSL bootstrap)."""
    log = tmp_path_factory.mktemp("sasl") / "tansu.log"
    plain, inner, tls = embedded.free_port(), embedded.free_port(), embedded.free_port()
    procs = []
    with open(log, "ab") as out:
        for port, advertised in ((plain, plain), (inner, tls)):
            procs.append(subprocess.Popen(
                [embedded.broker_binary(), "broker", "--authentication", "--listener-url", f"tcp://127.0.0.1:{port}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{advertised}", "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "stack.tls_proxy", "--listen", f"127.0.0.1:{tls}", "--upstream", f"127.0.0.1:{inner}",
             "--cert", str(pki.server_cert), "--key", str(pki.server_key)], stdout=out, stderr=subprocess.STDOUT,
            cwd=REPO))
    try:
        yield f"127.0.0.1:{plain}", f"127.0.0.1:{tls}"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_a_refused_sasl_login_stops_at_once_and_never_shows_the_password(authenticating_broker, pki, tmp_path,
                                                                          client, mechanism, protocol):
    plain, tls = authenticating_broker
    settings = Settings(state_dir=tmp_path, kafka_client=client, kafka_security_protocol=protocol,
                        bootstrap_servers=plain if protocol == "SASL_PLAINTEXT" else tls,
                        kafka_ssl_cafile=str(pki.ca) if protocol == "SASL_SSL" else "",  # a CA with plaintext: refused
                        kafka_sasl_mechanism=mechanism, kafka_sasl_username="auditor",
                        kafka_sasl_password="hunter2-not-shown")
    with pytest.raises(BrokerRefused) as refused:
        make_producer(settings)
    message = str(refused.value)
    assert f"SASL {mechanism} authentication of user 'auditor' failed" in message
    assert "unknown-user" in message  # the broker's own answer to the SCRAM exchange
    assert "AUDITSTREAM_KAFKA_SASL_PASSWORD" in message and "hunter2" not in message
    assert "hunter2" not in repr(settings)


def test_a_mechanism_the_broker_does_not_offer_is_refused(authenticating_broker, tmp_path):
    plain, _ = authenticating_broker
    settings = Settings(state_dir=tmp_path, bootstrap_servers=plain, kafka_security_protocol="SASL_PLAINTEXT",
                        kafka_sasl_mechanism="PLAIN", kafka_sasl_username="auditor", kafka_sasl_password="pw")
    with pytest.raises(BrokerRefused, match="SASL PLAIN authentication"):
        make_producer(settings)


# -- the durable broker -------------------------------------------------------------------------


def test_a_durable_broker_keeps_records_and_committed_offsets_across_kill_9(tmp_path):
    settings = Settings(state_dir=tmp_path / "state", partitions=2, topic_prefix="durable")
    options = embedded.BrokerOptions(durable=True)
    info = embedded.start(settings, options=options)
    try:
        settings = dataclasses.replace(settings, bootstrap_servers=info.bootstrap)
        topic = settings.topic("predictions")
        producer = make_producer(settings)
        for i in range(20):
            producer.send(topic, f"k{i}".encode(), f"v{i}".encode())
        producer.flush(30)
        producer.close()
        consumer = make_consumer(settings, "g-durable", [topic])
        seen = []
        while len(seen) < 20:
            seen += consumer.poll(100, 500)
        last = {}
        for r in seen[:10]:
            last[(r.topic, r.partition)] = max(last.get((r.topic, r.partition), -1), r.offset)
        consumer.commit({tp: offset + 1 for tp, offset in last.items()})
        consumer.close()

        os.kill(info.pid, signal.SIGKILL)  # a hard crash: nothing flushed on the way out
        os.waitpid(info.pid, 0)
        again = embedded.start(dataclasses.replace(settings, bootstrap_servers=""), options=options)
        assert again.port == info.port and again.pid != info.pid  # clients' bootstrap address still holds
        assert sorted(r.value for r in read_to_end(settings, [topic])) == sorted(f"v{i}".encode() for i in range(20))
        resumed = make_consumer(settings, "g-durable", [topic])
        rest = []
        for _ in range(60):
            rest += resumed.poll(100, 500)
            if len(rest) >= 10:
                break
        resumed.close()
        assert len(rest) == 10  # the group resumed from its committed offsets, not from the start
        assert {r.value for r in rest} | {r.value for r in seen[:10]} == {f"v{i}".encode() for i in range(20)}
    finally:
        embedded.stop(settings, storage=True)
