"""Dead-letter replay (``auditstream dlq replay``): send dead letters back to the topic they came
from, with their original key, value and headers, once the cause is fixed (a new model version,
a widened input spec, a producer bug repaired). Each record sent back also carries the header
``auditstream-replay-of`` (:data:`~auditstream.wire.REPLAY_OF_HEADER`) naming the letter it
replays, ``<prefix>.dead-letter[partition]@offset`` (an original header of that name -- a replay
that failed again -- is replaced): a policy consumer refuses a replayed episode step that its
episode has moved past and no longer holds (:mod:`serving.episodes`), where a driver's own
lower step restarts the episode.

**What was replayed is recorded, not consumed.** The replay reads the dead-letter topic from the
beginning with a :func:`~auditstream.kafka.make_reader` (no consumer group, nothing committed),
up to its end as of the start, and keeps a *replay ledger*: the compacted topic
``<prefix>.dead-letter-replayed``, one record per replayed letter, keyed by the letter's own
coordinates (``<prefix>.dead-letter[partition]@offset``). A letter is replayed when it matches
the ``--reason`` filter and is not in the ledger. A letter that does not match leaves no trace,
so a later replay with another filter (or none) still finds it -- a shared group offset would
have skipped it for good.

Order per chunk of letters, at-least-once: send the originals → flush and verify every delivery
→ write their ledger records → flush and verify. A crash between the two flushes replays those
letters once more next time; a replayed request is answered again with identical,
request-id-keyed outputs. Records that fail again land in the dead-letter topic again, at a new
offset, and a later replay picks them up. Run one replay at a time: two at once may both send
a letter.

**Only where a letter can legitimately come from.** The dead-letter topic is writable by every
consumer, so a forged letter could name any topic. Replay sends only to request topics
(``<prefix>.requests.<model>``) and to the monitor's inputs (``<prefix>.audit``,
``<prefix>.predictions``); a letter naming any other topic (control, verdicts, decisions, ...)
is refused with a warning, counted in the report, and left unreplayed.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field

from auditstream import topics as T
from auditstream.errors import DecodeError
from auditstream.kafka import (Producer, Record, ensure_topics, make_producer, make_reader, read_to_end,
                               resolve_bootstrap, true_end_offsets)
from auditstream.settings import Settings
from auditstream.stream import Output
from auditstream.wire import REPLAY_OF_HEADER, DeadLetter, Reason

log = logging.getLogger(__name__)

LEDGER = T.DEAD_LETTER_REPLAYED  # compacted: one record per replayed dead letter
CHUNK = 500  # letters per send → flush → ledger → flush round
FLUSH_TIMEOUT_S = 30.0
_MODEL_NAME = r"[a-z0-9][a-z0-9_-]{0,63}"  # as auditstream.registry accepts model names


@dataclass
class ReplayReport:
    replayed: Counter = field(default_factory=Counter)  # by reason
    skipped: Counter = field(default_factory=Counter)  # filtered out, by reason (left for a later replay)
    already: int = 0  # replayed before (in the ledger)
    refused: Counter = field(default_factory=Counter)  # by the topic the letter named: not replayable
    unreadable: int = 0
    no_value: int = 0  # letters without the original value: nothing to send back
    not_carried: int = 0  # letters whose original was too large to carry: it is still at its source offset
    # the monitor's outbox letters (a verdict or decision over its topic's limit): the verdict is
    # in the audit store, nothing is sent back
    outbox: int = 0

    def to_json(self) -> dict:
        return {"replayed": dict(self.replayed), "skipped": dict(self.skipped), "already_replayed": self.already,
                "refused": dict(self.refused), "unreadable": self.unreadable, "no_value": self.no_value,
                "not_carried": self.not_carried, "outbox": self.outbox}


def replayable_topic(settings: Settings, topic: str) -> bool:
    """A request topic of some model, or a topic the monitor reads (audit, predictions)."""
    if topic in (settings.topic(T.AUDIT), settings.topic(T.PREDICTIONS)):
        return True
    return re.fullmatch(re.escape(settings.request_topic("")) + _MODEL_NAME, topic) is not None


def ledger_key(record: Record) -> bytes:
    return record.where.encode()


def plan_replay(records: list[Record], settings: Settings, reasons: frozenset[str] | None, done: set[bytes],
                report: ReplayReport, limit: int | None = None) -> list[tuple[Record, Output]]:
    """The (dead-letter record, original to send) pairs of this chunk; counts the rest. Stops once
    ``limit`` letters were replayed in all (the records after that are not looked at)."""
    planned: list[tuple[Record, Output]] = []
    for record in records:
        if limit is not None and sum(report.replayed.values()) >= limit:
            break
        try:
            dl = DeadLetter.from_bytes(record.value or b"")
        except DecodeError as e:
            log.warning("unreadable dead letter at %s: %s", record.where, e)
            report.unreadable += 1
            continue
        if ledger_key(record) in done:
            report.already += 1
        elif reasons is not None and dl.reason not in reasons:
            report.skipped[dl.reason] += 1
        elif dl.reason == Reason.TOO_LARGE.value and dl.source_topic in (settings.topic(T.VERDICTS),
                                                                         settings.topic(T.DECISIONS)):
            log.info("dead letter at %s is the monitor's: a %s record over that topic's limit (%s); its verdict "
                     "stays in the audit store, nothing to replay", record.where, dl.source_topic[:200], dl.reason)
            report.outbox += 1
        elif not replayable_topic(settings, dl.source_topic):
            log.warning("refusing dead letter at %s: it names source topic %r; replay only sends to request topics "
                        "(%s<model>) and to %s / %s", record.where, dl.source_topic[:200], settings.request_topic(""),
                        settings.topic(T.AUDIT), settings.topic(T.PREDICTIONS))
            report.refused[dl.source_topic[:200]] += 1
        elif dl.omitted_bytes:
            log.warning("dead letter at %s does not carry its original (%d bytes, too large for the dead-letter "
                        "topic): it is at %s[%d]@%d (value SHA-256 %s) while that topic's retention keeps it",
                        record.where, dl.omitted_bytes, dl.source_topic[:200], dl.source_partition, dl.source_offset,
                        dl.value_sha256)
            report.not_carried += 1
        elif dl.value is None:
            # kafka-python could not read the original (its bytes are unknown), or it had no value:
            # sending None would publish a tombstone, not the request.
            log.warning("dead letter at %s has no value (%s): nothing to replay; the original is at %s[%d]@%d "
                        "(confluent-kafka can read records kafka-python cannot)", record.where, dl.detail[:200],
                        dl.source_topic[:200], dl.source_partition, dl.source_offset)
            report.no_value += 1
        else:
            report.replayed[dl.reason] += 1
            planned.append((record, Output(dl.source_topic, dl.key, dl.value, replay_headers(dl, record))))
    return planned


def replay_headers(dl: DeadLetter, record: Record) -> tuple[tuple[str, bytes | None], ...]:
    """The original's headers, in order, with :data:`REPLAY_OF_HEADER` naming the letter replayed
    (``record``, the letter's own coordinates, its ledger key) last, in place of one the original
    had (the letter of a replay that failed again): a consumer tells a replay from its producer's
    own record by it. It adds ``len(REPLAY_OF_HEADER) + len(record.where)`` bytes (at most ~300)
    to the original, which its letter carried whole: far below what the clients send at most."""
    kept = tuple((name, value) for name, value in dl.headers if name != REPLAY_OF_HEADER)
    return kept + ((REPLAY_OF_HEADER, ledger_key(record)),)


def _send_and_record(producer: Producer, ledger: str, planned: list[tuple[Record, Output]]) -> None:
    for _record, out in planned:
        producer.send(out.topic, out.key, out.value, out.headers)
    producer.flush(FLUSH_TIMEOUT_S)  # DeliveryFailed: nothing of this chunk goes into the ledger
    now = time.time()
    for record, out in planned:
        marker = json.dumps({"replayed_to": out.topic, "replayed_at_s": now}).encode()
        producer.send(ledger, ledger_key(record), marker)
    producer.flush(FLUSH_TIMEOUT_S)


def replay(settings: Settings, reasons: list[str] | None = None, max_records: int | None = None) -> ReplayReport:
    """Replay the dead letters (of ``reasons``, default all) not replayed before, up to the end of
    the dead-letter topic as of the start; at most ``max_records`` of them."""
    report = ReplayReport()
    wanted = frozenset(reasons) if reasons else None
    bootstrap = resolve_bootstrap(settings)
    dead_letters, ledger = settings.topic(T.DEAD_LETTER), settings.topic(LEDGER)
    ensure_topics(settings, [dead_letters, ledger], compacted=(ledger,), bootstrap=bootstrap)
    done = {r.key for r in read_to_end(settings, [ledger], bootstrap) if r.key is not None and r.value is not None}
    # The dead letters as of the start, found past the broker's reported ends (a lower bound on
    # Tansu); later ones -- a replayed record that fails again -- wait for the next replay.
    ends = true_end_offsets(settings, [dead_letters], bootstrap)
    unread = {where for where, end in ends.items() if end > 0}
    reader = make_reader(settings, [dead_letters], True, bootstrap)
    producer = make_producer(settings, bootstrap, client_id=f"{settings.topic_prefix}-dlq-replay")
    try:
        while unread:
            if max_records is not None and sum(report.replayed.values()) >= max_records:
                break
            got = reader.poll(CHUNK, 500)
            if not got and reader.caught_up():
                break  # the partitions left in unread begin at their end (their records were deleted)
            for record in got:
                if record.offset + 1 >= ends[(record.topic, record.partition)]:
                    unread.discard((record.topic, record.partition))
            planned = plan_replay([r for r in got if r.offset < ends[(r.topic, r.partition)]], settings, wanted,
                                  done, report, max_records)
            if planned:
                _send_and_record(producer, ledger, planned)
    finally:
        reader.close()
        producer.close()
    return report
