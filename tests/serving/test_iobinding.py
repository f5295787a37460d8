"""serving.iobinding on the CPU: bound runs (padded to their bucket) give exactly what a plain
``session.run`` gives, every bucket is warmed up, and the timing keeps copies apart from ORT."""

from __future__ import annotations

import numpy as np
from tests.conftest import TinyRegistry

from serving.iobinding import BoundRunner
from serving.providers import batch_buckets
from serving.runtime import load_session


def test_bound_runs_match_plain_runs_for_every_size(tiny_registry: TinyRegistry) -> None:
    session = load_session(tiny_registry.model, providers=["CPUExecutionProvider"])
    card = tiny_registry.model.card
    bound = BoundRunner(session.session, "image", card.inputs[0].shape, np.float32, ["probs"],
                        {"probs": card.outputs[0].shape}, batch_buckets(16), device="cpu")
    rng = np.random.default_rng(0)
    for n in (1, 3, 8, 13, 16, 20):  # 20: past the largest bucket, run unpadded
        batch = rng.standard_normal((n, 8, 8)).astype(np.float32)
        expected = session.run(batch)["probs"]
        got = bound.run(batch)["probs"]
        assert got.shape == (n, expected.shape[1])
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
        t = bound.last_timing
        assert t is not None and t.ort_s > 0 and t.copies_s >= 0
    assert set(bound._buckets) == {(1, 8, 8), (4, 8, 8), (8, 8, 8), (16, 8, 8), (20, 8, 8)}


def test_warm_up_builds_every_bucket(tiny_registry: TinyRegistry) -> None:
    session = load_session(tiny_registry.model, providers=["CPUExecutionProvider"])
    card = tiny_registry.model.card
    bound = BoundRunner(session.session, "image", card.inputs[0].shape, np.float32, ["probs"],
                        {"probs": [None, None]}, (1, 2, 4), device="cpu")  # output shape unknown: ORT allocates
    assert bound.warm_up() > 0
    assert set(bound._buckets) == {(1, 8, 8), (2, 8, 8), (4, 8, 8)}
    np.testing.assert_allclose(bound.run(np.ones((3, 8, 8), np.float32))["probs"],
                               session.run(np.ones((3, 8, 8), np.float32))["probs"], rtol=1e-6)


def test_metrics_keep_ort_time_apart_from_copies(tiny_registry: TinyRegistry) -> None:
    from prometheus_client import CollectorRegistry

    from serving.app import TimedRunner
    from serving.metrics import ServeMetrics

    session = load_session(tiny_registry.model, providers=["CPUExecutionProvider"])
    card = tiny_registry.model.card
    session.bound = BoundRunner(session.session, "image", card.inputs[0].shape, np.float32, ["probs"],
                                {"probs": card.outputs[0].shape}, (4,), device="cpu")
    registry = CollectorRegistry()
    children = ServeMetrics("tiny", registry, version="0").children("0")
    runner = TimedRunner(session, children["inference_seconds"], children["device_copy_seconds"])
    runner.run(np.ones((3, 8, 8), np.float32))
    labels = {"model": "tiny", "version": "0"}
    timing = session.last_timing
    assert registry.get_sample_value("auditstream_serve_inference_seconds_sum", labels) == timing.ort_s
    assert registry.get_sample_value("auditstream_serve_device_copy_seconds_sum", labels) == timing.copies_s
    assert registry.get_sample_value("auditstream_serve_device_copy_seconds_count", labels) == 1
