"""Dead-letter replay (``auditstream dlq replay``): send dead letters back to the topic they came
from, with their original key, value and headers, once the cause is fixed (a new model version,
a widened input spec, a producer bug repaired).

It is itself an at-least-once :class:`~auditstream.stream.StreamLoop` in the consumer group
``<prefix>-dlq-replay``: a replayed dead letter is committed only after its copy on the source
topic is acknowledged, so an interrupted replay resumes where it stopped, and a record replayed
twice is answered twice with identical, request-id-keyed outputs. Records that fail again land
in the dead-letter topic again, with a new offset, and a later replay picks them up.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from auditstream import topics as T
from auditstream.errors import DecodeError
from auditstream.kafka import Record, make_producer, resolve_bootstrap
from auditstream.settings import Settings
from auditstream.stream import Output, StreamLoop
from auditstream.wire import DeadLetter

log = logging.getLogger(__name__)

@dataclass
class ReplayReport:
    replayed: Counter = field(default_factory=Counter)  # by reason
    skipped: Counter = field(default_factory=Counter)  # filtered out, by reason
    unreadable: int = 0


def replay_batch(records: list[Record], reasons: frozenset[str] | None, report: ReplayReport) -> list[list[Output]]:
    """One list of outputs per dead letter: its original record, bound for its source topic."""
    results: list[list[Output]] = []
    for record in records:
        try:
            dl = DeadLetter.from_bytes(record.value or b"")
        except DecodeError as e:
            log.warning("unreadable dead letter at %s: %s", record.where, e)
            report.unreadable += 1
            results.append([])
            continue
        if reasons is not None and dl.reason not in reasons:
            report.skipped[dl.reason] += 1
            results.append([])
            continue
        report.replayed[dl.reason] += 1
        results.append([Output(dl.source_topic, dl.key, dl.value, dl.headers)])
    return results


def replay(settings: Settings, reasons: list[str] | None = None, idle_s: float = 10.0,
           max_records: int | None = None) -> ReplayReport:
    """Replay dead letters not yet replayed by this group, until none arrived for ``idle_s``."""
    report = ReplayReport()
    wanted = frozenset(reasons) if reasons else None
    bootstrap = resolve_bootstrap(settings)
    group = f"{settings.topic_prefix}-dlq-replay"
    loop = StreamLoop.connect(settings, group, [settings.topic(T.DEAD_LETTER)],
                              lambda records: replay_batch(records, wanted, report),
                              make_producer(settings, bootstrap, client_id=group), bootstrap=bootstrap)
    loop.install_signal_handlers()
    try:
        loop.run(max_records=max_records, until_idle_s=idle_s)
    finally:
        loop.close()
    return report
