"""Argument dataclasses of the RL jobs, kept free of torch so the CLI can build ``--help``
from them without importing any training code (see training/rl/cli.py).

Each field's ``help`` becomes its command-line help; ``None`` means "take the environment's
preset" where a preset exists.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from auditstream.cli_args import (COUNT, COUNT_OR_ZERO, FRACTION, LEFTOVER, NON_NEGATIVE, POSITIVE, PROBABILITY, SEED,
                                  SHARE, Range, check_derived_seed, check_fields)
from auditstream.errors import BadArguments, ConfigError

# Tuned per environment; ``None`` in PPOArgs means "take the preset".
PRESETS: dict[str, dict[str, Any]] = {
    "CartPole-v1": dict(num_envs=8, num_steps=32, total_timesteps=150_000, learning_rate=1e-3, anneal_lr=True,
                        gamma=0.98, gae_lambda=0.8, update_epochs=20, num_minibatches=1, ent_coef=0.0),
    "LunarLander-v3": dict(num_envs=16, num_steps=1024, total_timesteps=1_000_000, learning_rate=3e-4,
                           anneal_lr=False, gamma=0.999, gae_lambda=0.98, update_epochs=4, num_minibatches=256,
                           ent_coef=0.01),
}
DEFAULT_PRESET = PRESETS["LunarLander-v3"]
# What rl train-offline can do, so anything else is refused before the dataset is read: the
# ALGORITHMS of training/rl/offline_train.py and HUMAN_STEPS of training/rl/ope_humans.py (not
# imported: they pull in numpy, and --help reads this module; a test holds them equal).
OFFLINE_ALGORITHMS = ("bc", "cql")
OPE_HUMAN_STEPS = ("as_logged", "exclude", "model")
SEEDS_FOR_AN_INTERVAL = Range(2, whole=True)  # the benches' t interval over seeds needs two
EPISODES_FOR_A_SPREAD = Range(2, whole=True)  # a standard deviation needs two


def episodes_for_an_interval(confidence: float) -> int:
    """Fewest episodes a percentile bootstrap interval at ``confidence`` can rest on. A resample
    of n episodes is one episode drawn n times with probability n^-n per episode; while that is
    not rarer than the tail (1 - confidence) / 2, the interval's ends are single episodes'
    values, not bounds on the mean (1 episode: [v, v]; 3 at 0.95: 1/27 > 0.025). 4 at 0.95 and
    0.99, 5 at 0.999."""
    alpha = (1.0 - confidence) / 2.0
    n = 2
    while n ** -n >= alpha:
        n += 1
    return n
# FQE's misspecification allowance is chosen on held-out episodes: two folds of two at least (fqe.py).
MIN_SELECTION_EPISODES = 4
# A percentile interval from fewer bootstrap resamples is noise (ope_stats.bootstrap_counts refuses them).
BOOTSTRAP_RESAMPLES = Range(20, whole=True)
# The environments bench ope has ε-soft heuristics for (ope_bench.make_policies; a test holds them equal).
OPE_BENCH_ENVS = ("CartPole-v1", "LunarLander-v3")


def bench_envs(text: str, known: Sequence[str], which: str) -> list[str]:
    """The environments of a bench's ``--envs`` (comma-separated), each one of ``known`` (``which``
    says what those have in common); else :class:`BadArguments`, before any environment is made."""
    envs = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in envs if e not in known]
    if not envs or unknown:
        what_is_wrong = f"unknown environment(s) {', '.join(unknown)}" if unknown else "no environment given"
        raise BadArguments(f"--envs {text!r}: {what_is_wrong}; the bench runs on {', '.join(sorted(known))} "
                           f"({which}), comma-separated")
    return envs


def check_gym_env(option: str, env_id: str, discrete: bool = False) -> str:
    """``env_id`` if Gymnasium has it registered (and, with ``discrete``, it can be made and has
    discrete actions); else :class:`ConfigError` naming ``option`` with Gymnasium's own reason
    (an unknown name or version, a deprecated version, a missing dependency). Called by the
    handlers before a dataset is read, a broker touched or anything trained; imports gymnasium."""
    import gymnasium as gym

    try:
        gym.spec(env_id)
        if not discrete:
            return env_id
        env = gym.make(env_id)
    except gym.error.Error as e:
        raise ConfigError(option, env_id, f"a Gymnasium environment id this install can make, e.g. CartPole-v1 "
                                          f"({' '.join(str(e).split())})") from None
    try:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ConfigError(option, env_id, f"an environment with discrete actions, e.g. CartPole-v1 ({env_id} has "
                                              f"action space {env.action_space})")
    finally:
        env.close()
    return env_id


def _arg(help_text: str, default: Any = None, check: Range | None = None) -> Any:
    return field(default=default, metadata={"help": help_text} | ({"check": check} if check else {}))


@dataclass(frozen=True)
class PPOArgs:
    """Arguments of ``auditstream train policy`` (None = the environment's preset)."""

    env: str = _arg("Gymnasium environment id with discrete actions", "CartPole-v1")
    seed: int = _arg("seed of torch, numpy and the environments", 1, check=SEED)
    total_timesteps: int | None = _arg("environment steps to train for", None, COUNT)
    num_envs: int | None = _arg("parallel environments (SyncVectorEnv)", None, COUNT)
    num_steps: int | None = _arg("steps per environment per rollout", None, COUNT)
    learning_rate: float | None = _arg("Adam learning rate", None, POSITIVE)
    anneal_lr: bool | None = _arg("anneal the learning rate linearly to 0")
    gamma: float | None = _arg("discount factor", None, FRACTION)
    gae_lambda: float | None = _arg("GAE lambda", None, SHARE)
    update_epochs: int | None = _arg("optimisation epochs per rollout", None, COUNT)
    num_minibatches: int | None = _arg("minibatches per epoch", None, COUNT)
    ent_coef: float | None = _arg("entropy bonus coefficient", None, NON_NEGATIVE)
    clip_coef: float = _arg("PPO clipping range", 0.2, check=POSITIVE)
    vf_coef: float = _arg("value loss coefficient", 0.5, check=NON_NEGATIVE)
    max_grad_norm: float = _arg("gradient clipping norm", 0.5, check=POSITIVE)
    hidden: int = _arg("width of the two hidden layers of actor and critic", 64, check=COUNT)
    eval_episodes: int = _arg("episodes evaluated after training, greedy and sampled each", 100, check=COUNT)
    device: str = _arg("torch device: cpu, cuda, or auto (cuda when available)", "auto")
    defer_rate: float = _arg("share of evaluation decisions the triage threshold sends to a human", 0.05,
                             check=LEFTOVER)
    action_selection: str = _arg("how serving picks the action, written to the card: sample (a draw from "
                                 "action_probs: the logged probabilities are the true propensities) or greedy "
                                 "(argmax); the card's mean_return is measured this way", "sample")
    name: str = _arg("registry name (default: policy-<env>)", "")
    publish: bool = _arg("publish the exported policy to the model registry", True)
    progress: bool = _arg("show a progress bar", True)

    def __post_init__(self) -> None:
        check_fields(self)  # before training (a None is the preset, checked by resolved())
        # evaluation episode e is seeded seed + 10000 + e (ppo.py)
        check_derived_seed(self.seed, lambda seed: seed + 10_000 + self.eval_episodes - 1,
                           "seed + 10000 + eval-episodes - 1")
        if self.action_selection not in ("sample", "greedy"):
            raise ConfigError("--action-selection", self.action_selection, "sample or greedy")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError("--device", self.device, "auto, cpu, cuda or cuda:N, e.g. auto")

    def resolved(self) -> "PPOArgs":
        """These arguments with every ``None`` replaced by the environment's preset (checked
        again by ``__post_init__``); :class:`BadArguments` when the rollout does not split."""
        preset = PRESETS.get(self.env, DEFAULT_PRESET)
        values = {k: preset[k] for k, v in asdict(self).items() if v is None}
        out = replace(self, **values)
        if (out.num_envs * out.num_steps) % out.num_minibatches:
            raise BadArguments(f"a rollout of --num-envs {out.num_envs} x --num-steps {out.num_steps} steps does not "
                               f"split into --num-minibatches {out.num_minibatches}: give a divisor of "
                               f"{out.num_envs * out.num_steps}")
        return out



@dataclass(frozen=True)
class OfflineArgs:
    """Arguments of ``auditstream rl train-offline``."""

    dataset: Path = _arg("offline dataset: a Minari dataset directory or an .npz (both written by "
                                "'auditstream rl dataset')", Path("dataset.npz"))
    algorithm: str = _arg("bc (behaviour cloning, human corrections first) or cql (discrete conservative Q-learning)",
                          "cql")
    env: str = _arg("Gymnasium id to evaluate the learned policy on (empty: no online evaluation)", "")
    eval_episodes: int = _arg("online evaluation episodes when --env is given (acting as --action-selection)", 20,
                              check=COUNT)
    action_selection: str = _arg("how serving picks the action, written to the card: sample or greedy; the online "
                                 "evaluation acts this way", "sample")
    steps: int = _arg("gradient steps", 20_000, check=COUNT)
    batch_size: int = _arg("minibatch size", 256, check=COUNT)
    learning_rate: float = _arg("Adam learning rate", 3e-4, check=POSITIVE)
    hidden: int = _arg("width of the two hidden layers", 64, check=COUNT)
    gamma: float = _arg("discount factor (CQL)", 0.99, check=FRACTION)
    cql_alpha: float = _arg("weight of the conservative penalty logsumexp Q - Q(s, a_data) (CQL)", 1.0,
                            check=NON_NEGATIVE)
    target_update: int = _arg("gradient steps between target-network copies (CQL)", 500, check=COUNT)
    # > 0: at 0 a minibatch of human-labelled steps only has no weight at all (bc.py refuses it)
    human_weight: float = _arg("loss weight of human-corrected steps relative to others (BC)", 5.0,
                               check=POSITIVE)
    ope_human_steps: str = _arg("what OPE assumes about steps a human acted on: as_logged (one-hot propensities), "
                                "exclude (episodes without them) or model (fitted human probabilities)", "as_logged")
    policy_temperature: float = _arg("softmax temperature turning CQL's Q-values into action probabilities", 1.0,
                                     check=POSITIVE)
    seed: int = _arg("seed of torch and numpy", 1, check=SEED)
    name: str = _arg("registry name (default: policy-<algorithm>-<env or dataset>)", "")
    publish: bool = _arg("publish the exported policy to the model registry", True)
    progress: bool = _arg("show a progress bar", True)

    def __post_init__(self) -> None:  # before training, not after it (policy_card checks too)
        check_fields(self)
        if self.action_selection not in ("sample", "greedy"):
            raise ConfigError("--action-selection", self.action_selection, "sample or greedy")
        if self.algorithm not in OFFLINE_ALGORITHMS:
            raise ConfigError("--algorithm", self.algorithm, " or ".join(OFFLINE_ALGORITHMS))
        if self.ope_human_steps not in OPE_HUMAN_STEPS:
            raise ConfigError("--ope-human-steps", self.ope_human_steps,
                              f"{', '.join(OPE_HUMAN_STEPS[:-1])} or {OPE_HUMAN_STEPS[-1]}")


@dataclass(frozen=True)
class OPEBenchArgs:
    """Arguments of ``auditstream bench ope``."""

    envs: str = _arg(f"comma-separated environments ({', '.join(OPE_BENCH_ENVS)})", ",".join(OPE_BENCH_ENVS))
    trials: int = _arg("independent logged datasets per environment", 40, check=COUNT)
    episodes: int = _arg("behaviour episodes per dataset (the intervals resample episodes)", 200,
                         check=EPISODES_FOR_A_SPREAD)
    horizon: int = _arg("steps per episode counted in the value (episodes are cut there)", 150, check=COUNT)
    gamma: float = _arg("discount of the estimated value", 0.95, check=FRACTION)
    # > 0: an ε-soft logging policy with ε = 0 is greedy, and the target's other actions have no support
    behaviour_epsilon: float = _arg("ε of the logging policy (ε-soft heuristic)", 0.3, check=FRACTION)
    target_epsilon: float = _arg("ε of the evaluated policy (ε-soft heuristic)", 0.1, check=SHARE)
    truth_episodes: int = _arg("Monte Carlo episodes of the target policy for the true value (and the returns' "
                               "standard deviation)", 4000, check=EPISODES_FOR_A_SPREAD)
    bootstrap: int = _arg("bootstrap resamples per interval", 200, check=BOOTSTRAP_RESAMPLES)
    confidence: float = _arg("two-sided confidence level of the intervals", 0.95, check=PROBABILITY)
    seed: int = _arg("seed", 0, check=SEED)
    progress: bool = _arg("show progress bars", True)

    def __post_init__(self) -> None:
        check_fields(self)  # before any environment is made
        bench_envs(self.envs, OPE_BENCH_ENVS, "the environments with a heuristic policy")
        fewest = max(episodes_for_an_interval(self.confidence), MIN_SELECTION_EPISODES)
        if self.episodes < fewest:  # some estimator gives no interval on fewer: nothing to cover
            raise ConfigError("--episodes", self.episodes, f"at least {fewest}: a bootstrap interval at --confidence "
                                                           f"{self.confidence:g} needs "
                                                           f"{episodes_for_an_interval(self.confidence)} episodes, "
                                                           f"FQE's held-out selection {MIN_SELECTION_EPISODES}")
        # the truth's episodes are seeded seed + 1e6 + e, trial t's seed + 1e4 (t + 1) + e (ope_bench.py)
        check_derived_seed(self.seed, lambda seed: seed + max(1_000_000 + self.truth_episodes,
                                                               10_000 * self.trials + self.episodes) - 1,
                           "the larger of seed + 1000000 + truth-episodes - 1 and seed + 10000 trials + episodes - 1")


@dataclass(frozen=True)
class OverridesBenchArgs:
    """Arguments of ``auditstream bench overrides`` (HG-DAgger: do human takeovers improve the policy?)."""

    envs: str = _arg("comma-separated environments (CartPole-v1, LunarLander-v3)", "CartPole-v1,LunarLander-v3")
    seeds: int = _arg("independent repetitions (demonstrations, initial policy, logs, fine-tuning, evaluation); "
                      "at least 2: the bench reports a confidence interval over seeds", 10, check=SEEDS_FOR_AN_INTERVAL)
    episodes: int = _arg("logged episodes of the deployed policy per arm (with and without takeovers)", 20,
                         check=COUNT)
    eval_episodes: int = _arg("online episodes evaluating each policy, acting as served (sampled actions)", 20,
                              check=COUNT)
    demo_episodes: int = _arg("episodes of the simulated human the initial policy is cloned from "
                              "(0: 1 on CartPole-v1, 2 on LunarLander-v3)", 0, check=COUNT_OR_ZERO)
    defer_rate: float = _arg("share of the initial policy's decisions below the routing threshold (the human "
                             "budget; the threshold is chosen as a published card's is)", 0.1, check=PROBABILITY)
    bc_steps: int = _arg("gradient steps of the initial behaviour cloning", 1000, check=COUNT)
    finetune_steps: int = _arg("gradient steps fine-tuning the initial policy on the aggregated logs", 1000,
                               check=COUNT)
    # > 0: the initial policy is cloned from the simulated human's steps alone (bc.py refuses 0)
    human_weight: float = _arg("loss weight of human-labelled steps relative to others", 5.0, check=POSITIVE)
    seed: int = _arg("first seed (seeds are seed, seed+1, ...)", 0, check=SEED)
    progress: bool = _arg("show progress bars", True)

    def __post_init__(self) -> None:
        check_fields(self)  # before any environment is made
        # repetition i runs on seed s = seed + i and seeds its episodes 10 s + 1 .. 10 s + 4, the human's
        # seed + 999 (overrides_bench.py)
        check_derived_seed(self.seed, lambda seed: max(10 * (seed + self.seeds - 1) + 4, seed + 999),
                           "the larger of 10 (seed + seeds - 1) + 4 and seed + 999")


@dataclass(frozen=True)
class OfflineBenchArgs:
    """Arguments of ``auditstream bench offline`` (do BC and CQL beat the policy that logged the data?)."""

    envs: str = _arg("comma-separated environments (CartPole-v1, LunarLander-v3)", "CartPole-v1,LunarLander-v3")
    seeds: int = _arg("independent repetitions (behaviour policy, logs, training, evaluation); at least 2: the "
                      "bench reports a confidence interval over seeds", 3, check=SEEDS_FOR_AN_INTERVAL)
    episodes: int = _arg("logged episodes of the behaviour policy per dataset", 50, check=COUNT)
    eval_episodes: int = _arg("online episodes evaluating each learnt policy (greedy)", 10, check=COUNT)
    good_epsilon: float = _arg("the good behaviour policy is the simulated human, epsilon-soft with this epsilon", 0.1,
                               check=SHARE)
    demo_episodes: int = _arg("episodes of the simulated human the mediocre behaviour policy is cloned from "
                              "(0: 1 on CartPole-v1, 2 on LunarLander-v3)", 0, check=COUNT_OR_ZERO)
    demo_bc_steps: int = _arg("gradient steps cloning the mediocre behaviour policy from the demonstrations", 1000,
                              check=COUNT)
    bc_steps: int = _arg("gradient steps of the BC learner on the logs", 5000, check=COUNT)
    cql_steps: int = _arg("gradient steps of the CQL learner on the logs", 5000, check=COUNT)
    cql_alpha: float = _arg("CQL's conservative penalty weight", 1.0, check=NON_NEGATIVE)
    gamma: float = _arg("discount of CQL", 0.99, check=FRACTION)
    seed: int = _arg("first seed (seeds are seed, seed+1, ...)", 0, check=SEED)
    progress: bool = _arg("show progress bars", True)

    def __post_init__(self) -> None:
        check_fields(self)  # before any environment is made
        # repetition i runs on seed s = seed + i and seeds its episodes 10 s + 1 .. 10 s + 6 (offline_bench.py)
        check_derived_seed(self.seed, lambda seed: 10 * (seed + self.seeds - 1) + 6, "10 (seed + seeds - 1) + 6")
