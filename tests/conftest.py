"""Shared fixtures: a tiny random model saved as a Hugging Face directory."""

import os

import pytest
import torch
import transformers

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))
transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from longrl.config import TinyModelConfig
    from longrl.data.worlds import save_tiny_model

    out = tmp_path_factory.mktemp("tiny")
    return save_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128), out)


class _Forgetful:
    """An engine whose weight push is silently lost: the fault the sync check exists to catch."""

    def __init__(self, engine):
        self.engine = engine

    def load_weights(self, state):
        for _ in state:
            pass

    def score(self, *args, **kwargs):
        return self.engine.score(*args, **kwargs)


@pytest.fixture
def forgetful():
    """Wrap an engine so that `load_weights` drops the weights it is given."""
    return _Forgetful
