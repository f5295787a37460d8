"""Policy: an action in an environment, one step at a time (PPO policies on Gymnasium).

| graph outputs | output | confidence | parts | details |
|---|---|---|---|---|
| ``action_probs`` [B, A], ``value`` [B] | the action that acts | by ``triage.confidence_kind`` | the action | full probability vector, value |

A policy's confidence is chosen by its card's ``triage.confidence_kind`` (:data:`CONFIDENCE_KINDS`):
``max_prob`` (default), ``prob_gap`` (best minus second-best probability) or ``entropy``
(``1 - H(p) / log A``: 1 for a certain policy, 0 for a uniform one), so uncertainty routing is the
triage comparing that number with the card's threshold. The action that acts comes from
:func:`select_action`: a draw from the probabilities (``sample``, the default: the logged
probabilities are then the true behaviour propensities) or the argmax (``greedy``), by the card's
``extra.action_selection``. Policies act, so at least :data:`MIN_QC_RATE` of their auto decisions
are audited at random whatever the settings say: off-policy evaluation of other thresholds (and
of the auto decisions themselves) stays possible.

A row of ``action_probs`` that is not a probability distribution -- not finite, a negative entry,
or a sum off 1 by more than :data:`SUM_TOLERANCE` -- is that record's model failure: ``postprocess``
answers ``None`` for it, as every kind does for a non-finite row (an ``inference_failed`` dead
letter), and :func:`select_action` refuses to act on it. ``[0, 0]`` or ``[1e-30, 1e-30]`` would
otherwise have entropy confidence 1.0 (auto-accepted) and log a propensity of 0 or 1e-30 for the
action taken, which breaks off-policy evaluation's importance weights.

A policy's consumer keeps per-episode state (serving/episodes.py): its observations, as the
card's input dtype, are written to the episode-state topic, and ``preprocessing.frame_stack``
says how many make the graph input. :meth:`Policy.check_card` refuses at start-up what that
state could not hold: an input dtype the wire cannot carry (:data:`~auditstream.wire.ALLOWED_DTYPES`;
``float16`` would stop the consumer at its first checkpoint), or a frame stack that is not an
integer from 1 to :data:`MAX_FRAME_STACK` or does not fit the input (:func:`frame_spec`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from auditstream.registry import ModelCard, TensorSpec
from auditstream.tasks.base import DECIMALS, Answer, Part, Task, indexed_answer_text, probability, register, rounded
from auditstream.wire import ALLOWED_DTYPES, Prediction, Route, TaskKind

CONFIDENCE_KINDS = ("max_prob", "prob_gap", "entropy")
ACTION_SELECTION = ("sample", "greedy")
MIN_QC_RATE = 0.01
# How far from 1 the sum of a row of action probabilities may be. A float32 softmax errs by at
# most about (A + 3) * 2**-24 (each probability rounded once, the normaliser summed in float32):
# under 1e-4 up to 1,600 actions, under 1e-3 up to 16,000, and ONNX Runtime's kernel does far
# better (tests/auditstream/test_policy_task.py). What is not a distribution -- all zeros, all
# tiny, unnormalised scores, a sigmoid per action -- is off by far more than 1e-3.
SUM_TOLERANCE = 1e-3
# The most frames a card may stack; serving/episodes.py's state records hold as many
# (MAX_STATE_FRAMES is this), so every card the check takes can keep its frames.
MAX_FRAME_STACK = 1024


def distribution_problem(probs: np.ndarray, tolerance: float = SUM_TOLERANCE) -> str | None:
    """Why ``probs`` (float64) is not a probability distribution, or None when it is one."""
    if probs.size == 0 or not np.isfinite(probs).all():
        return "empty or not finite"
    if (probs < 0).any():
        return f"a negative probability ({probs.min():.3g})"
    total = float(probs.sum())
    if abs(total - 1.0) > tolerance:
        return f"the probabilities sum to {total:.6g}, not 1 ± {tolerance:.3g}"
    return None


def frame_stack(card: ModelCard) -> int:
    """``preprocessing.frame_stack``: how many observations make one graph input (default 1)."""
    k = card.preprocessing.get("frame_stack", 1)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_FRAME_STACK:
        raise ValueError(f"model {card.name}: preprocessing.frame_stack={k!r} must be an integer from 1 to "
                         f"{MAX_FRAME_STACK}")
    return k


def frame_spec(card: ModelCard) -> TensorSpec:
    """The spec of one request's observation: the graph input without its stack axis."""
    if not card.inputs:
        raise ValueError(f"model {card.name}: the card lists no input; a policy takes its observation as one")
    spec, k = card.inputs[0], frame_stack(card)
    if k == 1:
        return spec
    if len(spec.shape) >= 3 and spec.shape[1] == k:
        return TensorSpec(spec.name, spec.dtype, [spec.shape[0]] + spec.shape[2:])
    if len(spec.shape) == 2 and isinstance(spec.shape[1], int) and spec.shape[1] % k == 0:
        return TensorSpec(spec.name, spec.dtype, [spec.shape[0], spec.shape[1] // k])
    raise ValueError(f"model {card.name}: input {spec.shape} has neither a stack axis of {k} after the batch "
                     f"axis nor a flat width divisible by {k} (preprocessing.frame_stack)")


def action_selection(card: ModelCard) -> str:
    return str(card.extra.get("action_selection", "sample"))


def policy_confidence(probs: np.ndarray, kind: str = "max_prob") -> float:
    """How sure a policy is of its action, in [0, 1] (see the module docstring). ``probs`` must
    be a distribution (:func:`distribution_problem`): of ``[0, 0]`` the entropy says 1.0."""
    if kind == "max_prob":
        return float(probs.max())
    if kind == "prob_gap":
        top = np.sort(probs)[::-1]
        return float(top[0] - (top[1] if len(top) > 1 else 0.0))
    if kind == "entropy":
        if len(probs) < 2:
            return 1.0
        p = probs[probs > 0]
        return float(1.0 - (-(p * np.log(p)).sum()) / np.log(len(probs)))
    raise ValueError(f"confidence kind {kind!r} not one of {CONFIDENCE_KINDS}")


def select_action(action_probs: Sequence[float], uniform: float, mode: str = "sample") -> tuple[int, list[float]]:
    """(action to apply, the propensities it was drawn with).

    ``sample``: the inverse CDF of the probabilities at ``uniform`` (the caller passes a hash of
    the request id, so a redelivered request picks the same action), and the propensities are the
    probabilities themselves. ``greedy``: the argmax, propensities one-hot (what a deterministic
    behaviour policy really did; off-policy evaluation needs the truth).
    """
    probs = np.asarray(action_probs, dtype=np.float64)
    # The row arrives rounded to DECIMALS places (Answer details): each rounding moves the sum.
    problem = distribution_problem(probs, SUM_TOLERANCE + len(probs) * 0.5 * 10.0**-DECIMALS)
    if problem is not None:
        raise ValueError(f"action_probs {[float(p) for p in probs[:8]]}{' ...' if len(probs) > 8 else ''} are not a "
                         f"probability distribution ({problem}): no action is drawn from them")
    if mode == "greedy":
        action = int(np.argmax(probs))
        return action, [1.0 if a == action else 0.0 for a in range(len(probs))]
    if mode != "sample":
        raise ValueError(f"action selection {mode!r} not one of {ACTION_SELECTION}")
    cdf = np.cumsum(probs / probs.sum())
    # A uniform past the cdf's last value (rounding) takes the last action that can act: one of
    # probability 0 would be logged with propensity 0.
    action = int(min(np.searchsorted(cdf, uniform, side="right"), np.flatnonzero(probs > 0)[-1]))
    return action, [float(p) for p in action_probs]


class Policy(Task):
    kind = TaskKind.POLICY
    output_names = ("action_probs", "value")
    acts = True
    min_qc_rate = MIN_QC_RATE

    def check_card(self, card: ModelCard) -> None:
        super().check_card(card)
        if card.triage.confidence_kind not in CONFIDENCE_KINDS:
            raise ValueError(f"policy {card.name}: triage.confidence_kind {card.triage.confidence_kind!r} not one of "
                             f"{CONFIDENCE_KINDS}")
        if action_selection(card) not in ACTION_SELECTION:
            raise ValueError(f"policy {card.name}: extra.action_selection {action_selection(card)!r} not one of "
                             f"{ACTION_SELECTION}")
        # The registry checked that safe_action is null or an index >= 0; only the kind knows A.
        n_actions = next((o.shape[-1] for o in card.outputs if o.name == "action_probs" and o.shape), None)
        safe = card.triage.safe_action
        if isinstance(safe, int) and isinstance(n_actions, int) and not 0 <= safe < n_actions:
            raise ValueError(f"policy {card.name}: triage.safe_action {safe} is not one of its {n_actions} actions "
                             f"(0 to {n_actions - 1})")
        # What serving/episodes.py builds from the card; refused here, before anything is started.
        frame = frame_spec(card)
        if frame.dtype not in ALLOWED_DTYPES:
            raise ValueError(f"policy {card.name}: input {frame.name} is {frame.dtype}, which the episode state (the "
                             f"wire) cannot carry; export the observation as one of {ALLOWED_DTYPES}")

    def postprocess(self, card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Answer | None]:
        action_probs = outputs["action_probs"]
        value = outputs["value"].reshape(len(action_probs), -1)[:, 0]
        answers: list[Answer | None] = []
        for row, v in zip(action_probs, value):
            # not a distribution: this record's model failure, like a non-finite row (module docstring)
            if distribution_problem(row.astype(np.float64)) is not None or not np.isfinite(v):
                answers.append(None)
                continue
            action = int(np.argmax(row))
            # a distribution within SUM_TOLERANCE: a probability may be 1.0005, its max_prob too;
            # published in [0, 1] (base.probability)
            confidence = probability(policy_confidence(row.astype(np.float64), card.triage.confidence_kind))
            answers.append(Answer(action, confidence, (Part(0, action, confidence),),
                                  {"action_probs": [rounded(p) for p in np.clip(row, 0.0, 1.0).tolist()],
                                   "value": rounded(v)}))
        return answers

    def act(self, answer: Answer, card: ModelCard, uniform: float) -> Answer:
        """The action that acts, drawn by the card's rule, with the propensities it was drawn with."""
        mode = action_selection(card)
        action, propensities = select_action(answer.details["action_probs"], uniform, mode)
        details = {**answer.details, "propensities": propensities, "action_selection": mode,
                   "greedy_action": answer.output, "confidence_kind": card.triage.confidence_kind}
        return Answer(action, answer.confidence, (Part(0, action, answer.confidence),), details)

    def decision_details(self, prediction: Prediction) -> dict[str, Any]:
        """Everything off-policy evaluation and offline RL need about the decision."""
        d = prediction.details
        details = {"action_probs": d["action_probs"], "propensities": d["propensities"], "value": d["value"],
                   "route": prediction.route.value, "confidence": prediction.confidence,
                   "qc_sampled": prediction.route == Route.AUTO_QC, "qc_inclusion_prob": prediction.qc_inclusion_prob,
                   "action_selection": d["action_selection"], "threshold": d["threshold"]}
        if "episode" in d:
            details["episode"] = d["episode"]
        return details

    def answer_text(self, output: Any, labels: Sequence[str] = ()) -> str:
        return indexed_answer_text(output, labels)


TASK = register(Policy())
