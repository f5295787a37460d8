"""``auditstream rollback``: an earlier version live again at once (a person's decision, no gate),
any canary ended, the running consumers told on the control topic, the move recorded with its
reason. On the embedded broker; the announcement failure path with the broker made unreachable."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_card, tiny_classifier_onnx

from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from monitor.promotion import PROMOTION_FILE

REPO = Path(__file__).resolve().parents[2]


def two_versions(tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "models")
    for _ in range(2):
        registry.publish(dataclasses.replace(tiny_card(), name="zip"), tiny_classifier_onnx())
    registry.set_live("zip", "2")
    return registry


def cli(registry: ModelRegistry, settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "AUDITSTREAM_MODELS_DIR": str(registry.root),
           "AUDITSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "AUDITSTREAM_TOPIC_PREFIX": settings.topic_prefix,
           "AUDITSTREAM_STATE_DIR": str(settings.state_dir)}
    return subprocess.run([sys.executable, "-m", "auditstream.cli", "rollback", "--model", "zip", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def latest_rollout(settings: Settings):
    """What the control topic tells running consumers about model zip now."""
    from auditstream.control import ControlView

    view = ControlView(settings).start()
    try:
        assert view.wait_caught_up(60)
        return view.rollouts()["zip"]
    finally:
        view.stop()


@pytest.mark.kafka
def test_rollback_moves_live_tells_the_consumers_and_records_why(tmp_path: Path, broker: Settings) -> None:
    registry = two_versions(tmp_path)
    settings = dataclasses.replace(broker, topic_prefix=f"rb{os.getpid()}", state_dir=tmp_path / "state")
    done = cli(registry, settings, "--to", "1", "--reason", "v2 over budget")
    assert done.returncode == 0, done.stderr
    assert "zip: v2 -> v1 live, consumers told" in done.stderr
    assert registry.live_version("zip") == "1"
    [record] = json.loads((registry.root / "zip" / "1" / PROMOTION_FILE).read_text())["decisions"]
    assert record["kind"] == "rollback" and record["reason"] == "v2 over budget" and record["announced"] is True
    assert (record["live_before"], record["live_after"]) == ("2", "1")
    rollout = latest_rollout(settings)
    assert (rollout.live_version, rollout.canary_version, rollout.canary_share) == ("1", None, 0.0)
    assert rollout.reason == "rollback: v2 over budget"

    # during a canary LIVE still names the old version: rolling back to it ends the canary
    from auditstream.control import Rollout, announce_rollout

    announce_rollout(settings, Rollout("zip", "1", "2", 0.1, reason="canary", updated_at_s=time.time()))
    again = cli(registry, settings, "--to", "1", "--reason", "v2's canary goes wrong")
    assert again.returncode == 0 and "v1 was live already, announced again" in again.stderr, again.stderr
    rollout = latest_rollout(settings)
    assert (rollout.live_version, rollout.canary_version, rollout.canary_share) == ("1", None, 0.0)


@pytest.mark.parametrize("args, message", [
    (["--to", "7", "--reason", "x"], "version 7 not found"),        # no such version
    (["--to", "1", "--reason", "  "], "--reason"),                   # no reason for the record
])
def test_rollback_refuses_before_live_moves(tmp_path: Path, args: list[str], message: str) -> None:
    registry = two_versions(tmp_path)
    done = cli(registry, Settings(bootstrap_servers="127.0.0.1:1", state_dir=tmp_path / "state"), *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert registry.live_version("zip") == "2"


def test_a_damaged_version_is_refused_before_live_moves(tmp_path: Path) -> None:
    registry = two_versions(tmp_path)
    onnx = registry.root / "zip" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10])
    done = cli(registry, Settings(bootstrap_servers="127.0.0.1:1", state_dir=tmp_path / "state"),
               "--to", "1", "--reason", "v2 over budget")
    assert done.returncode == 2 and "refusing model" in done.stderr and "Traceback" not in done.stderr
    assert registry.live_version("zip") == "2"


def test_a_failed_announcement_is_recorded_and_the_next_rollback_finishes_it(tmp_path: Path, monkeypatch) -> None:
    from auditstream.errors import BrokerUnavailable
    from monitor import promotion

    registry = two_versions(tmp_path)
    settings = Settings(models_dir=registry.root, state_dir=tmp_path / "state")
    announced = []

    def broker_down(settings, rollout):
        raise BrokerUnavailable("127.0.0.1:1", "nothing answered")

    monkeypatch.setattr(promotion, "announce_rollout", broker_down)
    with pytest.raises(promotion.PromotionIncomplete, match="LIVE of zip names v1.*auditstream rollback again"):
        promotion.rollback(settings, "zip", "1", "v2 over budget")
    assert registry.live_version("zip") == "1"
    monkeypatch.setattr(promotion, "announce_rollout", lambda settings, rollout: announced.append(rollout))
    record = promotion.rollback(settings, "zip", "1", "v2 over budget")  # LIVE names v1, unannounced: finish
    assert record["announced"] is True and [r.live_version for r in announced] == ["1"]
    history = json.loads((registry.root / "zip" / "1" / PROMOTION_FILE).read_text())["decisions"]
    assert [r["announced"] for r in history] == [False, True]


def test_a_rollback_with_no_live_version_before_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    """It printed "zip: vNone -> v1 live"."""
    from auditstream.cli import main
    from monitor import promotion

    registry = two_versions(tmp_path)
    (registry.root / "zip" / "LIVE").unlink()
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(promotion, "announce_rollout", lambda settings, rollout: None)
    assert main(["rollback", "--model", "zip", "--to", "1", "--reason", "test"]) == 0
    err = capsys.readouterr().err
    assert "zip: v1 live (no live version before), consumers told" in err and "None" not in err, err
    assert registry.live_version("zip") == "1"
