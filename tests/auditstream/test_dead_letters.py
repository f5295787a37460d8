"""auditstream.dead_letters: a dead letter never exceeds its topic's limit, and carries the
original whole whenever that fits (no broker: the sizes are the client's and the broker's rule)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from tests.auditstream.test_wire_schema import validator

from auditstream.dead_letters import dead_letter_output
from auditstream.errors import DecodeError
from auditstream.kafka import Record
from auditstream.kafka.limits import MAX_PRODUCE_BYTES, RECORD_OVERHEAD_BYTES, record_bytes
from auditstream.wire import DeadLetter
from auditstream.wire.codec import MAX_DEAD_LETTER_BYTES, MAX_RECORD_BYTES

TOPIC = "auditstream.dead-letter"


def _record(key: bytes | None, value: bytes | None, headers=(("trace", b"abc"),)) -> Record:
    return Record("auditstream.requests.digits", 3, 1234, key, value, tuple(headers), 1_800_000_000_000)


def test_a_letter_that_fits_carries_the_original_whole() -> None:
    record = _record(b"req-1", b"x" * 10_000)
    out = dead_letter_output(record, "wrong_shape", "shape", TOPIC, 1.0, limit=64_000)
    assert out.topic == TOPIC and out.key == b"req-1" and out.headers == record.headers
    letter = DeadLetter.from_bytes(out.value)
    assert (letter.value, letter.key, letter.headers, letter.omitted_bytes) == (record.value, b"req-1", record.headers, 0)
    assert "omitted" not in json.loads(out.value)  # the letters of before are unchanged


def test_a_letter_that_would_not_fit_says_where_the_original_is() -> None:
    record = _record(b"req-2", b"y" * 60_000, (("trace", b"t" * 500), ("none", None)))
    out = dead_letter_output(record, "too_large", "60000 bytes > max_request_bytes=4096", TOPIC, 1.0, limit=64_000)
    assert record_bytes(out.key, out.value, out.headers) <= 64_000
    assert out.key is None and out.headers == ()
    letter = DeadLetter.from_bytes(out.value)
    assert letter.value is None and letter.key is None and letter.headers == ()
    assert letter.omitted_bytes == 5 + 60_000 + len("trace") + 500 + len("none")
    assert letter.value_sha256 == hashlib.sha256(record.value).hexdigest()
    assert (letter.reason, letter.source_topic, letter.source_partition, letter.source_offset) == \
        ("too_large", record.topic, 3, 1234)
    assert letter.detail.startswith("60000 bytes > max_request_bytes=4096")
    assert record.where in letter.detail and "not carried" in letter.detail
    assert not list(validator("DeadLetter").iter_errors(json.loads(out.value)))


def test_the_default_limit_is_what_the_producers_send_and_a_letter_decodes_at_it() -> None:
    # The largest carried letter must stay readable: a letter at the producers' cap is within
    # DeadLetter.from_bytes's own cap.
    assert MAX_PRODUCE_BYTES <= MAX_DEAD_LETTER_BYTES
    value = b"z" * ((MAX_PRODUCE_BYTES - RECORD_OVERHEAD_BYTES - 2_000) * 3 // 4 - 1_000)
    out = dead_letter_output(_record(b"k", value, ()), "too_large", "d", TOPIC, 1.0)
    assert record_bytes(out.key, out.value, out.headers) <= MAX_PRODUCE_BYTES
    letter = DeadLetter.from_bytes(out.value)
    assert letter.value == value or letter.omitted_bytes  # whole if it fit, else a pointer: never refused
    # the decoders' own cap (8 MiB) is carried whole; beyond it, a pointer
    whole = dead_letter_output(_record(b"k", b"w" * MAX_RECORD_BYTES, ()), "too_large", "d", TOPIC, 1.0)
    assert DeadLetter.from_bytes(whole.value).value == b"w" * MAX_RECORD_BYTES
    big = dead_letter_output(_record(b"k", b"w" * (MAX_RECORD_BYTES + 100_000), ()), "too_large", "d", TOPIC, 1.0)
    assert DeadLetter.from_bytes(big.value).omitted_bytes == 1 + MAX_RECORD_BYTES + 100_000


@hsettings(max_examples=150, deadline=None)
@given(key=st.one_of(st.none(), st.binary(max_size=3_000)),
       value_size=st.integers(0, 200_000), value_none=st.booleans(),
       headers=st.lists(st.tuples(st.text(max_size=40), st.one_of(st.none(), st.binary(max_size=2_000))), max_size=6),
       detail=st.text(max_size=3_000), limit=st.integers(8_192, 300_000))
def test_property_a_letter_fits_its_limit_and_carries_the_original_when_it_can(key, value_size, value_none, headers,
                                                                                 detail, limit) -> None:
    value = None if value_none else bytes(range(256)) * (value_size // 256) + b"v" * (value_size % 256)
    record = _record(key, value, tuple(headers))
    out = dead_letter_output(record, "bad_input", detail, TOPIC, 2.0, limit=limit)
    assert record_bytes(out.key, out.value, out.headers) <= limit
    letter = DeadLetter.from_bytes(out.value)
    whole = DeadLetter("bad_input", detail, record.topic, 3, 1234, value, key, tuple(headers), 2.0).to_bytes()
    if record_bytes(key, whole, headers) <= limit:  # it fitted: it is carried, byte for byte
        assert (letter.key, letter.value, letter.headers, letter.omitted_bytes) == (key, value, tuple(headers), 0)
    else:
        assert letter.omitted_bytes >= 1 and letter.value is None and record.where in letter.detail


@pytest.mark.parametrize("omitted", [
    {"bytes": 0, "value_sha256": "0" * 64},
    {"bytes": 5, "value_sha256": "xyz"},
    {"bytes": 5},
    {"bytes": "5", "value_sha256": "0" * 64},
    [],
])
def test_a_malformed_omitted_field_is_refused(omitted) -> None:
    obj = json.loads(DeadLetter("too_large", "d", "t", 0, 1, None, None, (), 1.0, 7, "a" * 64).to_bytes())
    obj["omitted"] = omitted
    with pytest.raises(DecodeError) as info:
        DeadLetter.from_bytes(json.dumps(obj).encode())
    assert info.value.code == "bad_schema"


def test_an_omitted_letter_that_also_carries_bytes_is_refused() -> None:
    obj = json.loads(DeadLetter("too_large", "d", "t", 0, 1, None, None, (), 1.0, 7, "a" * 64).to_bytes())
    obj["value_b64"] = "eHh4"
    with pytest.raises(DecodeError, match="carries no key, value or headers"):
        DeadLetter.from_bytes(json.dumps(obj).encode())


def test_the_smallest_dead_letter_topic_a_consumer_starts_with_takes_the_largest_pointer_letter() -> None:
    # serve and the monitor refuse to start below MIN_DEAD_LETTER_TOPIC_BYTES: above it, even the
    # longest topic names and detail leave room for a letter that does not carry the original.
    from auditstream.errors import ConfigError
    from auditstream.kafka.limits import MIN_DEAD_LETTER_TOPIC_BYTES, check_dead_letter_limit

    long_topic = "t" * 249
    record = Record(long_topic, 2**31 - 1, 2**63 - 1, b"k" * 100_000, b"v" * 100_000,
                    tuple((f"h{i}" * 50, b"x" * 1000) for i in range(50)))
    out = dead_letter_output(record, "processing_failed", "\u00e9" * 10_000, "d" * 249, 1.0,
                             limit=MIN_DEAD_LETTER_TOPIC_BYTES)
    assert record_bytes(out.key, out.value, out.headers) <= MIN_DEAD_LETTER_TOPIC_BYTES
    assert DeadLetter.from_bytes(out.value).omitted_bytes > 0
    check_dead_letter_limit("acme.dead-letter", MIN_DEAD_LETTER_TOPIC_BYTES)
    with pytest.raises(ConfigError, match="acme.dead-letter max.message.bytes.*raise the topic's max.message.bytes"):
        check_dead_letter_limit("acme.dead-letter", MIN_DEAD_LETTER_TOPIC_BYTES - 1)
