"""What off-policy evaluation assumes about the steps a human acted on.

Importance weights need the behaviour policy's probability of every logged action. Where the
model acted, the decision log holds it (the probabilities the action was drawn with). Where a
human acted, it does not: nobody knows what else the auditor might have chosen in that state. The
log writes a one-hot vector on the human's action, which is the assumption that **humans are a
known deterministic policy** (in that state this human always takes that action). Three ways to
evaluate with human steps, one per ``human_steps`` mode:

* ``as_logged`` (the default): take the one-hot propensities as they are. Right when auditors
  answer a state consistently; if they are in fact noisy, the ratio at a human step is π(a)/1
  where the truth is π(a)/μ(a) ≥ π(a): the weights of episodes through human steps are too
  small. Ordinary per-decision IS then is biased down for positive rewards; WIS and DR normalise
  the weights, so the estimate leans toward the episodes no human (or only a human's frequent
  action) touched, and is biased up where those earn more: +0.19 for WIS against -0.05 for PDIS
  on docs/rl.md's example ("Human steps in OPE"). It is no conservative choice.
* ``exclude``: evaluate on the episodes in which no human acted (fallback steps stay). Needs no
  assumption about humans, but answers another question, and not soundly: those episodes are
  selected by the actions taken along them (the logging policy's actions that kept them out of
  the states humans handle), so an importance-weighted value on them is of no policy's value,
  and neither is the difference of two such values: a far worse candidate came out better. For
  reports only (``rl train-offline --ope-human-steps``); the promotion gate refuses it
  (:class:`training.rl.promotion.PromotionConfig`).
* ``model``: estimate the humans' action probabilities from every human answer in the log
  (deferred steps and audited ones) with a multinomial logistic regression on the observation,
  mixed with ``human_noise`` of uniform so no action has probability 0, and use them as the
  propensities of the human-acted steps. The assumption becomes "humans act like the fitted model
  says", which the data can check (the fit's held-out accuracy is in the report).

:func:`with_human_steps` returns the dataset each mode evaluates on and a report of what changed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from auditstream.errors import AuditstreamError
from training.rl.offline_data import OfflineDataset

HUMAN_STEPS = ("as_logged", "exclude", "model")


class HumanStepsRefused(AuditstreamError, ValueError):
    """The chosen ``human_steps`` mode cannot be applied to these logs; the message says what to use instead."""


def with_human_steps(data: OfflineDataset, mode: str = "as_logged", human_noise: float = 0.05,
                     seed: int = 0) -> tuple[OfflineDataset, dict[str, Any]]:
    """(the dataset OPE should use under ``mode``, a report: ``human_steps``, ``human_acted_steps``
    and per mode ``episodes_dropped`` or ``human_model``)."""
    if mode not in HUMAN_STEPS:
        raise ValueError(f"human_steps {mode!r} not one of {HUMAN_STEPS}")
    acted = data.human_acted
    report: dict[str, Any] = {"human_steps": mode, "human_acted_steps": int(acted.sum())}
    if mode == "as_logged" or not acted.any():
        return data, report
    if mode == "exclude":
        touched = np.unique(data.episode_ids[acted])
        keep = np.setdiff1d(np.arange(data.n_episodes), touched)
        if len(keep) == 0:
            raise ValueError(f"a human acted in every one of the {data.n_episodes} episodes: nothing is left to "
                             "evaluate with human_steps='exclude'; use 'as_logged' or 'model'")
        report["episodes_dropped"] = int(len(touched))
        return data.select_episodes(keep), report
    probs, fit = human_action_model(data, human_noise, seed)
    propensities = data.propensities.copy()
    propensities[acted] = probs[acted].astype(np.float32)
    report["human_model"] = fit
    return replace(data, propensities=propensities,
                   behaviour_action_prob=propensities[np.arange(len(data.actions)), data.actions]), report


def human_action_model(data: OfflineDataset, human_noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Estimated human action probabilities at every step [N, A], fitted on every step a human
    answered (``human_actions >= 0``), and a report (examples, held-out accuracy)."""
    if not 0.0 < human_noise <= 1.0:
        raise ValueError(f"human_noise={human_noise} must be in (0, 1]: a zero would give logged actions probability 0")
    labelled = data.human_actions >= 0
    if not labelled.any():  # an all-zero fit would make every human step's propensities sum to human_noise
        raise HumanStepsRefused(
            f"human_steps 'model' (--human-steps / --ope-human-steps model): {int(data.human_acted.sum())} steps were "
            "acted on by a human, but no step carries the human's action (human_actions is -1 on every step), so "
            "there is nothing to fit the humans' action probabilities on; use 'as_logged' (their one-hot "
            "propensities as logged), or rebuild the dataset from logs whose verdicts carry the humans' answers")
    x, y, n_actions = data.observations[labelled], data.human_actions[labelled], data.n_actions
    fit: dict[str, Any] = {"examples": int(labelled.sum()), "human_noise": human_noise}
    classes = np.unique(y)
    if len(classes) < 2:
        # One answer only: the humans' frequencies are all there is to fit.
        p = np.bincount(y, minlength=n_actions) / max(1, len(y))
        fitted = np.tile(p, (len(data.actions), 1))
        fit["model"] = "frequencies"
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        rng = np.random.default_rng(seed)
        held_out = rng.random(len(y)) < 0.2
        if held_out.all() or not held_out.any() or len(np.unique(y[~held_out])) < 2:
            held_out[:] = False
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        if held_out.any():
            model.fit(x[~held_out], y[~held_out])
            fit["held_out_accuracy"] = float(np.mean(model.predict(x[held_out]) == y[held_out]))
        model.fit(x, y)
        fitted = np.zeros((len(data.actions), n_actions))
        fitted[:, model.classes_] = model.predict_proba(data.observations)
        fit["model"] = "logistic regression on the standardised observation"
    return (1.0 - human_noise) * fitted + human_noise / n_actions, fit
