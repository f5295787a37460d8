"""Exported policies: ONNX graph + model card (task ``policy``), and a numpy view of a policy.

Every policy trainer here (PPO, behaviour cloning, CQL) ends the same way: a torch module whose
``forward(obs)`` returns ``(action_probs [B, A], value [B])`` is exported with
:func:`export_policy` (parity-checked against torch on real observations) and described by
:func:`policy_card`, then published to the registry. Serving computes action = argmax (or a
sample, as the card's ``extra.action_selection`` says) of ``action_probs`` and confidence =
max(action_probs).

The triage threshold is chosen from data, not fixed: it is the ``defer_rate`` quantile of the
confidence over the states the policy itself visits in evaluation, so about that share of its
decisions goes to a human (the human budget), and it is the least confident ones. Without
labelled "wrong decisions" there is no error rate to certify, so the card says
``method="visited-state-quantile"`` rather than a certified risk.

``safe_action`` is what serving does when a deferred decision times out. Where an environment
has a genuinely safe action it is listed in :data:`SAFE_ACTIONS` (LunarLander: 0 = fire no
engine, which costs nothing and never accelerates the lander). Where none exists (CartPole: both
pushes can topple the pole) we take the policy's most frequent greedy action on visited states,
the fixed action that agrees with the policy most often, and the card says so in
``extra["safe_action_reason"]``.

:class:`NumpyPolicy` adapts any policy (torch module, ONNX bytes, plain function) to the one
interface offline evaluation needs: ``probs(observations) -> [N, A]``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from auditstream.registry import ModelCard, TensorSpec, TriageSpec

SAFE_ACTIONS: dict[str, tuple[int, str]] = {
    "LunarLander-v3": (0, "action 0 fires no engine: no thrust, no fuel cost, never speeds up a descent"),
}
ACTION_LABELS: dict[str, list[str]] = {
    "CartPole-v1": ["push_left", "push_right"],
    "LunarLander-v3": ["noop", "fire_left", "fire_main", "fire_right"],
}
REFERENCE_SAMPLE = 1000  # confidences kept in the card for drift tests


def export_policy(module: Any, observations: np.ndarray, atol: float = 1e-4) -> tuple[bytes, float]:
    """ONNX bytes of ``module`` (obs → action_probs, value) and the parity error on
    ``observations`` (at most 2048): max of |ORT - torch| over the probabilities and over the
    value divided by max(1, max |value|), since values are in return units (LunarLander: ~100)
    where float32 rounding alone exceeds an absolute 1e-4. Raises ExportParityError beyond ``atol``."""
    import torch

    from auditstream.errors import ExportParityError
    from training.export import check_parity, export_onnx, run_onnx

    observations = np.asarray(observations, dtype=np.float32)
    if observations.ndim != 2 or len(observations) == 0:
        raise ValueError(f"observations must be a non-empty [N, obs_dim] array, got shape {observations.shape}")
    module = module.cpu().eval()
    onnx_bytes = export_onnx(module, torch.as_tensor(observations[:1]), "obs", ["action_probs", "value"])
    rng = np.random.default_rng(0)
    sample = observations[rng.choice(len(observations), min(2048, len(observations)), replace=False)]
    with torch.no_grad():
        probs, values = (t.numpy().astype(np.float64) for t in module(torch.as_tensor(sample)))
    for name, out in (("action_probs", probs), ("value", values)):
        if not np.isfinite(out).all():  # a NaN/inf value would make the tolerance below NaN/inf
            raise ExportParityError(float("nan"), atol, len(sample), f"torch's {name} holds "
                                    f"{int((~np.isfinite(out)).sum())} NaN or infinite values")
    scale = max(1.0, float(np.abs(values).max()))
    check_parity(module, onnx_bytes, sample, atol=atol * scale)  # every output, value-scaled tolerance
    ort_probs, ort_values = run_onnx(onnx_bytes, sample)
    diff = max(float(np.abs(ort_probs - probs).max()), float(np.abs(ort_values - values).max()) / scale)
    if not diff <= atol:
        raise ExportParityError(diff, atol, len(sample))
    return onnx_bytes, diff


def choose_threshold(confidences: np.ndarray, defer_rate: float) -> float:
    """The confidence below which about ``defer_rate`` of decisions fall (sent to a human)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    if not 0.0 <= defer_rate < 1.0:
        raise ValueError(f"defer_rate={defer_rate} must be in [0, 1)")
    if len(confidences) == 0 or not np.all(np.isfinite(confidences)):
        raise ValueError(f"need finite confidences, got {len(confidences)} values")
    if defer_rate == 0.0:
        return 0.0
    return float(np.quantile(confidences, defer_rate, method="higher"))


def choose_safe_action(env_id: str, greedy_actions: np.ndarray, n_actions: int) -> tuple[int, str]:
    """(safe action, why): the environment's known safe action, else the most frequent greedy one."""
    if env_id in SAFE_ACTIONS:
        return SAFE_ACTIONS[env_id]
    counts = np.bincount(np.asarray(greedy_actions, dtype=np.int64), minlength=n_actions)
    action = int(counts.argmax())
    share = counts[action] / max(1, counts.sum())
    return action, (f"{env_id} has no action that is safe in every state; action {action} is the policy's most "
                    f"frequent greedy action ({share:.0%} of visited states), the fixed fallback that agrees "
                    f"with the policy most often")


def card_name(env_id: str, prefix: str = "policy") -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", f"{prefix}-{env_id}".lower()).strip("-")[:64]


