"""kafka-python 3 runs rebalance callbacks on its I/O thread, not the loop's. The loop's state
(pending records, in-flight offsets) is not locked, which is safe only if the loop's thread is
blocked inside the client (``poll``/``close``) for as long as a callback runs -- kafka-python
invokes the listener from the join coroutine that ``poll()`` waits for (``net.run``), and
librdkafka calls it on the polling thread itself. This test would find a callback that ran while
the loop's thread was busy elsewhere (processing a batch, flushing, committing): members join and
leave the group several times while the loop spends most of its time outside ``poll``."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from auditstream.kafka import make_consumer, make_producer
from auditstream.settings import Settings
from auditstream.stream import LoopHooks, Output, StreamLoop


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_rebalance_callbacks_run_only_while_the_loop_thread_waits_in_the_client(stream_settings: Settings,
                                                                               client: str) -> None:
    settings = dataclasses.replace(stream_settings, kafka_client=client, max_batch_size=5, session_timeout_ms=6000,
                                   heartbeat_interval_ms=1000)
    topic, group = settings.request_topic("tiny"), f"threads-{client}"
    seed = make_producer(settings)
    for i in range(3000):
        seed.send(topic, f"k{i}".encode(), b"v")
    seed.flush(30)
    seed.close()
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
