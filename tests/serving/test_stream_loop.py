"""auditstream.stream.StreamLoop against in-memory fakes: the checkpoint order step by step.

The fakes log every call into one shared list, so the tests read the order of poll / send /
flush / commit directly. The loop against the real broker is in test_stream_e2e.py.
"""

from __future__ import annotations

import math

import pytest

from auditstream.errors import BatchFailed, CommitRejected, DeliveryFailed
from auditstream.kafka import Delivery, Record
from auditstream.stream import BatchingConfig, LoopHooks, Output, StreamLoop


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeConsumer:
    def __init__(self, log: list, batches: list[list[Record]], clock: Clock, step_s: float = 0.001) -> None:
        self.log, self.batches, self.clock, self.step_s = log, list(batches), clock, step_s
        self.committed: dict = {}
        self.reject_commits = False
        self.on_poll = None

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        self.clock.t += self.step_s
        if self.on_poll:
            self.on_poll()
        if not self.batches:
            self.clock.t += timeout_ms / 1000
            self.log.append(("poll", 0))
            return []
        head = self.batches[0]
        out, self.batches[0] = head[:max_records], head[max_records:]
        if not self.batches[0]:
            self.batches.pop(0)
        self.log.append(("poll", len(out)))
        return out

    def commit(self, offsets: dict) -> None:
        if self.reject_commits:
            raise CommitRejected(offsets, "rebalance in progress")
        self.log.append(("commit", dict(offsets)))
        self.committed.update(offsets)

    def assignment(self) -> set:
        return {("in", 0), ("in", 1)}

    def rewind(self, offsets: dict) -> None:
        self.log.append(("rewind", dict(offsets)))

    def lag(self) -> dict:
        return {}

    def close(self) -> None:
        self.log.append(("close",))


class FakeProducer:
    def __init__(self, log: list, fail_topic: str | None = None) -> None:
        self.log, self.fail_topic = log, fail_topic
        self.pending: list[Delivery] = []

    def send(self, topic, key, value, headers=()) -> Delivery:
        self.log.append(("send", topic, key))
        d = Delivery(topic, key)
        d.failed("broker said no") if topic == self.fail_topic else d.succeeded(0, len(self.pending))
        self.pending.append(d)
        return d

    def flush(self, timeout_s: float) -> None:
        self.log.append(("flush",))
        pending, self.pending = self.pending, []
        for d in pending:
            if d.error:
                raise DeliveryFailed(d.topic, d.key, d.error)

    def close(self) -> None:
        self.log.append(("producer-close",))


def records(n: int, partition: int = 0, start: int = 0) -> list[Record]:
    return [Record("in", partition, start + i, f"k{start + i}".encode(), b"v") for i in range(n)]


def echo(batch: list[Record]) -> list[list[Output]]:
    return [[Output("out", r.key, r.value)] for r in batch]


def make(batches, cfg=BatchingConfig(max_batch_size=4, max_wait_ms=10, max_in_flight_batches=2), **kw):
    log: list = []
    clock = Clock()
    consumer, producer = FakeConsumer(log, batches, clock), FakeProducer(log, kw.pop("fail_topic", None))
    return StreamLoop(consumer, producer, kw.pop("process", echo), cfg, clock=clock, **kw), consumer, log


def test_flush_then_commit_after_in_flight_cap() -> None:
    loop, consumer, log = make([records(8)])
    stats = loop.run(max_records=8)
    kinds = [e[0] for e in log]
    # two full batches produced, then one checkpoint: flush strictly before commit
    assert kinds.count("send") == 8 and kinds.index("flush") > max(i for i, k in enumerate(kinds) if k == "send")
    assert kinds.index("commit") == kinds.index("flush") + 1
    assert consumer.committed == {("in", 0): 8}
    assert stats.batch_sizes == [4, 4] and stats.commits == 1


def test_partial_batch_cut_at_max_wait_by_injected_clock() -> None:
    loop, consumer, log = make([records(3)])
    consumer.step_s = 0.004  # each poll advances the fake clock 4 ms
    loop.run(max_records=3)
    assert loop.stats.batch_sizes == [3]
    assert consumer.committed == {("in", 0): 3}


def test_quiet_stream_checkpoints_before_cap() -> None:
    loop, consumer, _ = make([records(4)])
    consumer.on_poll = lambda: loop.stop() if loop.stats.commits else None
    loop.run()
    assert consumer.committed == {("in", 0): 4} and loop.stats.commits == 1


def test_delivery_failure_commits_nothing() -> None:
    loop, consumer, log = make([records(4)], fail_topic="out")
    with pytest.raises(DeliveryFailed, match="broker said no"):
        loop.run(max_records=4)
    assert consumer.committed == {} and not any(e[0] == "commit" for e in log)


def test_processing_error_names_the_records() -> None:
    def boom(batch):
        raise RuntimeError("model file corrupt")

    loop, consumer, _ = make([records(4, partition=1, start=10)], process=boom)
    with pytest.raises(BatchFailed, match=r"in\[1\]@10 \.\. in\[1\]@13.*model file corrupt"):
        loop.run(max_records=4)
    assert consumer.committed == {}


def test_result_count_must_match() -> None:
    loop, _, _ = make([records(4)], process=lambda batch: [[]])
    with pytest.raises(BatchFailed, match="1 results for 4 records"):
        loop.run(max_records=4)


