"""PPO with a clipped objective for discrete actions on Gymnasium: ``auditstream train policy``.

A CleanRL-style single file, readable top to bottom: arguments → environments → agent →
rollout/update loop → evaluation → ONNX export + parity → model card → registry. The exported
graph takes ``obs`` float32 [batch, obs_dim] and returns ``action_probs`` [batch, n_actions] and
``value`` [batch]; serving acts by the card's ``extra.action_selection`` (``--action-selection``:
a sample from the probabilities by default, or the argmax) and uses max(action_probs) as the
confidence that triage compares with the card's threshold (see ``policy_export.py``). The card's
``mean_return`` is measured acting that same way; ``mean_return_greedy`` and
``mean_return_sampled`` stand beside it.

Commands and the hyperparameters they use (per-environment presets below, from RL Baselines3
Zoo's tuned PPO settings; every one can be overridden on the command line)::

    auditstream train policy --env CartPole-v1 --json       # 8 envs x 32 steps, 20 epochs, 150k steps
    auditstream train policy --env LunarLander-v3 --json    # 16 envs x 1024 steps, 4 epochs, 1M steps
    auditstream train policy --env LunarLander-v3 --num-envs 32 --total-timesteps 2000000 --device cuda

Vector environments use ``SAME_STEP`` autoreset, so the observation after a done is the next
episode's first one and a time-limit truncation bootstraps from the true final observation's
value (reward += gamma * V(final_obs)), as Stable-Baselines3 does. Training stops at once with
:class:`~auditstream.errors.TrainingDiverged` if a loss turns non-finite.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from auditstream import finite_json
from auditstream.errors import ConfigError, TrainingDiverged
from training.rl.args import PPOArgs

def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Agent(nn.Module):
    """Separate actor and critic MLPs; ``forward`` is the exported contract (probs, value)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.critic = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
                                    layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                                    layer_init(nn.Linear(hidden, 1), std=1.0))
        self.actor = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
                                   layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                                   layer_init(nn.Linear(hidden, n_actions), std=0.01))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.softmax(self.actor(obs), dim=-1), self.value(obs)


def make_envs(env_id: str, num_envs: int, seed: int):
    import gymnasium as gym

    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    if not hasattr(envs.single_action_space, "n"):
        raise ValueError(f"{env_id} has action space {envs.single_action_space}; PPO here needs discrete actions")
    envs.action_space.seed(seed)
    return envs


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device", name, "auto or cpu on this host (torch sees no CUDA device), e.g. auto")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError("--device", name, f"cuda:0 to cuda:{torch.cuda.device_count() - 1}: the GPUs torch sees")
    return device


