"""Process-level fuzzing (issue 13, RELIABILITY #13 on running processes): a few thousand mutated
requests -- unusual Unicode in every string field (lone surrogates included), extreme and
non-finite numbers, missing, extra and wrongly typed fields, no Kafka key, ancient and far-future
timestamps -- go through a running ``auditstream serve`` and a running ``auditstream monitor``.
Neither may exit, and every record is answered or dead-lettered exactly once."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from auditstream import topics as T
from auditstream.kafka import make_producer
from auditstream.settings import Settings
from auditstream.wire import DeadLetter, InferenceRequest, Prediction
from store import open_store
from tests.conftest import TINY_MODEL
from tests.deploy.test_prometheus import stop_process
from tests.deploy.test_prometheus_live import _env
from tests.serving.kafka_readers import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
COUNT = 2000
ODD_TEXT = ["\ud800", "\udfff", "a\u0000b", "\u202e\u05d0\u05d1", "\u200b", "\U0001f4ec", "e\u0301", "\uffff",
            "x" * 5000, "", " ", "\\", '"', "\n", "NaN", "%s%n"]
ODD_NUMBERS = ["1e308", "-1e308", "NaN", "Infinity", "-Infinity", "0", "-1", "1e-320", "9" * 400, "1.5e12", "-5e9"]


def _valid(i: int, rng: np.random.Generator) -> dict:
    request = InferenceRequest(f"fz{i}", TINY_MODEL, rng.random((8, 8), dtype=np.float32), time.time())
    return json.loads(request.to_bytes())


def _mutate(obj: dict, i: int, rnd: random.Random) -> tuple[bytes, bytes | None, bool]:
    """(value bytes, key, still valid?) -- one mutation per record, by kind; ids stay unique."""
    kind = i % 12
    raw = None
    if kind == 0:  # unusual Unicode in the request id (valid JSON; lone surrogates too)
        obj["request_id"] = f"{rnd.choice(ODD_TEXT)}-{i}"
    elif kind == 1:
        obj["model"] = rnd.choice(ODD_TEXT)
    elif kind == 2:  # an extreme or non-finite timestamp, spelt as JSON text
        raw = json.dumps({**obj, "created_at_s": 0}).replace('"created_at_s": 0', f'"created_at_s": {rnd.choice(ODD_NUMBERS)}')
    elif kind == 3:
        del obj[rnd.choice(["request_id", "model", "created_at_s", "input", "v"])]
    elif kind == 4:
        obj[rnd.choice(ODD_TEXT[5:])] = rnd.choice([None, 1, [], {}, "x"])  # an extra field
    elif kind == 5:
        obj[rnd.choice(["request_id", "model", "created_at_s", "input", "v"])] = rnd.choice([None, 1, 1.5, [], {}, True, f"x{i}"])
    elif kind == 6:
        obj["input"]["tensor"]["shape"] = rnd.choice([[8], [64, 1], [8, 8, 1], [-1, 8], [2 ** 40, 2 ** 40], []])
    elif kind == 7:
        obj["input"]["tensor"]["dtype"] = rnd.choice(["float64", "int8", "object", "\ud800", ""])
    elif kind == 8:
        obj["episode_key"] = rnd.choice(ODD_TEXT)
    elif kind == 9:  # a valid request without a Kafka key
        return json.dumps(obj).encode(), None, True
    elif kind == 10:  # far past and far future, but finite
        obj["created_at_s"] = rnd.choice([1.0, -1e9, 4e9, 1e11])
    else:
        return json.dumps(obj).encode(), obj["request_id"].encode(), True
    value = (raw if raw is not None else json.dumps(obj)).encode("utf-8", "surrogatepass")
    key = obj["request_id"].encode("utf-8", "surrogatepass") if isinstance(obj.get("request_id"), str) else None
    return value, key, False


def _request_id(value: bytes) -> object:
    try:
        return json.loads(value).get("request_id")
    except (ValueError, AttributeError):
        return None


def test_mutated_requests_through_running_serve_and_monitor(stream_settings: Settings, tmp_path: Path) -> None:
    settings = stream_settings
    cli = [sys.executable, "-m", "auditstream.cli"]
    db = tmp_path / "audit.db"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("serve", "monitor")}
    serve = subprocess.Popen(cli + ["serve", "--model", TINY_MODEL], stdout=logs["serve"], stderr=subprocess.STDOUT,
                             env=_env(settings, log_level="WARNING"))
    monitor = subprocess.Popen(cli + ["monitor", "--group-id", f"monitor-{uuid.uuid4().hex[:8]}"],
                               stdout=logs["monitor"], stderr=subprocess.STDOUT,
                               env=_env(settings, log_level="WARNING", store_url=f"sqlite:///{db}"))
    rng, rnd = np.random.default_rng(0), random.Random(0)
    producer = make_producer(settings)
    sent: dict[tuple[int, int], bytes] = {}
    kinds: dict[tuple[int, int], int] = {}  # where each record landed -> its mutation kind
    try:
        deliveries = []
        for i in range(COUNT):
            value, key, _ = _mutate(_valid(i, rng), i, rnd)
            deliveries.append((i % 12, value, producer.send(settings.request_topic(TINY_MODEL), key, value)))
        producer.flush(60)
        sent = {(d.partition, d.offset): value for _, value, d in deliveries}
        kinds = {(d.partition, d.offset): kind for kind, _, d in deliveries}
        assert len(sent) == COUNT

        deadline, answered, dead = time.monotonic() + 240, [], []
        while time.monotonic() < deadline:
            for name, proc in (("serve", serve), ("monitor", monitor)):
                assert proc.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-3000:]}"
            answered = read_topic(settings, settings.topic(T.PREDICTIONS), timeout_s=10, idle_s=2)
            dead = [DeadLetter.from_bytes(r.value) for r in read_topic(settings, settings.topic(T.DEAD_LETTER),
                                                                          timeout_s=10, idle_s=2)]
            if len(answered) + len([d for d in dead if d.source_topic == settings.request_topic(TINY_MODEL)]) >= COUNT:
                break
        for name, proc in (("serve", serve), ("monitor", monitor)):
            assert proc.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-3000:]}"
        store_deadline = time.monotonic() + 120
        # the monitor stores one audit item per request routed to auditors, whatever its id
        routed = {Prediction.from_bytes(r.value).request_id for r in answered
                  if Prediction.from_bytes(r.value).route.value != "AUTO"}
        stored: set[str] = set()
        while time.monotonic() < store_deadline and stored != routed:
            assert monitor.poll() is None, f"monitor exited: {(tmp_path / 'monitor.log').read_text()[-3000:]}"
            time.sleep(2)
            with open_store(f"sqlite:///{db}", create=True) as store:
                stored = {item.request_id for item in store.items(model=TINY_MODEL, limit=10 * COUNT)}
        assert routed and stored == routed, f"stored {len(stored)} of {len(routed)} audit items"
    finally:
        producer.close()
        for proc in (serve, monitor):
            stop_process(proc, 60)
        for log in logs.values():
            log.close()

    # every record exactly once: a dead letter names its source offset and carries its bytes ...
    from_requests = [d for d in dead if d.source_topic == settings.request_topic(TINY_MODEL)]
    lettered = Counter((d.source_partition, d.source_offset) for d in from_requests)
    assert all(n == 1 for n in lettered.values()), "a record was dead-lettered twice"
    for d in from_requests:
        assert d.value == sent[(d.source_partition, d.source_offset)]  # the original bytes, untouched
    # ... and the rest were answered, once each
    predictions = [Prediction.from_bytes(r.value) for r in answered]
    answered_ids = {p.request_id for p in predictions}
    lost = [kinds[where] for where, value in sent.items()
            if where not in lettered and _request_id(value) not in answered_ids]
    assert not lost, f"{len(lost)} records neither answered nor dead-lettered; mutation kinds {Counter(lost)}"
    assert len(predictions) + len(from_requests) == COUNT
    ids = Counter(p.request_id for p in predictions)
    assert all(n == 1 for n in ids.values()), "a request was answered twice"
    reasons = Counter(d.reason for d in from_requests)
    assert len(reasons) >= 3, reasons  # many kinds of poison, each with its reason code

