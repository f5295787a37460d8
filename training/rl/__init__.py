"""Reinforcement learning: PPO, offline RL, off-policy evaluation, promotion."""