def test_stop_finishes_polled_records_and_commits() -> None:
    loop, consumer, log = make([records(2), records(2, partition=1), records(2, start=2)])
    consumer.on_poll = lambda: loop.stop() if consumer.log else None  # SIGTERM during the 2nd poll
    loop.run()
    # what was polled (a partial batch, below max_batch_size) is processed and committed; no more polls
    assert [e for e in log if e[0] == "poll"] == [("poll", 2), ("poll", 2)]
    assert loop.stats.records_in == 4 and consumer.committed == {("in", 0): 2, ("in", 1): 2}


def test_rejected_commit_is_not_fatal() -> None:
    loop, consumer, _ = make([records(8)])
    consumer.reject_commits = True
    stats = loop.run(max_records=8)
    assert stats.rejected_commits == 1 and consumer.committed == {}


def test_revoke_checkpoints_and_drops_unprocessed_records() -> None:
    revoked: list = []
    loop, consumer, log = make([records(4), records(2, partition=1)], hooks=LoopHooks(on_revoke=revoked.append))
    loop.run(max_records=4)  # batch of 4 produced, still in flight (cap 2)
    loop._pending = records(2, partition=1)  # polled, not processed
    loop._revoked([("in", 0), ("in", 1)])
    assert consumer.committed == {("in", 0): 4} and loop._pending == [] and revoked == [[("in", 0), ("in", 1)]]
    # the dropped records are read again if the partition comes back (kafka-python keeps positions)
    assert log[-1] == ("rewind", {("in", 1): 0})


def test_hooks_add_state_outputs_before_the_commit() -> None:
    seen: list = []
    hooks = LoopHooks(before_checkpoint=lambda offsets: [Output("state", b"ep", repr(sorted(offsets.items())).encode())],
                      after_commit=seen.append)
    loop, consumer, log = make([records(4)], hooks=hooks)
    loop.run(max_records=4)
    kinds = [(e[0], e[1] if len(e) > 1 else None) for e in log]
    assert kinds.index(("send", "state")) < kinds.index(("flush", None)) < [k[0] for k in kinds].index("commit")
    assert seen == [{("in", 0): 4}]


def test_bad_config_is_refused_with_numbers() -> None:
    with pytest.raises(ValueError, match="max_batch_size=0"):
        BatchingConfig(max_batch_size=0)


def test_slow_batches_shrink_so_the_gap_between_polls_stays_inside_max_poll_interval() -> None:
    """Processing that takes 1.5x max.poll.interval for a full batch: the first batch overruns,
    every later one fits in half the interval (auditstream.poll_budget)."""
    clock = Clock()
    cfg = BatchingConfig(max_batch_size=16, max_wait_ms=10, max_in_flight_batches=1, max_poll_interval_s=10.0)
    log: list = []
    consumer, polls = FakeConsumer(log, [records(200)], clock), []

    def slow(batch: list[Record]) -> list[list[Output]]:
        clock.t += len(batch) * 15.0 / 16
        return echo(batch)

    consumer.on_poll = lambda: polls.append(clock.t)
    loop = StreamLoop(consumer, FakeProducer(log), slow, cfg, clock=clock)
    loop.run(max_records=200)
    gaps = [b - a for a, b in zip(polls, polls[1:])]
    assert loop.stats.batch_sizes[0] == 16 and max(gaps) > 10.0  # the first batch overran
    assert all(g <= 5.0 for g in gaps[2:]) and set(loop.stats.batch_sizes[1:-1]) == {5}
    assert loop.budget is not None and loop.budget.overruns == 1
    assert consumer.committed == {("in", 0): 200}


def test_records_that_already_waited_in_kafka_are_not_held_for_max_wait_again() -> None:
    import dataclasses

    def run(budget_ms: int, written_ms_ago: int) -> list[int]:
        stamp = 1_000_000 - written_ms_ago  # "now" is 1,000 s on the wall clock
        queued = [dataclasses.replace(r, timestamp_ms=stamp) for r in records(2)]
        cfg = BatchingConfig(max_batch_size=4, max_wait_ms=10, max_in_flight_batches=2, latency_budget_ms=budget_ms)
        loop, _, _ = make([queued, records(2, start=2)], cfg=cfg, wall_clock=lambda: 1000.0)
        return loop.run(max_records=4).batch_sizes

    # written 50 ms ago (they queued behind a slow batch): more than max_wait, so cut at once,
    # with or without a budget; the fresh ones that follow wait for the batch to fill as before
    assert run(0, 50) == [2, 2] and run(100, 50) == [2, 2]
    # written 2 ms ago: they wait for the rest of max_wait and the batch fills
    assert run(0, 2) == [4]
    # a producer clock 5 s ahead counts no wait; one far behind only cuts sooner, never stalls
    assert run(0, -5_000) == [4] and run(0, 999_999) == [2, 2]


def test_records_without_a_timestamp_wait_max_wait_from_the_poll() -> None:
    cfg = BatchingConfig(max_batch_size=4, max_wait_ms=10, max_in_flight_batches=2)
    loop, _, _ = make([records(2), records(2, start=2)], cfg=cfg, wall_clock=lambda: 1000.0)
    assert loop.run(max_records=4).batch_sizes == [4]


def test_drain_rate_counts_from_the_first_record_to_the_last_commit() -> None:
    from auditstream.stream import LoopStats

    assert LoopStats(records_in=100, first_record_at=10.0, last_commit_at=12.0).drain_rate_per_s == 50.0
    assert math.isnan(LoopStats(records_in=100, first_record_at=10.0).drain_rate_per_s)  # nothing committed yet
    assert math.isnan(LoopStats().drain_rate_per_s)
