"""Factories of Kafka clients for the configured library, and the broker helpers every process
needs (topics, reading a topic to its end, where the embedded broker listens)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from auditstream.errors import BrokerUnavailable, TopicsNotCreated
from auditstream.kafka.interface import (DURABLE_FETCH_MAX_WAIT_MS, FETCH_MAX_WAIT_MS, Consumer, PartitionsCallback,
                                         Producer, Reader, Record, TopicLog, quiet_client_logs)
from auditstream.kafka.limits import MAX_PRODUCE_BYTES
from auditstream.kafka.security import check_broker, kafka_python_config
from auditstream.settings import BROKER_STATE_FILE, Settings


def make_producer(settings: Settings, bootstrap: str | None = None, client_id: str = "auditstream",
                  max_block_s: float | None = None) -> Producer:
    """A producer for ``settings.kafka_client`` (acks=all: a send is acked once it is durable).
    ``max_block_s``: the longest one ``send`` may block before it raises ``SendBlocked`` (the
    record not sent); None: the client's default (kafka-python 60 s)."""
    from auditstream.kafka.clients import ConfluentProducer, KafkaPythonProducer

    bootstrap = _checked_bootstrap(settings, bootstrap)
    if settings.kafka_client == "confluent":
        return ConfluentProducer(settings, bootstrap, client_id, max_block_s)
    return KafkaPythonProducer(settings, bootstrap, client_id, max_block_s)


def make_consumer(settings: Settings, group_id: str, topics: list[str], bootstrap: str | None = None,
                  on_assign: PartitionsCallback | None = None,
                  on_revoke: PartitionsCallback | None = None, client_id: str = "",
                  fetch_max_wait_ms: int = 0) -> Consumer:
    """A group member subscribed to ``topics``, manual commits, reading from the earliest offset.
    ``client_id``: how the broker's logs and quotas name it (default: the group id).
    ``fetch_max_wait_ms``: at least this long the broker may hold an empty fetch (at least
    :func:`fetch_wait_ms` in any case); a consumer of a quiet topic that need not answer within
    milliseconds sets it long (kafka-python spends ~10% of a core on an idle consumer at 10 ms)."""
    from auditstream.kafka.clients import ConfluentConsumer, KafkaPythonConsumer

    bootstrap = _checked_bootstrap(settings, bootstrap)
    cls = ConfluentConsumer if settings.kafka_client == "confluent" else KafkaPythonConsumer
    return cls(settings, bootstrap, group_id, list(topics), on_assign, on_revoke, client_id,
               max(fetch_max_wait_ms, fetch_wait_ms(settings, bootstrap)))


def make_reader(settings: Settings, topics: list[str], from_beginning: bool = True,
                bootstrap: str | None = None) -> Reader:
    """A :class:`Reader` of every partition of ``topics`` from the beginning, or (``from_beginning``
    False) from the current end on. Always kafka-python: readers are few and off the hot path."""
    from auditstream.kafka.clients import KafkaPythonReader

    bootstrap = _checked_bootstrap(settings, bootstrap)
    return KafkaPythonReader(settings, bootstrap, list(topics), from_beginning, fetch_wait_ms(settings, bootstrap))


def make_topic_log(settings: Settings, bootstrap: str | None = None) -> TopicLog:
    """A :class:`TopicLog` (end offsets, reads from given offsets). Always kafka-python, like
    :func:`make_reader`: it is used once per outbox round and after a crash, off the hot path."""
    from auditstream.kafka.clients import KafkaPythonTopicLog

    bootstrap = _checked_bootstrap(settings, bootstrap)
    return KafkaPythonTopicLog(settings, bootstrap, fetch_wait_ms(settings, bootstrap))


def read_to_end(settings: Settings, topics: list[str], bootstrap: str | None = None,
                timeout_s: float = 60.0) -> list[Record]:
    """Every record of ``topics`` written before the call (in partition order), and any written
    while it reads: :func:`iter_to_end` as a list."""
    return list(iter_to_end(settings, topics, bootstrap, timeout_s))


