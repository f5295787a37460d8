"""How large a record each topic takes, so no producer sends one the client or the broker refuses.

A refused record is not one bad record: the loop cannot deliver its batch, commits nothing,
stops, and meets the same record after the restart -- one oversized request would stop a
consumer for good. So every writer bounds what it writes: :data:`MAX_PRODUCE_BYTES` is every
auditstream producer's cap and the ``max.message.bytes`` of the topics auditstream creates
(:func:`auditstream.kafka.ensure_topics`), and :func:`topic_limits` reads what each topic of a
real cluster really takes (``DescribeConfigs``: a topic's own setting, else the broker's
``message.max.bytes``), since topics made by hand or by another tool keep the broker's default,
about 1 MiB. A serving consumer dead-letters a record whose outputs would not fit, and a dead
letter that would not fit its own topic leaves the original where it is
(:mod:`auditstream.dead_letters`).
"""

from __future__ import annotations

import logging

from auditstream.errors import ConfigError
from auditstream.settings import Settings
from auditstream.wire.codec import MAX_DEAD_LETTER_BYTES

log = logging.getLogger(__name__)

# The largest record an auditstream producer sends: a dead letter at its cap (an 8 MiB record in
# base64 with where it came from). Clients refuse larger ones locally, so a topic taking more
# would not help.
MAX_PRODUCE_BYTES = MAX_DEAD_LETTER_BYTES
# Room for a one-record batch's header (61 bytes) and the record's own framing (varints,
# attributes, header count): what a topic's max.message.bytes covers besides key, value and headers.
RECORD_OVERHEAD_BYTES = 512
DESCRIBE_TIMEOUT_S = 10.0
# A Kafka broker's default message.max.bytes: what a topic whose limit the broker will not tell is
# assumed to take (the safe side: topic_limits).
KAFKA_DEFAULT_MESSAGE_BYTES = 1_048_588
# The smallest dead-letter topic a consumer starts with: a letter that does not carry its original
# is a few KB (reason, a detail of at most 2,000 characters, where the original is); a topic taking
# less could refuse even that, and the loop would stop on the record.
MIN_DEAD_LETTER_TOPIC_BYTES = 16 * 1024


def record_bytes(key: bytes | None, value: bytes | None, headers=()) -> int:
    """Key, value and header bytes of a record, plus :data:`RECORD_OVERHEAD_BYTES`: what it costs
    against a topic's ``max.message.bytes`` when it travels alone in its batch."""
    size = RECORD_OVERHEAD_BYTES + len(key or b"") + len(value or b"")
    for name, v in headers:
        size += len(name.encode("utf-8", "surrogatepass")) + len(v or b"")
    return size


def topic_limits(settings: Settings, topics: list[str], bootstrap: str) -> dict[str, int]:
    """The largest record each of ``topics`` takes: its ``max.message.bytes`` where the broker
    says (never above :data:`MAX_PRODUCE_BYTES`, what the clients send at most), else
    :data:`MAX_PRODUCE_BYTES` when the broker answers without one (Tansu, the embedded broker,
    reports only what a topic was created with and enforces no limit).

    A topic whose configs the broker will not give (no ``DescribeConfigs`` ACL, no answer) is
    assumed to take :data:`KAFKA_DEFAULT_MESSAGE_BYTES`, with one warning per topic and process
    naming the grant: a guess too high would let a record through for the broker to refuse, which
    stops the consumer for good; one too low only dead-letters it (replayable). Not an error here:
    the limits are a guard, and the same broker's other failures show up clearly at the first poll."""
    limits = dict.fromkeys(topics, MAX_PRODUCE_BYTES)
    try:
        from confluent_kafka.admin import AdminClient, ConfigResource

        from auditstream.kafka.security import librdkafka_config

        admin = AdminClient({"bootstrap.servers": bootstrap, "log.connection.close": False,
                             **librdkafka_config(settings)})
        futures = admin.describe_configs([ConfigResource("topic", t) for t in topics],
                                         request_timeout=DESCRIBE_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - no answer: the safe guess (see above)
        _assume_default(settings, dict.fromkeys(topics, str(e)), False)
        return {t: KAFKA_DEFAULT_MESSAGE_BYTES for t in topics}
    unknown: dict[bool, dict[str, str]] = {True: {}, False: {}}  # denied or not -> topic -> its own error
    for resource, future in futures.items():
        try:
            entry = future.result(DESCRIBE_TIMEOUT_S).get("max.message.bytes")
        except Exception as e:  # noqa: BLE001 - as above, for this topic alone
            unknown[_denied(e)][resource.name] = str(e)
            limits[resource.name] = KAFKA_DEFAULT_MESSAGE_BYTES
            continue
        if entry is not None and entry.value is not None and str(entry.value).isdigit():
            limits[resource.name] = min(MAX_PRODUCE_BYTES, int(entry.value))
    for denied, errors in unknown.items():
        if errors:
            _assume_default(settings, errors, denied)
    return limits


_warned: set[str] = set()  # topics already warned about by this process


def _denied(error: Exception) -> bool:
    """Whether a DescribeConfigs failure is the cluster's ACLs saying no (librdkafka's message
    names the code: ``KafkaError{code=TOPIC_AUTHORIZATION_FAILED,...}``)."""
    return "AUTHORIZATION_FAILED" in str(error)


def _assume_default(settings: Settings, errors: dict[str, str], denied: bool) -> None:
    """Warn, once per topic and process, that ``errors``' topics (topic -> its own error) are
    assumed to take Kafka's default: denied ones in one line naming the grant, the others one
    line per distinct error, each naming only the topics that had it."""
    fresh = {t: detail for t, detail in errors.items() if t not in _warned}
    if not fresh:
        return
    _warned.update(fresh)
    who = f"User:{settings.kafka_sasl_username}" if settings.kafka_sasl_username else "this process's principal"
    if denied:
        groups = {(f"not allowed to read their configs: grant {who} DescribeConfigs on them (kafka-acls.sh --add "
                   f"--allow-principal {who if settings.kafka_sasl_username else 'User:NAME'} --operation "
                   "DescribeConfigs --topic ...; docs/serving.md, 'Who may write what')"): list(fresh)}
    else:
        groups = {}
        for topic, detail in fresh.items():
            groups.setdefault(f"no answer ({detail})", []).append(topic)
    for why, names in groups.items():
        log.warning("could not read the max.message.bytes of %s (%s); assuming Kafka's default %d bytes, so a "
                    "larger output is dead-lettered as too_large", ", ".join(names), why, KAFKA_DEFAULT_MESSAGE_BYTES)


def check_dead_letter_limit(topic: str, limit: int) -> None:
    """Refuse to start (:class:`ConfigError`, one line) when the dead-letter topic takes less than
    :data:`MIN_DEAD_LETTER_TOPIC_BYTES`."""
    if limit < MIN_DEAD_LETTER_TOPIC_BYTES:
        raise ConfigError(f"{topic} max.message.bytes", limit,
                          f">= {MIN_DEAD_LETTER_TOPIC_BYTES} (auditstream creates it with {MAX_PRODUCE_BYTES}): "
                          "raise the topic's max.message.bytes, or a dead letter could be refused and stop the consumer")
