"""Rollout: inference engines behind one protocol (`engine.py`)."""