def iter_to_end(settings: Settings, topics: list[str], bootstrap: str | None = None,
                timeout_s: float = 60.0) -> Iterator[Record]:
    """Every record of ``topics`` written before the call (in partition order), and any written
    while it reads, a poll's worth at a time: a caller that folds them (the latest record per key
    of a compacted topic) holds what it keeps, not the whole log. The reader closes when the
    iteration ends or is abandoned.

    It reads past the end offsets the broker reported, on to a poll that returns nothing: the
    embedded Tansu 0.6.0 answers ListOffsets with the last batch's base offset + 1 (a partition
    holding one batch of records 0..9 has "end" 1; docs/audit-store.md), so a reported end is a
    lower bound. Stopping at it loses the rest of the last batch whenever a poll's record cap
    falls inside that batch (dlq replay lost 35 of 60 letters that way: tests/serving/test_dlq.py)."""
    import time

    reader = make_reader(settings, topics, True, bootstrap)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(bootstrap or _bootstrap(settings),
                                        f"could not read {topics} to their end within {timeout_s:.0f} s")
            got = reader.poll(10_000, 500)
            yield from got
            if not got and reader.caught_up():
                return
    finally:
        reader.close()


def true_end_offsets(settings: Settings, topics: list[str], bootstrap: str | None = None,
                     timeout_s: float = 60.0) -> dict[tuple[str, int], int]:
    """Each partition's end offset now: the broker's answer, raised past any record read after it
    (Tansu's answer can be a lower bound: :func:`read_to_end`)."""
    log_ = make_topic_log(settings, bootstrap)
    try:
        ends = log_.end_offsets(topics)
        for record in log_.read_from(ends, topics, timeout_s):
            where = (record.topic, record.partition)
            ends[where] = max(ends[where], record.offset + 1)
        return ends
    finally:
        log_.close()


