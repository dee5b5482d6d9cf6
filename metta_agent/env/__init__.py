"""Batched mettagrid environments."""

from metta_agent.env.vecenv import VecEnv

__all__ = ["VecEnv"]
