"""longrl: reinforcement learning for long chain-of-thought reasoning (the Kimi k1.5 recipe)."""

__version__ = "0.1.0"
