"""Rewards (SPEC §6): built-in and user rewards (`registry.py`), the one scoring path (`score.py`)."""

from longrl.rewards.registry import Reward, available_rewards, build_rewards, get_reward
from longrl.rewards.score import score, score_batch

__all__ = ["Reward", "available_rewards", "build_rewards", "get_reward", "score", "score_batch"]