def ensure_topics(settings: Settings, topics: list[str], compacted: tuple[str, ...] = (),
                  bootstrap: str | None = None) -> list[str]:
    """Create the topics that do not exist yet, with ``settings.partitions`` partitions and
    ``settings.replication_factor`` replicas each (0: the broker's default); returns the names
    created by this call (not those that turned out to exist already). Idempotent. Pass only the
    topics the calling process itself reads or writes: on a cluster with ACLs each principal may
    Describe just those (docs/serving.md, "Who may write what"), and a topic it cannot see looks
    missing. A refused create raises
    :class:`~auditstream.errors.TopicsNotCreated` naming the refused topics only (each topic's
    own error code is read: "already exists" is fine, an authorization failure names the grant
    to add, any other code its name).

    Every topic but the request topics takes records up to :data:`~auditstream.kafka.limits.MAX_PRODUCE_BYTES`
    (``max.message.bytes``): a dead letter or an audit item is larger than the request it comes
    from. A request topic keeps the broker's limit: the door where an oversized request is refused
    to the client that sends it."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import BrokerResponseError, KafkaError

    bootstrap = _checked_bootstrap(settings, bootstrap)
    partitions = settings.partitions
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="auditstream-admin", **kafka_python_config(settings))
    except KafkaError as e:
        raise BrokerUnavailable(bootstrap, str(e)) from None
    try:
        missing = [t for t in topics if t not in set(admin.list_topics())]
        replicas = settings.replication_factor or -1  # -1: the broker's default.replication.factor
        new = [NewTopic(t, partitions, replicas, topic_configs=_topic_configs(settings, t, t in compacted))
               for t in missing]
        if not new:
            return []
        try:
            # raise_errors=False: each topic's own error code. Raising, kafka-python raises the
            # first non-zero code of the response only: "already exists" for one topic hid
            # "not authorized" for the next, which was then reported created.
            response = admin.create_topics(new, raise_errors=False)
        except BrokerResponseError as e:  # the request as a whole refused
            if _denied_code(getattr(e, "errno", None)):
                raise TopicsNotCreated(bootstrap, missing, type(e).__name__, True, settings.kafka_sasl_username) from None
            raise TopicsNotCreated(bootstrap, missing, str(e), False) from None
        created, refused = _create_results(response, missing)
        denied = [t for t in refused if _denied_code(refused[t][0])]
        if denied:
            # ACLs: a topic the principal may not Describe is left out of list_topics, so it
            # looks missing even when it exists; either way only a grant or a hand-made topic helps.
            raise TopicsNotCreated(bootstrap, denied, _error_detail({t: refused[t] for t in denied}), True,
                                   settings.kafka_sasl_username)
        if refused:  # the broker answered no (replication factor, policy): not a blip
            raise TopicsNotCreated(bootstrap, list(refused), _error_detail(refused), False)
        _warn_if_under_replicated(admin, response, created)
        return created
    finally:
        admin.close()


def replication_warning(factors: dict[str, int], brokers: int) -> str | None:
    """What to tell the operator when topics were just created with fewer replicas than the
    cluster could give them (``factors``: topic -> replication factor the broker reports;
    ``brokers``: how many the cluster has), or None. One broker (the embedded one) is no warning:
    there is nothing to replicate to."""
    wanted = min(3, brokers)
    few = sorted(t for t, factor in factors.items() if 0 < factor < wanted)
    if brokers < 2 or not few:
        return None
    lowest = min(factors[t] for t in few)
    return (f"created {', '.join(few)} with {lowest} replica{'s' if lowest > 1 else ''} on a cluster of {brokers} "
            f"brokers: losing {'that broker' if lowest == 1 else f'{lowest} brokers'} loses their records and "
            f"stops serving; set AUDITSTREAM_REPLICATION_FACTOR={wanted} (or the brokers' "
            "default.replication.factor) and recreate them, or raise it with kafka-reassign-partitions.sh")


def _warn_if_under_replicated(admin: Any, response: dict, created: list[str]) -> None:
    """A warning line when :func:`replication_warning` has one. Best effort: an answer without
    the factors (CreateTopics before v5) or a cluster that will not describe itself says nothing."""
    from kafka.errors import KafkaError

    factors = {t["name"]: int(t.get("replication_factor") or 0) for t in (response or {}).get("topics", [])
               if t.get("name") in created}
    if not factors or all(f >= 3 for f in factors.values()):
        return
    try:
        brokers = len(admin.describe_cluster().get("brokers") or [])
    except (KafkaError, AttributeError, TypeError):  # AttributeError/TypeError: an unexpected answer's shape
        return
    message = replication_warning(factors, brokers)
    if message:
        logging.getLogger(__name__).warning(message)


TOPIC_ALREADY_EXISTS = 36  # a concurrent creator won the race, or the topic is hidden from list_topics
_DENIED_CODES = (29, 31)  # TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED


def _denied_code(code: object) -> bool:
    return code in _DENIED_CODES


def _create_results(response: dict, asked: list[str]) -> tuple[list[str], dict[str, tuple[int, str]]]:
    """From kafka-python's ``create_topics(..., raise_errors=False)`` answer (``{"topics": [{"name",
    "error_code", "error_message", ...}]}``): the topics this request created (in ``asked``'s
    order), and the refused ones, topic -> (error code, its name and the broker's message). An
    existing topic is neither; a topic the answer leaves out counts as refused."""
    from kafka.errors import for_code

    codes = {t["name"]: (int(t.get("error_code") or 0), t.get("error_message") or "")
             for t in (response or {}).get("topics", [])}
    created, refused = [], {}
    for topic in asked:
        code, message = codes.get(topic, (-1, "not in the broker's answer"))
        if code == 0:
            created.append(topic)
        elif code != TOPIC_ALREADY_EXISTS:
            name = for_code(code).__name__ if code != -1 else "no answer"
            refused[topic] = (code, f"{name}: {message}" if message and message != "None" else name)
    return created, refused


def _error_detail(refused: dict[str, tuple[int, str]]) -> str:
    """One error for all (the usual case), else each topic's own."""
    details = {detail for _, detail in refused.values()}
    if len(details) == 1:
        return details.pop()
    return "; ".join(f"{topic}: {detail}" for topic, (_, detail) in refused.items())


def _topic_configs(settings: Settings, topic: str, compacted: bool) -> dict[str, str]:
    configs = {"cleanup.policy": "compact"} if compacted else {}
    if not topic.startswith(settings.request_topic("")):
        configs["max.message.bytes"] = str(MAX_PRODUCE_BYTES)
    return configs


def ensure_model_topics(settings: Settings, models: list[str] | tuple[str, ...],
                        bootstrap: str | None = None) -> list[str]:
    """Every topic auditstream uses for ``models`` (:func:`auditstream.topics.all_topics`), the
    compacted ones compacted; returns the names created. Idempotent."""
    from auditstream.topics import all_topics, compacted_topics

    return ensure_topics(settings, all_topics(settings, list(models)), tuple(compacted_topics(settings, models)),
                         bootstrap)


_crc_checked = False  # warn once per process


def resolve_bootstrap(settings: Settings) -> str:
    """``settings.bootstrap_servers`` if set, else the address of the running embedded broker."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    state = Path(settings.state_dir) / BROKER_STATE_FILE
    try:
        info = json.loads(state.read_text())
        return str(info["bootstrap"])
    except (OSError, ValueError, KeyError):
        raise BrokerUnavailable(
            "(not configured)", f"AUDITSTREAM_BOOTSTRAP_SERVERS is empty and no embedded broker state at {state}"
        ) from None


def fetch_wait_ms(settings: Settings, bootstrap: str) -> int:
    """How long the broker at ``bootstrap`` may hold a fetch: ``settings.fetch_max_wait_ms`` if
    set, else :data:`FETCH_MAX_WAIT_MS`, or :data:`DURABLE_FETCH_MAX_WAIT_MS` when ``bootstrap`` is
    this state dir's embedded broker on S3 storage (with a shorter wait its fetches come back empty
    once a partition's storage listing outlasts it)."""
    if settings.fetch_max_wait_ms:
        return settings.fetch_max_wait_ms
    try:
        info = json.loads((Path(settings.state_dir) / BROKER_STATE_FILE).read_text())
        durable = str(info["storage"]).startswith("s3://") and str(info["bootstrap"]) == bootstrap
    except (OSError, ValueError, KeyError, TypeError):
        durable = False
    return DURABLE_FETCH_MAX_WAIT_MS if durable else FETCH_MAX_WAIT_MS


def _bootstrap(settings: Settings) -> str:
    return resolve_bootstrap(settings)


def kafka_python_has_fast_crc() -> bool:
    """True if kafka-python checksums record batches with the ``crc32c`` C extension; its
    pure-Python fallback costs several ms per fetched batch of 64 requests."""
    try:
        from kafka.record import util
    except ImportError:
        return False
    return util.calc_crc32c.__defaults__[0].__module__ != "kafka.record._crc32c"  # type: ignore[index]


def _checked_bootstrap(settings: Settings, bootstrap: str | None) -> str:
    """The address to connect to, after one bounded check of the connection's TLS and SASL
    (once per process; see :func:`auditstream.kafka.security.check_broker`)."""
    bootstrap = bootstrap or _bootstrap(settings)
    quiet_client_logs()
    check_broker(settings, bootstrap)
    global _crc_checked
    if settings.kafka_client == "kafka-python" and not _crc_checked:
        _crc_checked = True
        if not kafka_python_has_fast_crc():
            logging.getLogger(__name__).warning("kafka-python runs without the crc32c C extension (pip install "
                                                "crc32c): every fetched batch is checksummed in pure Python")
    return bootstrap
