"""Prompt data: the tiny world (`worlds.py`) and file loaders (`sources.py`)."""
