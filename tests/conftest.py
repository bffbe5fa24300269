"""Shared fixtures: a tiny random model saved as a Hugging Face directory."""

import os

import pytest
import torch
import transformers

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))
transformers.utils.logging.disable_progress_bar()


# The SFT warm-up the end-to-end RL tests start from: 2-digit addition, half of the examples
# answer-only, so RL has a real signal to find (reasoning first earns reward).
WARM_UP = ["tiny.hidden_size=128", "tiny.num_layers=2", "tiny.intermediate_size=512", "steps=200",
           "lr=3e-3", "rows_per_step=32", "row_tokens=256", "world.tasks=['add']", "world.min_level=2",
           "world.max_level=2", "world.direct_fraction=0.5", "eval.num_prompts=50", "eval.n_samples=2",
           "log_every=20"]


@pytest.fixture(scope="session")
def warmed_up_model(tmp_path_factory):
    """The model directory of one `longrl sft` run with WARM_UP, shared by the e2e tests."""
    from longrl.cli import main

    out = tmp_path_factory.mktemp("sft")
    assert main(["sft", f"out_dir={out}", "name=sft", "--no-progress", *WARM_UP]) == 0
    return out / "sft" / "final"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from longrl.config import TinyModelConfig
    from longrl.tiny import save_tiny_model

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
