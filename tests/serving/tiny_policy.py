"""Tiny ONNX policies for the RL stream tests, built with ``onnx.helper`` (no torch).

``linear_policy_onnx(weights)``: ``obs`` float32 [B, D] → MatMul W [D, A] → Softmax →
``action_probs`` [B, A]; ``value`` = obs @ v → [B]. :func:`cartpole_weights` makes the classic
"push toward where the pole is falling" controller (sign of θ + 0.5 θ̇), which keeps CartPole up
for 500 steps when acted on greedily; ``scale`` sets how sure it is (low scale: a close call
routes to a human).
"""

from __future__ import annotations

import numpy as np

from auditstream.registry import ModelCard, ModelRegistry, RegisteredModel, TensorSpec, TriageSpec


def linear_policy_onnx(weights: np.ndarray, value_weights: np.ndarray | None = None) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    weights = np.asarray(weights, dtype=np.float32)
    d, a = weights.shape
    v = np.asarray(value_weights if value_weights is not None else np.ones((d, 1)), dtype=np.float32).reshape(d, 1)
    x = helper.make_tensor_value_info("obs", TensorProto.FLOAT, [None, d])
    probs = helper.make_tensor_value_info("action_probs", TensorProto.FLOAT, [None, a])
    value = helper.make_tensor_value_info("value", TensorProto.FLOAT, [None])
    nodes = [
        helper.make_node("MatMul", ["obs", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["action_probs"], axis=-1),
        helper.make_node("MatMul", ["obs", "V"], ["v2"]),
        helper.make_node("Squeeze", ["v2", "axis1"], ["value"]),
    ]
    init = [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(v, "V"),
            numpy_helper.from_array(np.asarray([1], dtype=np.int64), "axis1")]
    graph = helper.make_graph(nodes, "tiny-policy", [x], [probs, value], initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="auditstream-tests")
    model.ir_version = 8
    return model.SerializeToString()


def cartpole_weights(scale: float = 10.0) -> np.ndarray:
    w = np.asarray([0.0, 0.0, 1.0, 0.5], dtype=np.float32) * scale
    return np.stack([-w, w], axis=1)  # logits: push left ~ -w·obs, push right ~ +w·obs


def policy_card(name: str, obs_width: int, n_actions: int = 2, threshold: float = 0.6, safe_action: int = 0,
                frame_stack: int = 1, action_selection: str = "sample", confidence_kind: str = "max_prob") -> ModelCard:
    return ModelCard(
        name=name, version="0", task="policy",
        inputs=[TensorSpec("obs", "float32", [None, obs_width])],
        outputs=[TensorSpec("action_probs", "float32", [None, n_actions]), TensorSpec("value", "float32", [None])],
        triage=TriageSpec(threshold=threshold, confidence_kind=confidence_kind, method="test", safe_action=safe_action),
        preprocessing={"frame_stack": frame_stack}, labels=[str(a) for a in range(n_actions)],
        extra={"action_selection": action_selection, "env_id": "CartPole-v1"},
    )


def publish_policy(registry: ModelRegistry, name: str, weights: np.ndarray, **card_args) -> RegisteredModel:
    card = policy_card(name, weights.shape[0], weights.shape[1], **card_args)
    return registry.publish(card, linear_policy_onnx(weights))
