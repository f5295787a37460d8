"""The one small Kafka client interface every auditstream process uses (serving consumers, the
monitor's ingester, the RL consumer, load generators, benchmarks).

Two implementations sit behind it (:mod:`auditstream.kafka.clients`), chosen by
``Settings.kafka_client``: confluent-kafka (librdkafka, the default: the least CPU per record) and
kafka-python (pure Python; ``crc32c`` installed so record checksums are native). Callers see only :class:`Record`, :class:`Producer` and :class:`Consumer`;
the at-least-once loop built on them is :mod:`auditstream.stream`.

Consumer settings (docs/serving.md, "Consumer group settings"): offsets are committed only by
the loop (never automatically); the session timeout is short (10 s) because Tansu holds a
group's first JoinGroup for about half of it; the max poll interval is long (5 min) so a slow
batch never pushes a live consumer out of its group.

The client libraries are imported inside the factories, so importing this module is cheap.

Modules: :mod:`~auditstream.kafka.interface` (records and protocols),
:mod:`~auditstream.kafka.clients` (the two adapters), :mod:`~auditstream.kafka.security` (TLS and
SASL settings in each library's terms, and the one bounded connection check that turns a wrong
password or an untrusted certificate into a clear error), :mod:`~auditstream.kafka.factory`
(clients for the configured library, topics, the embedded broker's address). Import from this
package.
"""

from auditstream.kafka.factory import (
    BROKER_STATE_FILE, ensure_model_topics, ensure_topics, iter_to_end, make_consumer, make_producer, make_reader, make_topic_log,
    read_to_end, fetch_wait_ms, resolve_bootstrap, true_end_offsets,
)
from auditstream.kafka.security import check_broker, kafka_python_config, librdkafka_config
from auditstream.kafka.interface import (
    DURABLE_FETCH_MAX_WAIT_MS, FETCH_MAX_WAIT_MS, Consumer, Delivery, Headers, PartitionsCallback, Producer, Reader, Record, TopicLog,
    TopicPartition, check_deliveries,
)

__all__ = [
    "BROKER_STATE_FILE", "DURABLE_FETCH_MAX_WAIT_MS", "FETCH_MAX_WAIT_MS", "Consumer", "Delivery", "Headers", "PartitionsCallback", "Producer",
    "Reader", "Record", "TopicLog", "TopicPartition", "check_broker", "check_deliveries", "kafka_python_config", "librdkafka_config", "ensure_model_topics", "ensure_topics", "make_consumer", "make_producer",
    "fetch_wait_ms", "iter_to_end", "make_reader", "make_topic_log", "read_to_end", "resolve_bootstrap",
]
