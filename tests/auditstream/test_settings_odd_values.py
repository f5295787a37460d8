"""Every setting that passes ``Settings`` works where it is used: a value that would pass and then
fail later -- with a raw exception, after the model was loaded and the broker contacted -- is
refused by ``Settings`` with one ``ConfigError`` naming the variable.

Before: ``AUDITSTREAM_QC_SALT=""`` passed and ``TriagePolicy`` raised ValueError once a consumer
started; ``AUDITSTREAM_MAX_BATCH_SIZE=2000000`` passed and confluent-kafka's ``consume()`` (at most
1,000,000) killed the consumer on its first record -- librdkafka's ``queued.min.messages`` (4
batches, at most 10,000,000) refused it earlier still, as it refuses a session timeout, max poll
interval or fetch wait out of its ranges when the first consumer is built; a bootstrap address
with a port that is no number raised kafka-python's ValueError; 3,000,000,000 partitions a
``struct.error``; a topic prefix with a space hung the topic creation; a million ONNX Runtime
threads took minutes. Values that only behaved oddly are refused too: a batch wait or latency
budget of hours (20 s typed in microseconds) held requests that long, a million in-flight
batches meant no commit under steady load. The table holds those values; the properties say the
class: whatever value ``Settings`` accepts, the client, the triage policy and the topic names
take it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditstream import topics
from auditstream.errors import ConfigError
from auditstream.settings import INT_RANGES, MAX_BATCH_SIZE, MAX_BATCH_WAIT_MS, MAX_IN_FLIGHT_BATCHES, Settings
from tests.auditstream.test_wire_fuzz import FUZZ

confluent_kafka = pytest.importorskip("confluent_kafka")

ODD = [  # (variables, the last one refused; what the error says it expects)
    ({"AUDITSTREAM_QC_SALT": ""}, "a non-empty secret"),
    ({"AUDITSTREAM_QC_SALT": "s\udcff"}, "UTF-8 text without NUL characters"),  # a variable's non-UTF-8 bytes
    ({"AUDITSTREAM_MAX_BATCH_SIZE": "2000000"}, "an integer from 1 to 65536"),
    ({"AUDITSTREAM_MAX_BATCH_SIZE": "65537"}, "an integer from 1 to 65536"),
    ({"AUDITSTREAM_MAX_POLL_INTERVAL_MS": "86400000", "AUDITSTREAM_SESSION_TIMEOUT_MS": "3600001"},
     "an integer from 1 to 3600000"),
    ({"AUDITSTREAM_MAX_POLL_INTERVAL_MS": "86400001"}, "an integer from 1 to 86400000"),
    ({"AUDITSTREAM_FETCH_MAX_WAIT_MS": "300001"}, "an integer from 0 to 300000"),
    ({"AUDITSTREAM_PARTITIONS": "3000000000"}, "an integer from 1 to 10000"),
    ({"AUDITSTREAM_INTRA_OP_THREADS": "100000"}, "an integer from 0 to 1024"),
    ({"AUDITSTREAM_MAX_WAIT_MS": "600001"}, "an integer from 0 to 600000"),
    ({"AUDITSTREAM_MAX_WAIT_MS": "20000000"}, "an integer from 0 to 600000"),  # 20 s typed in microseconds
    ({"AUDITSTREAM_LATENCY_BUDGET_MS": "86400000"}, "an integer from 0 to 600000"),
    ({"AUDITSTREAM_MAX_IN_FLIGHT_BATCHES": "1001"}, "an integer from 1 to 1000"),
    ({"AUDITSTREAM_TOPIC_PREFIX": "bad prefix"}, "1 to 170 of the characters Kafka allows"),
    ({"AUDITSTREAM_TOPIC_PREFIX": ""}, "1 to 170 of the characters Kafka allows"),
    ({"AUDITSTREAM_TOPIC_PREFIX": "p" * 171}, "1 to 170 of the characters Kafka allows"),
    ({"AUDITSTREAM_TOPIC_PREFIX": "prüfung"}, "1 to 170 of the characters Kafka allows"),
    ({"AUDITSTREAM_BOOTSTRAP_SERVERS": "localhost:notaport"}, "host:port[,host:port...]"),
    ({"AUDITSTREAM_BOOTSTRAP_SERVERS": "k1:9092,k2:0"}, "host:port[,host:port...]"),
    ({"AUDITSTREAM_BOOTSTRAP_SERVERS": "k1:65536"}, "host:port[,host:port...]"),
    ({"AUDITSTREAM_BOOTSTRAP_SERVERS": ","}, "host:port[,host:port...]"),
    ({"AUDITSTREAM_BOOTSTRAP_SERVERS": "my host:9092"}, "host:port[,host:port...]"),
]


@pytest.mark.parametrize("environ, expected", ODD, ids=[next(reversed(e)).removeprefix("AUDITSTREAM_") + "=" +
                                                         ascii(e[next(reversed(e))])[:20] for e, _ in ODD])
def test_a_value_that_would_fail_later_is_refused_now(environ: dict[str, str], expected: str) -> None:
    variable = next(reversed(environ))
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(environ)
    assert refused.value.name == variable and expected in refused.value.expected
    assert "\n" not in str(refused.value)


def test_a_secret_is_not_echoed_when_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings(kafka_sasl_password="s3cr3t\x00")
    assert "s3cr3t" not in str(refused.value) and refused.value.value == "***"


def test_the_values_that_stay_accepted() -> None:
    settings = Settings.from_env({"AUDITSTREAM_BOOTSTRAP_SERVERS": "k1:9092, [::1]:9093,PLAINTEXT://k3:9094,k4",
                                  "AUDITSTREAM_TOPIC_PREFIX": "team_a.prod-2", "AUDITSTREAM_QC_SALT": "ä secret"})
    assert settings.topic("audit") == "team_a.prod-2.audit"
    top = Settings(max_wait_ms=MAX_BATCH_WAIT_MS, latency_budget_ms=MAX_BATCH_WAIT_MS,
                   max_in_flight_batches=MAX_IN_FLIGHT_BATCHES)  # the upper ends themselves
    assert (top.max_wait_ms, top.max_in_flight_batches) == (600_000, 1_000)


def test_the_upper_ends_are_inside_what_librdkafka_takes() -> None:
    """A consumer and a producer build (no broker needed) with every bounded setting at its top."""
    from auditstream.kafka.clients import ConfluentConsumer, ConfluentProducer

    top = Settings(max_batch_size=MAX_BATCH_SIZE, session_timeout_ms=3_600_000, heartbeat_interval_ms=1_200_000,
                   max_poll_interval_ms=86_400_000, delivery_timeout_s=86_399.0, fetch_max_wait_ms=300_000)
    consumer = ConfluentConsumer(top, "127.0.0.1:9", "odd-values", ["t"], None, None,
                                 fetch_max_wait_ms=top.fetch_max_wait_ms)
    consumer.close()
    ConfluentProducer(top, "127.0.0.1:9", "odd-values")


class FirstRecordThenLibrdkafka:
    """A consumer whose first poll finds a record; ``consume`` is librdkafka's own (it checks
    ``num_messages`` before anything else)."""

    def __init__(self) -> None:
        self.real = confluent_kafka.Consumer({"bootstrap.servers": "127.0.0.1:9", "group.id": "odd", "log_level": 0})
        self.asked: list[int] = []

    def poll(self, timeout: float) -> object:
        return Record()

    def consume(self, num_messages: int, timeout: float) -> list:
        self.asked.append(num_messages)
        return self.real.consume(num_messages=num_messages, timeout=timeout)


class Record:
    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)

    def headers(self) -> None:
        return None

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0

    def key(self) -> None:
        return None

    def value(self) -> bytes:
        return b"x"


@pytest.mark.parametrize("room", [2, 1_000_001, 2_000_000, 10**9])
def test_confluent_poll_asks_librdkafka_for_no_more_than_it_takes(room: int) -> None:
    """The reviewer's case: StreamLoop's first poll with room = max_batch_size = 2,000,000 raised
    ValueError out of consume() and stopped the consumer on its first record, after every restart."""
    from auditstream.kafka.clients import CONSUME_MAX_MESSAGES, ConfluentConsumer, librdkafka_prefetch

    consumer = object.__new__(ConfluentConsumer)
    consumer._c = stub = FirstRecordThenLibrdkafka()
    try:
        assert len(consumer.poll(room, 10)) == 1  # the first record; librdkafka had none more
    finally:
        stub.real.close()
    assert stub.asked == [min(room - 1, CONSUME_MAX_MESSAGES)]
    assert librdkafka_prefetch(10**9)["queued.min.messages"] == 10_000_000


# -- the class: whatever Settings accepts works where it is used


def accepted(**values: object) -> Settings | None:
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ConfigError:
        return None


@FUZZ
@given(salt=st.text(max_size=12))
def test_any_salt_settings_accept_makes_a_triage_policy(salt: str) -> None:
    from qc.triage import hash_uniform, policy_for

    settings = accepted(qc_salt=salt)
    if settings is not None:
        assert 0.0 <= hash_uniform("request-1", policy_for(settings).salt) < 1.0


LEGAL_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


@FUZZ
@given(prefix=st.text(max_size=200) | st.text("abz.-_09", min_size=170, max_size=180))
def test_any_prefix_settings_accept_makes_legal_topic_names(prefix: str) -> None:
    settings = accepted(topic_prefix=prefix)
    if settings is not None:
        names = topics.all_topics(settings, ["m" * 64])  # the longest model name a card may have
        assert all(LEGAL_TOPIC.fullmatch(name) and name not in (".", "..") for name in names), names


@FUZZ
@given(servers=st.text(max_size=40) | st.lists(st.tuples(st.from_regex(r"[a-z0-9.-]{1,12}", fullmatch=True),
                                                         st.integers(-5, 70_000)), min_size=1, max_size=3)
       .map(lambda hosts: ",".join(f"{h}:{p}" for h, p in hosts)))
def test_any_bootstrap_settings_accept_kafka_python_parses(servers: str) -> None:
    from kafka.cluster import collect_hosts

    settings = accepted(bootstrap_servers=servers)
    if settings is not None and settings.bootstrap_servers:
        for host, port, _ in collect_hosts(settings.bootstrap_servers):
            assert host and 1 <= port <= 65535


@FUZZ
@given(data=st.data())
def test_any_integers_settings_accept_build_a_librdkafka_consumer(data: st.DataObject) -> None:
    from auditstream.kafka.clients import ConfluentConsumer

    near = st.integers(-2, 10) | st.integers(0, 2**40)
    values = {name: data.draw(near | st.sampled_from([low] + ([high, high + 1] if high else [])), label=name)
              for name, (low, high, _) in INT_RANGES.items()
              if name in ("max_batch_size", "session_timeout_ms", "heartbeat_interval_ms", "max_poll_interval_ms",
                          "fetch_max_wait_ms")}
    settings = accepted(**values)
    if settings is not None:
        ConfluentConsumer(settings, "127.0.0.1:9", "odd-values", ["t"], None, None,
                          fetch_max_wait_ms=settings.fetch_max_wait_ms).close()
