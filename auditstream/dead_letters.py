"""A dead letter that its topic takes, for every consumer that dead-letters (serving, the monitor).

A letter carries the original record whole (key, value and headers in base64, 4/3 of their
size, and the headers once more on the letter's record), so the letter of a record near its own
topic's limit is over the dead-letter topic's -- and a letter the broker or the client refuses
stops the loop on that record for good (:mod:`auditstream.kafka.limits`). So a letter that would
not fit is sent without the original: same reason, a detail that says so, the original's size
and the SHA-256 of its value, and where it stays (its source topic, partition and offset; the
letter is kept as long as that topic's retention keeps it). ``auditstream dlq replay`` counts
such letters apart (``not_carried``) and names where each original is.
"""

from __future__ import annotations

import hashlib

from auditstream.kafka import Record
from auditstream.kafka.limits import MAX_PRODUCE_BYTES, RECORD_OVERHEAD_BYTES, record_bytes
from auditstream.stream import Output
from auditstream.wire import DeadLetter
from auditstream.wire.codec import MAX_DETAIL_CHARS


def dead_letter_output(record: Record, reason: str, detail: str, topic: str, failed_at_s: float,
                       limit: int = MAX_PRODUCE_BYTES) -> Output:
    """The dead letter of ``record`` for ``topic``, at most ``limit`` bytes as
    :func:`~auditstream.kafka.limits.record_bytes` counts them: the original whole when that
    fits, else a letter that says where the original is."""
    letter = DeadLetter(reason, detail, record.topic, record.partition, record.offset, record.value,
                        record.key, tuple(record.headers), failed_at_s)  # fmt: skip
    value = letter.to_bytes()
    if record_bytes(record.key, value, record.headers) <= limit:
        return Output(topic, record.key, value, tuple(record.headers))
    original = record_bytes(record.key, record.value, record.headers) - RECORD_OVERHEAD_BYTES
    note = (f" [the original ({original} bytes) is not carried: its letter would be over {topic[:249]}'s limit of "
            f"{limit} bytes; it stays at {record.where}]")
    small = DeadLetter(reason, detail[:MAX_DETAIL_CHARS - len(note)] + note, record.topic, record.partition,
                       record.offset, None, None, (), failed_at_s, omitted_bytes=max(1, original),
                       value_sha256=hashlib.sha256(record.value or b"").hexdigest())
    return Output(topic, None, small.to_bytes())
