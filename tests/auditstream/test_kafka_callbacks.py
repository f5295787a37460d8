"""A rebalance callback that fails stops the consumer's poll, and a delivery failure while the
loop checkpoints on revoke stops the loop, on the embedded broker; and callbacks run only while
the loop's thread waits in the client, so the loop's unlocked state is never touched concurrently.

kafka-python calls the rebalance listener inside ``poll()`` and only logs what it raises; a
delivery failure while checkpointing on revoke would be swallowed and stale records processed.
The adapter keeps the error and raises it from ``poll()`` (confluent-kafka raises it itself)."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time

import pytest

from auditstream.errors import DeliveryFailed
from auditstream.kafka import make_consumer, make_producer
from auditstream.settings import Settings
from auditstream.stream import LoopHooks, Output, StreamLoop


@pytest.mark.kafka
@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_an_error_in_the_assign_callback_is_raised_from_poll(stream_settings: Settings, client: str) -> None:
    settings = dataclasses.replace(stream_settings, kafka_client=client)

    def failing(partitions: list) -> None:
        raise DeliveryFailed("t.state", b"k", "broker gone while checkpointing")

    consumer = make_consumer(settings, f"cb-{client}", [settings.request_topic("tiny")], on_assign=failing)
    try:
        deadline = time.monotonic() + 60
        with pytest.raises(DeliveryFailed, match="broker gone while checkpointing"):
            while time.monotonic() < deadline:
                consumer.poll(10, 500)
            pytest.fail("no assignment within 60 s")
    finally:
        consumer.close()


class _FailingFlushes:
    """The loop's real producer, whose flushes fail once ``fail`` is set (a broker that stopped
    acknowledging), noting whether each failed flush ran inside the revoke callback."""

    def __init__(self, producer) -> None:  # noqa: ANN001
        self.producer, self.fail, self.failed_in_revoke = producer, False, []

    def send(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return self.producer.send(*args, **kwargs)

    def flush(self, timeout_s: float) -> None:
        if self.fail:
            frame, names = sys._getframe(), set()
            while frame is not None:
                names.add(frame.f_code.co_name)
                frame = frame.f_back
            self.failed_in_revoke.append("_revoked" in names)
            raise DeliveryFailed("t.out", b"k", "broker stopped acknowledging")
        self.producer.flush(timeout_s)

    def close(self) -> None:
        self.producer.close()


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_delivery_failure_while_checkpointing_on_revoke_stops_the_loop(stream_settings: Settings, client: str) -> None:
    """A real rebalance (a second member joins) while processed batches wait for their checkpoint
    (records keep coming and the in-flight cap is out of reach, so the first checkpoint is the
    revoke's), and that checkpoint's flush fails inside the revoke callback: the loop must stop
    with the error -- no record processed after it, nothing committed -- instead of the client
    logging it and the loop going on with partitions it no longer owns."""
    # the highest cap the settings take: 1,000 batches, above the 800 of 4,000 records in fives
    settings = dataclasses.replace(stream_settings, kafka_client=client, max_batch_size=5,
                                   max_in_flight_batches=1_000, session_timeout_ms=6000, heartbeat_interval_ms=1000)
    topic, group = settings.request_topic("tiny"), f"revoke-{client}"
    _seed(settings, topic, 4000)
    entered, batches = threading.Event(), []

    def process(records: list) -> list:
        batches.append(len(records))
        entered.set()
        time.sleep(0.02)  # 800 batches take over 16 s: the rebalance comes while records keep coming
        return [[Output(settings.topic("out"), r.key, r.value)] for r in records]

    producer = _FailingFlushes(make_producer(settings))
    producer.fail = True
    loop = StreamLoop.connect(settings, group, [topic], process, producer)
    outcome: list[BaseException | None] = []
    runner = threading.Thread(target=lambda: outcome.append(_run(loop)), daemon=True)
    runner.start()
    other, stop_other = None, threading.Event()
    joiner = threading.Thread(target=lambda: [other.poll(1, 200) for _ in iter(stop_other.is_set, True)], daemon=True)
    try:
        assert entered.wait(60), "the loop never got a batch"
        # only now: confluent-kafka joins the group as soon as the consumer exists
        other = make_consumer(settings, group, [topic])
        joiner.start()  # the second member's join starts a rebalance
        runner.join(90)
        assert not runner.is_alive(), "the loop went on after its revoke checkpoint failed"
        processed = len(batches)
        time.sleep(1)
    finally:
        stop_other.set()
        joiner.join(30) if joiner.is_alive() else None
        loop.close()
        if other is not None:
            other.close()
    (error,) = outcome
    assert isinstance(error, DeliveryFailed) and "broker stopped acknowledging" in str(error)
    assert producer.failed_in_revoke == [True]  # the one checkpoint: inside the revoke callback
    assert len(batches) == processed < 800  # the loop stopped there, long before the end of the records
    assert _committed(settings, group, topic) == {}  # nothing committed


def _seed(settings: Settings, topic: str, n: int) -> None:
    seed = make_producer(settings)
    for i in range(n):
        seed.send(topic, f"k{i}".encode(), b"v")
    seed.flush(30)
    seed.close()


def _committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets (an OffsetFetch: no join, so a group the broker still
    holds in a rebalance answers too)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=group, enable_auto_commit=False)
    try:
        found = {p: consumer.committed(TopicPartition(topic, p)) for p in range(settings.partitions)}
        return {p: o for p, o in found.items() if o is not None}
    finally:
        consumer.close()


def _run(loop: StreamLoop) -> BaseException | None:
    try:
        loop.run()
    except BaseException as e:  # noqa: BLE001 - handed to the test thread
        return e
    return None


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_rebalance_callbacks_run_only_while_the_loop_thread_waits_in_the_client(stream_settings: Settings,
                                                                               client: str) -> None:
    """kafka-python 3 runs rebalance callbacks on its I/O thread, not the loop's. The loop's state
    (pending records, in-flight offsets) is not locked, which is safe only if the loop's thread is
    blocked inside the client (``poll``/``close``) while a callback runs -- kafka-python invokes
    the listener from the join coroutine that ``poll()`` waits for (``net.run``), librdkafka on the
    polling thread itself. This would find a callback that ran while the loop's thread was busy
    elsewhere (processing, flushing, committing): members join and leave several times while the
    loop spends most of its time outside ``poll``."""
    settings = dataclasses.replace(stream_settings, kafka_client=client, max_batch_size=5, session_timeout_ms=6000,
                                   heartbeat_interval_ms=1000)
    topic, group = settings.request_topic("tiny"), f"threads-{client}"
    _seed(settings, topic, 3000)
    inside = threading.Event()  # set while the loop's thread is inside the client's poll/close
    seen: list[tuple[str, str, bool]] = []  # (callback, thread name, loop thread inside the client)

    def note(kind: str) -> None:
        seen.append((kind, threading.current_thread().name, inside.is_set()))

    def process(records: list) -> list:
        time.sleep(0.05)  # most of the loop's time is spent here, outside poll
        return [[Output(settings.topic("out"), r.key, r.value)] for r in records]

    loop = StreamLoop.connect(settings, group, [topic], process, make_producer(settings),
                              hooks=LoopHooks(on_assign=lambda _: note("assign"), on_revoke=lambda _: note("revoke")))
    for name in ("poll", "close"):
        _flag_while_inside(loop.consumer, name, inside)
    runner = threading.Thread(target=loop.run, daemon=True, name="loop")
    runner.start()
    try:
        for _ in range(3):  # a second member joins, then leaves: two rebalances each time
            other, stop = make_consumer(settings, group, [topic]), threading.Event()
            poller = threading.Thread(target=lambda: [other.poll(1, 100) for _ in iter(stop.is_set, True)], daemon=True)
            poller.start()
            time.sleep(8)
            stop.set()
            poller.join(30)
            other.close()
            time.sleep(4)
    finally:
        loop.stop()
        runner.join(60)
        loop.close()
    assert not runner.is_alive()
    assert sum(kind == "revoke" for kind, _, _ in seen) >= 3, seen
    outside = [s for s in seen if not s[2]]
    assert outside == [], f"callbacks ran while the loop's thread was not waiting in the client: {outside}"


def _flag_while_inside(consumer: object, name: str, flag: threading.Event) -> None:
    real = getattr(consumer, name)

    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        flag.set()
        try:
            return real(*args, **kwargs)
        finally:
            flag.clear()

    setattr(consumer, name, wrapped)
