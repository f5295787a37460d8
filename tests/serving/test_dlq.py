"""Dead-letter replay: a filtered replay leaves the other letters for later, the ledger stops a
second replay of the same letter, and letters naming topics replay never writes to are refused.
The planning is tested without a broker; the whole command on the embedded broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from auditstream import topics as T
from auditstream.kafka import Record, make_producer
from auditstream.settings import Settings
from auditstream.wire import REPLAY_OF_HEADER, DeadLetter
from serving.dlq import LEDGER, ReplayReport, plan_replay, replay, replayable_topic
from tests.serving.kafka_readers import read_topic

SETTINGS = Settings(topic_prefix="acme")


def letter(offset: int, reason: str, source: str, value: bytes | None = b"v") -> Record:
    dl = DeadLetter(reason, "why", source, 0, offset, value, b"k", (("h", b"1"), ("trace", None)), 1.0)
    return Record("acme.dead-letter", 0, offset, b"k", dl.to_bytes())


@pytest.mark.parametrize(("topic", "ok"), [
    ("acme.requests.zip-reader", True), ("acme.requests.tiny", True), ("acme.audit", True),
    ("acme.predictions", True), ("acme.control", False), ("acme.verdicts", False), ("acme.decisions", False),
    ("acme.episode-state", False), ("acme.episode-state.tiny", False), ("acme.requests.", False), ("acme.requests.a.b", False),
    ("other.requests.tiny", False), ("acme.requests.Tiny", False), ("acme.dead-letter", False),
])
def test_only_request_and_monitor_input_topics_are_replayable(topic, ok) -> None:
    assert replayable_topic(SETTINGS, topic) is ok


def test_a_replayed_records_replay_header_replaces_its_originals() -> None:
    """The letter of a replay that failed again carries the header of that replay: sent back
    again, it names the newer letter, once, and the other headers keep their order."""
    dl = DeadLetter("inference_failed", "why", "acme.requests.tiny", 0, 3, b"v", b"k",
                    (("a", b"1"), (REPLAY_OF_HEADER, b"acme.dead-letter[0]@0"), ("b", None)), 1.0)
    record = Record("acme.dead-letter", 2, 41, b"k", dl.to_bytes())
    [(_, out)] = plan_replay([record], SETTINGS, None, set(), ReplayReport())
    assert out.headers == (("a", b"1"), ("b", None), (REPLAY_OF_HEADER, b"acme.dead-letter[2]@41"))
    assert (out.key, out.value) == (b"k", b"v")


def test_plan_skips_filtered_refuses_forged_and_remembers_the_ledger() -> None:
    records = [letter(0, "wrong_model", "acme.requests.tiny", b"a"), letter(1, "too_large", "acme.requests.tiny"),
               letter(2, "wrong_model", "acme.verdicts", b"forged"), letter(3, "wrong_model", "acme.requests.tiny"),
               Record("acme.dead-letter", 0, 4, b"k", b"not a letter"),
               letter(5, "wrong_model", "acme.requests.tiny", None),  # no bytes (kafka-python could not read them)
               Record("acme.dead-letter", 0, 6, None,  # too large to carry: the original stays at its offset
                      DeadLetter("wrong_model", "why", "acme.requests.tiny", 0, 9, None, None, (), 1.0, 99,
                                 "ab" * 32).to_bytes())]
    report = ReplayReport()
    planned = plan_replay(records, SETTINGS, frozenset({"wrong_model"}), {b"acme.dead-letter[0]@3"}, report)
    assert [(r.offset, out.topic, out.value, out.headers) for r, out in planned] == \
        [(0, "acme.requests.tiny", b"a", (("h", b"1"), ("trace", None),  # a null header value stays null
                                          (REPLAY_OF_HEADER, b"acme.dead-letter[0]@0")))]  # which letter it replays
    assert report.to_json() == {"replayed": {"wrong_model": 1}, "skipped": {"too_large": 1}, "already_replayed": 1,
                                "refused": {"acme.verdicts": 1}, "unreadable": 1, "no_value": 1,
                                "not_carried": 1, "outbox": 0}
    # the monitor's own letter of an outbox row no topic took: counted, nothing sent, not refused
    outbox = ReplayReport()
    assert plan_replay([letter(7, "too_large", "acme.decisions", b"row")], SETTINGS, None, set(), outbox) == []
    assert outbox.outbox == 1 and not outbox.refused
    limited = ReplayReport()
    assert len(plan_replay([letter(i, "x", "acme.audit") for i in range(5)], SETTINGS, None, set(), limited, 2)) == 2


@pytest.mark.kafka
@pytest.mark.slow
def test_replay_on_the_broker_filtered_then_all_then_nothing(stream_settings: Settings) -> None:
    settings = stream_settings
    source, dlq = settings.request_topic("tiny"), settings.topic(T.DEAD_LETTER)
    producer = make_producer(settings)
    headers = (("h", b"x"), ("null", None), ("empty", b""))  # replayed as they came, a null value as null
    letters = [DeadLetter("wrong_model", "x", source, 0, i, f"wm-{i}".encode(), f"wm-{i}".encode(), headers)
               for i in range(3)]
    letters += [DeadLetter("too_large", "x", source, 0, 10 + i, f"tl-{i}".encode(), f"tl-{i}".encode()) for i in range(2)]
    forged = DeadLetter("wrong_model", "x", settings.topic(T.CONTROL), 0, 0, b'{"v":1,"model":"tiny"}', b"tiny")
    for dl in letters + [forged]:
        producer.send(dlq, dl.key, dl.to_bytes())
    producer.flush(30)
    producer.close()

    first = replay(settings, reasons=["wrong_model"])
    assert first.replayed == {"wrong_model": 3} and first.skipped == {"too_large": 2}
    assert first.refused == {settings.topic(T.CONTROL): 1}
    second = replay(settings)  # the two skipped letters are still there; the three replayed are not again
    assert second.replayed == {"too_large": 2} and second.already == 3 and second.refused == {settings.topic(T.CONTROL): 1}
    third = replay(settings)
    assert not third.replayed and third.already == 5
    replayed = read_topic(settings, source, until_count=5, timeout_s=30)
    assert sorted(r.value for r in replayed) == sorted(dl.value for dl in letters)  # each exactly once, nothing forged
    # as they came, and which letter each replays (its ledger key)
    ledger = {r.key: json.loads(r.value) for r in read_topic(settings, settings.topic(LEDGER), until_count=5,
                                                              timeout_s=30)}
    for r in replayed:
        *original, (name, of) = tuple(r.headers)
        assert name == REPLAY_OF_HEADER and of in ledger and ledger[of]["replayed_to"] == source
        assert tuple(original) == (headers if r.value.startswith(b"wm-") else ())
    assert len({dict(r.headers)[REPLAY_OF_HEADER] for r in replayed}) == 5
    assert read_topic(settings, settings.topic(T.CONTROL), timeout_s=10, idle_s=1) == []
    assert len(ledger) == 5


@pytest.mark.kafka
def test_replay_reads_past_the_end_the_broker_reports(stream_settings: Settings, monkeypatch) -> None:
    """Tansu reports a partition's end as its last batch's base offset + 1. 60 letters sent in one
    flush land in one batch; read 25 at a time, a replay that stopped at the reported end replayed
    25 of them (the old loop did)."""
    import serving.dlq

    settings = stream_settings
    source, dlq = settings.request_topic("tiny"), settings.topic(T.DEAD_LETTER)
    producer = make_producer(settings)
    letters = [DeadLetter("wrong_model", "x", source, 0, i, f"b-{i}".encode(), b"one-key") for i in range(60)]
    for dl in letters:  # one key: one partition
        producer.send(dlq, dl.key, dl.to_bytes())
    producer.flush(30)
    producer.close()
    monkeypatch.setattr(serving.dlq, "CHUNK", 25)
    assert replay(settings).replayed == {"wrong_model": 60}
    assert replay(settings).already == 60
    values = sorted(r.value for r in read_topic(settings, source, until_count=60, timeout_s=30))
    assert values == sorted(dl.value for dl in letters)


@pytest.mark.kafka
@pytest.mark.slow
def test_cli_refusal_exits_1_with_a_message(stream_settings: Settings) -> None:
    settings = stream_settings
    producer = make_producer(settings)
    forged = DeadLetter("bad_schema", "x", settings.topic(T.VERDICTS), 0, 0, b"{}", b"v")
    producer.send(settings.topic(T.DEAD_LETTER), b"v", forged.to_bytes())
    producer.flush(30)
    producer.close()
    env = dict(os.environ, AUDITSTREAM_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
               AUDITSTREAM_TOPIC_PREFIX=settings.topic_prefix, AUDITSTREAM_STATE_DIR=str(settings.state_dir))
    result = subprocess.run([sys.executable, "-m", "auditstream.cli", "dlq", "replay"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["refused"] == {settings.topic(T.VERDICTS): 1}
    assert "refused 1 dead letter(s)" in result.stderr and settings.topic(T.VERDICTS) in result.stderr
