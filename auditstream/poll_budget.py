"""How many records one micro-batch may hold, so that the gap between two polls stays well inside
``max.poll.interval.ms`` when inference is slower than usual (docs/serving.md, "Consumer group
settings": max poll interval).

Both Kafka clients leave the group when the application does not poll for ``max.poll.interval.ms``
(kafka-python 3's heartbeat coroutine sends LeaveGroup; librdkafka does the same and reports
``MAX_POLL_EXCEEDED`` on the next poll). The batch that overran cannot be committed: its
partitions move, their new owner reads it again, and if every batch overruns, every batch is
reprocessed -- a loop that never commits. The stream loop therefore times each batch and keeps
its size under a limit: a batch that took more than ``share`` of the interval shrinks the limit
in proportion (records × target / elapsed), so the next batch fits; batches well under target
let it grow back, doubling, up to ``max_batch_size``. At most one batch (the first of a slow spell)
overruns. A single record slower than the whole interval cannot be helped by batching: that is
reported once, with the setting to raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class PollBudget:
    """The current batch-size limit (``limit``), adapted after every batch by :meth:`observe`."""

    max_batch_size: int
    max_poll_interval_s: float
    share: float = 0.5  # of the interval one batch may take: room for the flush, commit and poll
    limit: int = field(init=False)
    overruns: int = field(default=0, init=False)  # batches that took longer than the whole interval
    _said_too_slow: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_poll_interval_s <= 0 or not 0 < self.share < 1:
            raise ValueError(f"PollBudget(max_batch_size={self.max_batch_size} >= 1, max_poll_interval_s="
                             f"{self.max_poll_interval_s} > 0, share={self.share} in (0, 1))")
        self.limit = self.max_batch_size

    @property
    def target_s(self) -> float:
        return self.share * self.max_poll_interval_s

    def observe(self, records: int, elapsed_s: float) -> str | None:
        """Account for a batch of ``records`` that took ``elapsed_s``; returns why the limit
        changed (for the log), or None."""
        if records < 1:
            return None
        if elapsed_s > self.max_poll_interval_s:
            self.overruns += 1
        if records == 1 and elapsed_s > self.max_poll_interval_s and not self._said_too_slow:
            self._said_too_slow, self.limit = True, 1
            return (f"one record took {elapsed_s:.1f} s, longer than max_poll_interval_ms ({self.max_poll_interval_s:g} s): "
                    "no batch size fits, the group will rebalance after every batch: raise AUDITSTREAM_MAX_POLL_INTERVAL_MS")
        if elapsed_s > self.target_s:
            fitting = max(1, math.floor(records * self.target_s / elapsed_s))
            if fitting >= self.limit:
                return None
            before, self.limit = self.limit, fitting
            return (f"a batch of {records} records took {elapsed_s:.1f} s, over {self.share:.0%} of "
                    f"max_poll_interval_ms ({self.max_poll_interval_s:g} s): batches now hold at most "
                    f"{self.limit} records (were {before})")
        if elapsed_s < self.target_s / 4 and records >= self.limit and self.limit < self.max_batch_size:
            before, self.limit = self.limit, min(self.max_batch_size, 2 * self.limit)
            return f"a batch of {records} records took {elapsed_s:.2f} s: batches may hold {self.limit} records again (were {before})"
        return None