def train(args: PPOArgs) -> tuple[Agent, dict[str, Any]]:
    """Run PPO; returns the trained agent (on CPU, eval mode) and training statistics."""
    from tqdm import tqdm

    args = args.resolved()
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny MLPs: thread hand-offs cost more than they save
    envs = make_envs(args.env, args.num_envs, args.seed)
    obs_dim, n_actions = int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n)
    agent = Agent(obs_dim, n_actions, args.hidden).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = max(1, args.total_timesteps // batch_size)
    shape = (args.num_steps, args.num_envs)
    obs_buf = torch.zeros(shape + (obs_dim,), device=device)
    actions_buf = torch.zeros(shape, dtype=torch.long, device=device)
    logprobs_buf, rewards_buf, dones_buf, values_buf = (torch.zeros(shape, device=device) for _ in range(4))

    next_obs_np, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32, device=device)
    next_done = torch.zeros(args.num_envs, device=device)
    episode_returns = np.zeros(args.num_envs)
    finished: list[float] = []
    env_steps, start = 0, time.perf_counter()
    bar = tqdm(total=num_iterations * batch_size, desc=f"ppo {args.env}", unit="step", disable=not args.progress)
    for iteration in range(num_iterations):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - iteration / num_iterations)
        for step in range(args.num_steps):
            obs_buf[step], dones_buf[step] = next_obs, next_done
            with torch.no_grad():
                logits = agent.actor(next_obs)
                dist = torch.distributions.Categorical(logits=logits, validate_args=False)
                action = dist.sample()
                values_buf[step] = agent.value(next_obs)
            actions_buf[step], logprobs_buf[step] = action, dist.log_prob(action)
            next_obs_np, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
            reward = np.asarray(reward, dtype=np.float64)
            episode_returns += reward
            done = np.logical_or(terminated, truncated)
            # A time limit is not a failure: bootstrap from the value of the real final observation.
            cut = np.flatnonzero(truncated & ~terminated)
            if len(cut):
                final = torch.as_tensor(np.stack(info["final_obs"][cut]), dtype=torch.float32, device=device)
                with torch.no_grad():
                    reward[cut] += args.gamma * agent.value(final).cpu().numpy()
            for i in np.flatnonzero(done):
                finished.append(float(episode_returns[i]))
                episode_returns[i] = 0.0
            rewards_buf[step] = torch.as_tensor(reward, dtype=torch.float32, device=device)
            next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32, device=device)
            next_done = torch.as_tensor(done, dtype=torch.float32, device=device)
            env_steps += args.num_envs
        bar.update(batch_size)

        # Generalised advantage estimation, backwards through the rollout.
        with torch.no_grad():
            next_value = agent.value(next_obs)
            advantages = torch.zeros_like(rewards_buf)
            last = torch.zeros(args.num_envs, device=device)
            for t in reversed(range(args.num_steps)):
                nonterminal = 1.0 - (next_done if t == args.num_steps - 1 else dones_buf[t + 1])
                following = next_value if t == args.num_steps - 1 else values_buf[t + 1]
                delta = rewards_buf[t] + args.gamma * following * nonterminal - values_buf[t]
                last = delta + args.gamma * args.gae_lambda * nonterminal * last
                advantages[t] = last
            returns = advantages + values_buf

        b_obs, b_actions = obs_buf.reshape(-1, obs_dim), actions_buf.reshape(-1)
        b_logprobs, b_adv = logprobs_buf.reshape(-1), advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        for _ in range(args.update_epochs):
            order = torch.randperm(batch_size, device=device)
            for lo in range(0, batch_size, minibatch_size):
                idx = order[lo:lo + minibatch_size]
                dist = torch.distributions.Categorical(logits=agent.actor(b_obs[idx]), validate_args=False)
                ratio = (dist.log_prob(b_actions[idx]) - b_logprobs[idx]).exp()
                adv = b_adv[idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(idx) > 1 else adv
                pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
                v_loss = 0.5 * (agent.value(b_obs[idx]) - b_returns[idx]).pow(2).mean()
                loss = pg_loss - args.ent_coef * dist.entropy().mean() + args.vf_coef * v_loss
                if not torch.isfinite(loss):
                    bar.close()
                    raise TrainingDiverged(f"ppo {args.env}", env_steps, loss.item())
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
        recent = finished[-20:]
        bar.set_postfix(ret=f"{np.mean(recent):.1f}" if recent else "-", eps=len(finished))
    bar.close()
    envs.close()
    stats = {"env_steps": env_steps, "train_seconds": round(time.perf_counter() - start, 2),
             "train_episodes": len(finished), "last_train_returns_mean": float(np.mean(finished[-20:] or [0.0])),
             "args": asdict(args), "device": str(device)}
    return agent.cpu().eval(), stats


def evaluate(agent: Agent, env_id: str, episodes: int, seed: int, progress: bool = True,
             action_selection: str = "greedy") -> dict[str, Any]:
    """Returns over ``episodes`` full episodes, one after another, so that short episodes are not
    over-represented; also the visited observations (for thresholds/reference). Actions by
    serving's own rule (:func:`auditstream.tasks.policy.select_action`): ``greedy`` (argmax) or
    ``sample`` (a draw from the probabilities, uniforms from a generator seeded by ``seed``)."""
    import gymnasium as gym
    from tqdm import tqdm

    from auditstream.tasks.policy import select_action

    env, rng = gym.make(env_id), np.random.default_rng(seed)
    returns, observations, steps = [], [], 0
    for episode in tqdm(range(episodes), desc=f"eval {env_id} ({action_selection})", disable=not progress):
        obs, _ = env.reset(seed=seed + 10_000 + episode)
        total, done = 0.0, False
        while not done:
            observations.append(np.asarray(obs, dtype=np.float32))
            with torch.no_grad():
                probs, _ = agent(torch.as_tensor(obs, dtype=torch.float32)[None])
            action, _ = select_action(probs[0].double().numpy(), rng.random(), action_selection)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(total)
    env.close()
    return {"returns": np.asarray(returns), "observations": np.stack(observations), "steps": steps}


def served_and_greedy_metrics(agent: Agent, env_id: str, episodes: int, seed: int, served: str,
                              progress: bool = False) -> tuple[dict[str, Any], np.ndarray]:
    """Returns of the policy as served (``served``: the card's action selection) beside the greedy
    and sampled ones, and the observations the served policy visits (threshold, reference)."""
    metrics: dict[str, Any] = {"action_selection": served}
    visited = None
    for mode, label in (("greedy", "greedy"), ("sample", "sampled")):
        evaluation = evaluate(agent, env_id, episodes, seed, progress, mode)
        returns = evaluation["returns"]
        metrics[f"mean_return_{label}"], metrics[f"std_return_{label}"] = float(returns.mean()), float(returns.std())
        if mode == served:
            metrics.update(mean_return=float(returns.mean()), std_return=float(returns.std()),
                           min_return=float(returns.min()), episodes=int(len(returns)))
            visited = evaluation["observations"]
    return metrics, visited


def run(args: PPOArgs, models_dir: str) -> dict[str, Any]:
    """Train, evaluate, export with a parity check, publish; the summary printed as JSON."""
    from training.rl.policy_export import export_policy, policy_card

    args = args.resolved()
    agent, stats = train(args)
    start = time.perf_counter()
    metrics, visited = served_and_greedy_metrics(agent, args.env, args.eval_episodes, args.seed,
                                                 args.action_selection, args.progress)
    eval_seconds = time.perf_counter() - start
    onnx_bytes, parity = export_policy(agent, visited)
    metrics.update(env_steps=stats["env_steps"], train_seconds=stats["train_seconds"],
                   eval_seconds=round(eval_seconds, 2), parity_max_abs_diff=parity)
    card = policy_card(agent, args.env, args.name, visited, metrics, training={**stats, "algorithm": "ppo"},
                       defer_rate=args.defer_rate, action_selection=args.action_selection)
    summary: dict[str, Any] = {"env": args.env, **metrics, "device": stats["device"],
                               "threshold": card.triage.threshold, "safe_action": card.triage.safe_action}
    if args.publish:
        from auditstream.registry import ModelRegistry

        registered = ModelRegistry(models_dir).publish(card, onnx_bytes)
        summary.update(model=registered.card.name, version=registered.card.version)
    return summary


def main(args: PPOArgs, models_dir: str, as_json: bool) -> int:
    summary = run(args, models_dir)
    print(f"{summary['env']}: mean return {summary['mean_return']:.1f} ± {summary['std_return']:.1f} over "
          f"{summary['episodes']} episodes as served ({summary['action_selection']}; greedy "
          f"{summary['mean_return_greedy']:.1f}, sampled {summary['mean_return_sampled']:.1f}); {summary['env_steps']} env steps in "
          f"{summary['train_seconds']:.0f} s on {summary['device']}; parity {summary['parity_max_abs_diff']:.2e}")
    if as_json:
        finite_json.print_summary(summary, sort_keys=True)
    return 0
