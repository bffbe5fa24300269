"""Rewards: name -> batched scoring function (SPEC §6). See `registry.py`."""

from longrl.rewards.registry import Reward, get_reward, register_reward, score_batch

__all__ = ["Reward", "get_reward", "register_reward", "score_batch"]
