"""``auditstream bench faults`` at test size, through the CLI, on real ``auditstream serve``
processes and a private embedded broker:

- ``kill9``: three consumers, one killed and replaced every few seconds, lose nothing and
  duplicate nothing differently;
- ``partition``: a consumer cut off from the broker (stack/fault_proxy.py) for twice the session
  timeout: its partitions move to the others, its stale commit is refused without a crash, and
  nothing is lost;
- ``output_outage``: every serving producer cut off: no committed offset moves while nothing can
  be acknowledged, and nothing is lost once the output side is back;
- ``fresh_group``: a new 3-consumer group is fully assigned within 30 s;
- ``slow_0.8x`` / ``slow_1.5x``: in tests/stack/test_faults_slow_model.py (they run alone);
- ``monitor_kill9``: the monitor killed during audit ingest, each kill aimed at the outbox's
  crash window (records written, not yet marked): every item stored once, every verdict and
  decision published once.

``--bootstrap`` runs a scenario on a broker the bench did not start and deletes its topics after;
the scenarios that kill or cut the broker refuse it with a message.
``broker_restart`` and ``rolling_restart`` are documented with what they found on the embedded
broker (docs/serving.md, "Fault suite")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COMMON = {"sent", "answered", "lost", "unanswered", "duplicates", "non_identical_duplicates", "crashes", "recovery_s"}


def bench_faults(tmp_path: Path, scenario: str, *options: str, client: str = "") -> dict:
    env = dict(os.environ, AUDITSTREAM_LOG_LEVEL="WARNING", AUDITSTREAM_STATE_DIR=str(tmp_path))
    if client:
        env["AUDITSTREAM_KAFKA_CLIENT"] = client
    env.pop("AUDITSTREAM_BOOTSTRAP_SERVERS", None)
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "bench", "faults", "--json", "--scenario", scenario,
                           "--log-dir", str(tmp_path / "logs"), *options],
                          env=env, capture_output=True, text=True, timeout=600)
    result = json.loads(done.stdout.strip().splitlines()[-1])[scenario]
    assert done.returncode == 0, (result, done.stderr[-3000:])
    assert COMMON <= set(result)
    return result


def assert_nothing_lost(result: dict, requests: int) -> None:
    assert result["sent"] >= requests and result["lost"] == result["unanswered"] == 0
    assert result["answered"] == result["sent"]
    assert result["non_identical_duplicates"] == 0 and result["crashes"] == 0


def test_kill9_scenario_loses_nothing(tmp_path: Path) -> None:
    result = bench_faults(tmp_path, "kill9", "--requests", "400", "--rate-per-s", "100", "--kill-every-s", "2")
    assert set(result) == COMMON
    assert_nothing_lost(result, 400)
    assert result["recovery_s"] > 0


def test_partitioned_consumer_hands_over_and_loses_nothing(tmp_path: Path) -> None:
    result = bench_faults(tmp_path, "partition", "--requests", "1200", "--rate-per-s", "100")
    assert_nothing_lost(result, 1200)
    # twice the default session timeout, longer (at most 4x) only while the partitions have not moved
    assert 20.0 <= result["cut_s"] <= 41.0
    assert result["moved_after_s"] is not None and result["moved_after_s"] <= result["cut_s"]
    assert result["caught_up_s"] is not None and result["caught_up_s"] < 60


def test_no_commit_passes_unacknowledged_outputs(tmp_path: Path) -> None:
    result = bench_faults(tmp_path, "output_outage", "--requests", "900", "--rate-per-s", "60", "--outage-s", "10")
    assert_nothing_lost(result, 900)
    assert result["commits_during_outage"] == 0
    assert result["caught_up_s"] is not None


def test_a_fresh_group_is_assigned_within_30_s(tmp_path: Path) -> None:
    result = bench_faults(tmp_path, "fresh_group", "--runs", "2")
    assert result["runs"] == 2 and len(result["assigned_s"]) == 2
    # Every group fully assigned (the bench gives up after 120 s). How fast is the bench's number
    # (20 of 20 within 30 s, docs/serving.md): here the time includes starting three Python
    # processes on a CI machine that other jobs share, so it is not asserted.
    assert all(t is not None for t in result["assigned_s"]), result["assigned_s"]
    assert 0 <= result["within_30_s"] <= 2


def test_the_monitor_killed_during_ingest_stores_and_publishes_everything_once(tmp_path: Path) -> None:
    # 20 s of audit items: each kill waits for a publishing round, and a successor leads only
    # after the killed leader's 6 s lease, so a kill every 6 s makes at least two kills.
    result = bench_faults(tmp_path, "monitor_kill9", "--requests", "400", "--rate-per-s", "20", "--kill-every-s", "6")
    assert result["kills"] >= 2 and result["crashes"] == 0
    assert result["answered"] == result["sent"] == 400 and result["lost"] == result["duplicates"] == 0
    assert result["verdicts"] == result["verdicts_published"] == 400 and result["verdict_duplicates"] == 0
    assert result["decisions"] == result["decisions_published"] == 400 and result["decision_duplicates"] == 0
    assert result["verdicts_unpublished"] == result["decisions_unpublished"] == 0
    assert result["non_identical_duplicates"] == 0
    # Where the kills landed is timing (reported, not asserted); the counts must be consistent.
    assert result["kills_in_window"] <= result["kills_round_open"] <= result["kills"]
    assert (result["rows_in_window"] > 0) == (result["kills_in_window"] > 0)


def test_an_external_cluster_runs_a_scenario_and_is_left_as_it_was(broker, tmp_path: Path) -> None:
    """``--bootstrap``: the bench's consumers on a broker it did not start (here one started
    apart, as a real cluster would be), on topics of its own that it deletes afterwards."""
    from kafka import KafkaAdminClient

    from auditstream.kafka import BROKER_STATE_FILE

    result = bench_faults(tmp_path, "kill9", "--requests", "300", "--rate-per-s", "100", "--kill-every-s", "2",
                          "--bootstrap", broker.bootstrap_servers)
    assert_nothing_lost(result, 300)
    assert not list(tmp_path.rglob(BROKER_STATE_FILE))  # no broker of its own
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        assert not [t for t in admin.list_topics() if t.startswith("faults")]
    finally:
        admin.close()


def test_a_scenario_that_kills_or_cuts_the_broker_refuses_an_external_one(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "bench", "faults", "--scenario", "partition",
                           "--bootstrap", "127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "embedded broker only" in done.stderr and "Traceback" not in done.stderr


def test_a_scenario_the_broker_cannot_finish_fails_alone_and_the_suite_goes_on(tmp_path: Path, monkeypatch) -> None:
    """A broker that cannot serve a scenario to its end (BrokerUnavailable) fails that scenario
    with what it knows, and the next scenario still runs on a fresh broker (the whole suite
    used to stop at the first such scenario)."""
    import io

    from auditstream.errors import BrokerUnavailable
    from auditstream.settings import Settings
    from stack import faults_bench as fb

    def cannot_finish(run, args, say):
        raise BrokerUnavailable(run.settings.bootstrap_servers, "could not read the answers to their end")

    def fine(run, args, say):
        return {"lost": 0, "unanswered": 0, "non_identical_duplicates": 0, "crashes": 0, "broker": run.broker.port}

    monkeypatch.setattr(fb, "SCENARIOS", ("first", "second"))
    monkeypatch.setattr(fb, "NOT_IN_ALL", ())
    monkeypatch.setattr(fb, "RUNNERS", {"first": cannot_finish, "second": fine})
    settings = Settings(state_dir=tmp_path / "state")
    results = fb.run_faults(settings, fb.FaultsArgs(scenario="all", log_dir=str(tmp_path / "logs")), io.StringIO())
    assert "could not read the answers to their end" in results["first"]["error"]
    assert results["first"]["acked"] == 0 and not fb.passed(results["first"])
    assert fb.passed(results["second"]) and results["second"]["broker"] > 0