def policy_card(module: Any, env_id: str, name: str, observations: np.ndarray, metrics: dict[str, Any],
                training: dict[str, Any], defer_rate: float = 0.05, action_selection: str = "sample") -> ModelCard:
    """The model card of an exported policy, with threshold, safe action and reference sample.
    ``action_selection`` (``sample`` or ``greedy``) is how serving will act
    (:func:`auditstream.tasks.policy.select_action` reads it from ``extra``); the metrics should
    describe the policy acting that way."""
    from auditstream.tasks.policy import ACTION_SELECTION

    if action_selection not in ACTION_SELECTION:
        raise ValueError(f"action_selection={action_selection!r} not one of {ACTION_SELECTION}")
    from training.export import git_revision

    probs = NumpyPolicy.from_torch(module).probs(observations)
    n_actions = probs.shape[1]
    confidence = probs.max(axis=1)
    threshold = choose_threshold(confidence, defer_rate)
    safe_action, reason = choose_safe_action(env_id, probs.argmax(axis=1), n_actions)
    rng = np.random.default_rng(0)
    sample = rng.choice(confidence, min(REFERENCE_SAMPLE, len(confidence)), replace=False)
    obs_dim = int(np.asarray(observations).shape[1])
    return ModelCard(
        name=name or card_name(env_id), version="0", task="policy",
        inputs=[TensorSpec("obs", "float32", [None, obs_dim])],
        outputs=[TensorSpec("action_probs", "float32", [None, n_actions]), TensorSpec("value", "float32", [None])],
        triage=TriageSpec(threshold=threshold, confidence_kind="max_prob", method="visited-state-quantile",
                          coverage=float(np.mean(confidence >= threshold)), safe_action=safe_action),
        preprocessing={"note": "raw Gymnasium observation, no scaling"},
        labels=ACTION_LABELS.get(env_id, [str(a) for a in range(n_actions)]),
        metrics=metrics,
        reference={"confidence_sample": [round(float(c), 6) for c in sample], "confidence_kind": "max_prob"},
        training={**training, "git_revision": git_revision()},
        extra={"env_id": env_id, "defer_rate": defer_rate, "safe_action_reason": reason,
               "action_selection": action_selection,
               "action": ("a sample from action_probs" if action_selection == "sample" else "argmax(action_probs)")},
    )


def acting_policy(policy: "NumpyPolicy", action_selection: str) -> "NumpyPolicy":
    """``policy`` as serving acts with it (:func:`auditstream.tasks.policy.select_action`):
    ``sample`` draws from its probabilities, so it is the policy itself; ``greedy`` takes the
    argmax of the probabilities rounded as serving rounds them, so its action probabilities are
    one-hot. Off-policy estimates of a policy must use these, not the soft probabilities of a
    greedy policy, which describe a policy that never serves."""
    from auditstream.tasks.base import DECIMALS
    from auditstream.tasks.policy import ACTION_SELECTION

    if action_selection not in ACTION_SELECTION:
        raise ValueError(f"action_selection={action_selection!r} not one of {ACTION_SELECTION}")
    if action_selection == "sample":
        return policy
    n = policy.n_actions
    return NumpyPolicy(lambda obs: np.eye(n)[np.argmax(np.round(policy.probs(obs), DECIMALS), axis=1)], n)


class NumpyPolicy:
    """A policy as a function from observations [N, obs_dim] to action probabilities [N, A]."""

    def __init__(self, probs_fn: Callable[[np.ndarray], np.ndarray], n_actions: int) -> None:
        self._probs_fn, self.n_actions = probs_fn, n_actions

    def probs(self, observations: np.ndarray) -> np.ndarray:
        observations = np.asarray(observations, dtype=np.float32)
        if len(observations) == 0:
            return np.zeros((0, self.n_actions))
        out = np.asarray(self._probs_fn(observations), dtype=np.float64)
        if out.shape != (len(observations), self.n_actions):
            raise ValueError(f"policy returned shape {out.shape}, expected {(len(observations), self.n_actions)}")
        return out

    @classmethod
    def from_torch(cls, module: Any) -> "NumpyPolicy":
        import torch

        module = module.cpu().eval()

        def probs(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = module(torch.as_tensor(obs))
            return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

        linear = next(m for m in module.modules() if isinstance(m, torch.nn.Linear))
        n_actions = probs(np.zeros((1, linear.in_features), dtype=np.float32)).shape[-1]
        return cls(probs, n_actions)

    @classmethod
    def from_onnx(cls, onnx_bytes: bytes) -> "NumpyPolicy":
        """Run an exported policy with ONNX Runtime (output ``action_probs``)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        n_actions = int(next(o for o in session.get_outputs() if o.name == "action_probs").shape[-1])
        return cls(lambda obs: session.run(["action_probs"], {"obs": obs})[0], n_actions)

    @classmethod
    def softened(cls, greedy: Callable[[np.ndarray], np.ndarray], n_actions: int, epsilon: float) -> "NumpyPolicy":
        """ε-soft version of a deterministic policy ``greedy(obs) -> actions``:
        π(a|s) = (1 - ε)·[a = greedy(s)] + ε / n_actions."""
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon={epsilon} must be in [0, 1]")

        def probs(obs: np.ndarray) -> np.ndarray:
            actions = np.asarray(greedy(obs), dtype=np.int64)
            out = np.full((len(obs), n_actions), epsilon / n_actions)
            out[np.arange(len(obs)), actions] += 1.0 - epsilon
            return out

        return cls(probs, n_actions)
