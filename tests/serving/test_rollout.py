"""The version set of a consumer without a broker: real tiny sessions, a stand-in for the control
view (only its ``rollout(model)`` answer matters). A stale announcement does not move a freshly
started consumer; a new one switches once the version is loaded in the background; a failed load
keeps the old version and is retried only on the next announcement; the canary split is the
hash of the record key; threshold overrides stay keyed by version across a switch."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tests.conftest import tiny_card, tiny_classifier_onnx

from auditstream.control import ControlState, Rollout
from auditstream.kafka import Record
from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from qc.triage import hash_uniform
from serving.app import TimedRunner
from serving.consumer import ServeConfig
from serving.inference import FailureStreak
from serving.metrics import ServeMetrics
from serving.rollout import ServedVersion, VersionLoader, VersionSet
from serving.runtime import load_session


class View:
    """What VersionSet reads of a ControlView."""

    def __init__(self) -> None:
        self.current: Rollout | None = None

    def rollout(self, model: str) -> Rollout | None:
        return self.current


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "models")
    for seed in (0, 1):
        registry.publish(tiny_card(), tiny_classifier_onnx(seed=seed))
    broken = registry.publish(tiny_card(), tiny_classifier_onnx(seed=2))
    broken.onnx_path.write_bytes(b"not the file the card's checksum names")
    return registry


def served(registry: ModelRegistry, version: str) -> ServedVersion:
    model = registry.load("tiny", version)
    session = load_session(model, warmup_batch=1)
    children = ServeMetrics("tiny", CollectorRegistry()).children(version)
    return ServedVersion(session, ServeConfig.from_settings(Settings(), model.card), TimedRunner(session,
                         children["inference_seconds"]), children, FailureStreak(model.card))


def versions_of(registry: ModelRegistry, view: View) -> tuple[VersionSet, list[str]]:
    failures: list[str] = []
    loader = VersionLoader(lambda v: served(registry, v), lambda v, e: failures.append(v))
    return VersionSet(served(registry, "1"), loader, view, "tiny"), failures


def follow_until(versions: VersionSet, done, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the version set did not get there"
        versions.follow()  # what the loop does before each batch
        time.sleep(0.05)


def follow_a_while(versions: VersionSet) -> None:
    for _ in range(10):
        versions.follow()
        time.sleep(0.05)


def test_a_stale_announcement_is_history_a_new_one_switches(registry):
    view = View()
    view.current = Rollout("tiny", "2", updated_at_s=time.time() - 60)  # made before this consumer started
    versions, _ = versions_of(registry, view)
    try:
        follow_a_while(versions)
        assert versions.live.version == "1"
        view.current = Rollout("tiny", "2", updated_at_s=time.time() + 1)
        follow_until(versions, lambda: versions.live.version == "2")
        assert versions.live.config.card.version == "2"
    finally:
        versions.close()


def test_an_announcement_dated_far_ahead_moves_no_live_version(registry, caplog):
    """Review 2026-12-04: a record dated 1e15 (a writer with a wrong clock, or hand-made) counted
    as newer than this consumer's start, so a consumer started from LIVE switched away from it.
    Beyond MAX_ROLLOUT_CLOCK_SKEW_S ahead it moves nothing (one warning); a fresh one still does."""
    from serving.rollout import MAX_ROLLOUT_CLOCK_SKEW_S

    view = View()
    view.current = Rollout("tiny", "2", updated_at_s=time.time() + MAX_ROLLOUT_CLOCK_SKEW_S + 600)
    versions, _ = versions_of(registry, view)
    try:
        with caplog.at_level("WARNING", logger="serving.rollout"):
            follow_a_while(versions)
        assert versions.live.version == "1"
        assert caplog.text.count("ahead of this host's clock") == 1
        view.current = Rollout("tiny", "2", updated_at_s=time.time() + 1)
        follow_until(versions, lambda: versions.live.version == "2")
    finally:
        versions.close()


def test_a_failed_load_keeps_the_old_version_until_the_next_announcement(registry):
    view = View()
    versions, failures = versions_of(registry, view)
    try:
        view.current = Rollout("tiny", "3", updated_at_s=time.time() + 1)
        follow_until(versions, lambda: failures == ["3"])
        follow_a_while(versions)  # not retried while the announcement stays the same
        assert failures == ["3"] and versions.live.version == "1"
        view.current = Rollout("tiny", "3", reason="again", updated_at_s=time.time() + 2)
        follow_until(versions, lambda: failures == ["3", "3"])
        assert versions.live.version == "1"
    finally:
        versions.close()


def test_the_canary_answers_its_hashed_share_and_becomes_live(registry):
    view = View()
    versions, _ = versions_of(registry, view)
    try:
        view.current = Rollout("tiny", "1", canary_version="2", canary_share=0.25, updated_at_s=time.time() + 1)
        follow_until(versions, lambda: versions.canary is not None)
        records = [Record("t", 0, i, f"r{i}".encode(), b"{}") for i in range(400)]
        by_version = {v.version: idx for v, idx in versions.split(records)}
        assert by_version["2"] == [i for i in range(400) if hash_uniform(f"r{i}", "canary") < 0.25]
        assert sorted(by_version["1"] + by_version["2"]) == list(range(400))
        view.current = Rollout("tiny", "2", updated_at_s=time.time() + 2)  # promoted: the canary is live now
        follow_until(versions, lambda: versions.live.version == "2")
        assert versions.canary is None and versions.split(records) == [(versions.live, list(range(400)))]
    finally:
        versions.close()


def test_threshold_overrides_stay_keyed_by_version_across_a_switch(registry):
    view = View()
    versions, _ = versions_of(registry, view)
    control = ControlState("tiny", threshold_override={"1": 0.9})
    try:
        assert versions.live.config.card.triage.threshold == 0.5
        before = ServeConfig(**{**versions.live.config.__dict__, "control": control})
        assert before.triage_spec.threshold == 0.9  # v1 was tightened
        view.current = Rollout("tiny", "2", updated_at_s=time.time() + 1)
        follow_until(versions, lambda: versions.live.version == "2")
        after = ServeConfig(**{**versions.live.config.__dict__, "control": control})
        assert after.triage_spec.threshold == 0.5  # v2 is judged on its own card
    finally:
        versions.close()


def test_a_policy_switches_only_to_a_version_of_the_same_frame_stack(tmp_path: Path):
    import numpy as np
    from tests.serving.tiny_policy import cartpole_weights, linear_policy_onnx, policy_card

    from auditstream.errors import ModelRefused
    from serving.rollout import check_switchable

    registry = ModelRegistry(tmp_path / "models")
    weights = cartpole_weights()
    for stack in (1, 1, 2):
        card = policy_card("cart", 4 * stack, frame_stack=stack)
        registry.publish(card, linear_policy_onnx(np.tile(weights, (stack, 1))))
    current = registry.card("cart", "1")
    check_switchable(current, registry.load("cart", "2"))  # same spec: switches in place
    with pytest.raises(ModelRefused, match="restart the consumer"):
        check_switchable(current, registry.load("cart", "3"))
    with pytest.raises(ModelRefused, match="cannot replace"):
        check_switchable(current, _tiny(tmp_path))  # a classifier of the same name


def _tiny(tmp_path: Path):
    registry = ModelRegistry(tmp_path / "other")
    registry.publish(tiny_card(name="cart"), tiny_classifier_onnx())
    return registry.load("cart", "1")


def _fails_at_run_time(classes: int) -> bytes:
    """A graph the file checks accept (the card's names, types and ranks) that ONNX Runtime cannot
    run: 64 pixels an image do not reshape to rows of 7."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((7, classes), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "rows"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["probs"])],
        "fails", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, classes])],
        [numpy_helper.from_array(np.array([-1, 7], np.int64), "rows"), numpy_helper.from_array(weights, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_version_that_passes_the_checks_but_fails_its_warm_up_keeps_the_live_one_serving(registry):
    """Hot reload to a version whose warm-up fails in ONNX Runtime: one ModelRefused line naming it,
    the live version keeps answering, and a later good version still switches."""
    from auditstream.errors import ModelRefused

    bad = registry.publish(tiny_card(), _fails_at_run_time(len(tiny_card().labels)))  # v4
    registry.load("tiny", bad.card.version)  # the file checks pass
    good = registry.publish(tiny_card(), tiny_classifier_onnx(seed=5))  # v5
    errors: list[BaseException] = []
    loader = VersionLoader(lambda v: served(registry, v), lambda v, e: errors.append(e))
    view = View()
    versions = VersionSet(served(registry, "1"), loader, view, "tiny")
    try:
        view.current = Rollout("tiny", bad.card.version, updated_at_s=time.time() + 1)
        follow_until(versions, lambda: len(errors) == 1)
        follow_a_while(versions)
        assert versions.live.version == "1"
        (error,) = errors
        assert isinstance(error, ModelRefused) and "\n" not in str(error)
        assert f"tiny v{bad.card.version}: the warm-up run" in str(error) and "Reshape" in str(error)
        batch = np.zeros((2, 8, 8), np.float32)
        assert versions.live.runner.run(batch)["probs"].shape == (2, len(tiny_card().labels))  # still answers
        view.current = Rollout("tiny", good.card.version, updated_at_s=time.time() + 2)
        follow_until(versions, lambda: versions.live.version == good.card.version)
    finally:
        versions.close()


def closing_versions_of(registry: ModelRegistry, view: View) -> tuple[VersionSet, VersionLoader, list[str]]:
    """A version set whose loaded versions record their close() in the returned list."""
    closed: list[str] = []

    def load(version: str) -> ServedVersion:
        version_served = served(registry, version)
        close = version_served.close
        version_served.close = lambda: (closed.append(version), close())  # type: ignore[method-assign]
        return version_served

    loader = VersionLoader(load, lambda v, e: None)
    return VersionSet(served(registry, "1"), loader, view, "tiny"), loader, closed


def wait_for(done, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "never got there"
        time.sleep(0.05)


def test_a_canary_called_off_before_a_batch_took_it_is_closed_by_the_next_batch(registry):
    """Review 2026-12-05: the watcher loads an announced canary at once; called off
    (``--canary-share 0``) before a batch took it, its session stayed open until shutdown."""
    view = View()
    versions, loader, closed = closing_versions_of(registry, view)
    try:
        view.current = Rollout("tiny", "1", canary_version="2", canary_share=0.25, updated_at_s=time.time() + 1)
        loader.want("2")  # what the watcher does as soon as the view has the announcement
        wait_for(lambda: "2" in loader._ready)
        view.current = Rollout("tiny", "1", canary_share=0.0, updated_at_s=time.time() + 2)  # called off
        versions.follow()
        assert closed == ["2"] and not loader._ready
        assert versions.canary is None and versions.live.version == "1"
    finally:
        versions.close()
    assert closed == ["2"]  # closed once


def test_the_watcher_closes_a_called_off_canary_without_any_batch(registry):
    view = View()
    versions, loader, closed = closing_versions_of(registry, view)
    versions.start(interval_s=0.05)
    try:
        view.current = Rollout("tiny", "1", canary_version="2", canary_share=0.25, updated_at_s=time.time() + 1)
        wait_for(lambda: "2" in loader._ready)
        view.current = Rollout("tiny", "1", canary_share=0.0, updated_at_s=time.time() + 2)  # called off
        wait_for(lambda: closed == ["2"])  # no batch needed to let it go
        assert not loader._ready and versions.canary is None
    finally:
        versions.close()


def test_a_tombstone_of_the_rollout_record_ends_the_canary(registry):
    """Review 2026-12-05: deleting ``rollout:<model>`` (the monitor then stops counting the canary)
    left a running canary on its share; no rollout record means the live version alone."""
    view = View()
    versions, _, closed = closing_versions_of(registry, view)
    records = [Record("t", 0, i, f"r{i}".encode(), b"{}") for i in range(100)]
    try:
        view.current = Rollout("tiny", "1", canary_version="2", canary_share=0.25, updated_at_s=time.time() + 1)
        follow_until(versions, lambda: versions.canary is not None)
        view.current = None  # the view applied a tombstone of rollout:tiny
        versions.follow()
        assert versions.canary is None and versions.canary_share == 0.0 and closed == ["2"]
        assert versions.live.version == "1" and versions.split(records) == [(versions.live, list(range(100)))]
        view.current = Rollout("tiny", "1", canary_version="2", canary_share=0.25, updated_at_s=time.time() + 2)
        follow_until(versions, lambda: versions.canary is not None)  # a new announcement starts it again
    finally:
        versions.close()
