"""Batched mettagrid environments."""

from metta_agent.env.vecenv import VecEnv, episode_seed, first_episode_cutoff

__all__ = ["VecEnv", "episode_seed", "first_episode_cutoff"]
