"""The outbox's crash window, reproduced deterministically on the embedded broker and a real
store (SQLite and PostgreSQL): the broker acknowledged a round (all of it, or the part that left
the process before it died) and the publisher died before marking it. A restarted publisher
waits for the round's fence, reads the topics from the round's recorded positions, marks what
is there and sends only the rest: every verdict and every decision is on its topic exactly once,
byte-identical to its outbox row (store/outbox.py, monitor/service.py ``publish_outbox``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from tests.store.store_factories import BACKENDS, add_users, audit_item, make_store

from auditstream import topics
from auditstream.kafka import make_producer, make_topic_log, read_to_end
from auditstream.settings import Settings
from auditstream.wire import Route
from monitor.service import publish_outbox
from store import accounts

pytestmark = [pytest.mark.kafka]
T0 = 30_000.0


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)


class Died(Exception):
    """The publishing process ended here (its next line, the mark, never ran)."""


class DiesAfterTheAcknowledgement:
    """A real producer in a process that dies right after the broker acknowledged the round.
    ``reached``: how many of the round's records left the process before it died (None: all);
    the others were still in its memory and are gone with it."""

    def __init__(self, producer, reached: int | None = None) -> None:  # noqa: ANN001
        self.producer, self.reached, self.handed = producer, reached, 0

    def send(self, topic, key, value, headers=()):  # noqa: ANN001, ANN201
        self.handed += 1
        if self.reached is None or self.handed <= self.reached:
            return self.producer.send(topic, key, value, headers)
        return None

    def flush(self, timeout_s: float) -> None:
        self.producer.flush(timeout_s)  # every record that left the process is acknowledged
        raise Died()

    def close(self) -> None:
        self.producer.close()


def _decided_store(store) -> None:  # noqa: ANN001
    (alice,) = add_users(store, "alice")
    store.ingest_many([audit_item(f"h{i}") for i in range(6)] + [audit_item(f"q{i}", Route.AUTO_QC) for i in range(3)], T0)
    while (claim := store.claim(alice, 60, T0)) is not None:
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "accept", None, T0)


def _on_topics(settings: Settings) -> Counter:
    names = [settings.topic(topics.VERDICTS), settings.topic(topics.DECISIONS)]
    return Counter((r.topic, r.key, r.value) for r in read_to_end(settings, names, timeout_s=60.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reached", [None, 5], ids=["all-acknowledged", "5-of-15-acknowledged"])
def test_a_publisher_killed_between_acknowledgement_and_mark_publishes_nothing_twice(
        backend: str, reached: int | None, stream_settings: Settings, tmp_path: Path) -> None:  # fmt: skip
    settings = stream_settings
    with make_store(backend, tmp_path) as store:
        _decided_store(store)
        rows = store.pending_outbox()
        assert len(rows) == 9 + 6  # 9 verdicts, 6 human decisions
        expected = Counter((settings.topic(r.topic), r.key, r.value) for r in rows)

        first_log = make_topic_log(settings)
        dying = DiesAfterTheAcknowledgement(make_producer(settings, client_id="outbox-first"), reached)
        try:
            with pytest.raises(Died):
                publish_outbox(store, dying, settings, T0, limit=100, topic_log=first_log, owner="first")
        finally:
            dying.close()
            first_log.close()
        (left_open,) = store.open_outbox_rounds()
        assert left_open.owner == "first" and left_open.rows == rows  # nothing marked
        before_restart = _on_topics(settings)
        assert sum(before_restart.values()) == (reached if reached is not None else len(rows))
        assert set(before_restart.values()) == {1}

        # The restarted publisher: a new producer, a new reader of the topics.
        producer, topic_log = make_producer(settings, client_id="outbox-second"), make_topic_log(settings)
        try:
            # Before the fence the round might still be in flight (a zombie): its rows wait.
            assert publish_outbox(store, producer, settings, left_open.fence_s - 0.5, limit=100,
                                  topic_log=topic_log, owner="second") == 0  # fmt: skip
            assert _on_topics(settings) == before_restart
            published = publish_outbox(store, producer, settings, left_open.fence_s, limit=100,
                                       topic_log=topic_log, owner="second")  # fmt: skip
            assert published == len(rows)  # found on the topics, or sent now
            assert publish_outbox(store, producer, settings, left_open.fence_s + 1, limit=100,
                                  topic_log=topic_log, owner="second") == 0  # fmt: skip
        finally:
            producer.close()
            topic_log.close()
        assert store.pending_outbox() == [] and store.open_outbox_rounds() == []
        assert _on_topics(settings) == expected  # every record once, byte-identical: none twice, none lost
