"""Checks that need a CUDA device (skipped without one; `scripts/gpu_check.sh` runs them):
chunked log-probs, packing, bf16 training and the engine on the GPU."""

import pytest
import torch

from longrl.config import LossConfig, RolloutConfig, TrainConfig
from longrl.logprobs import chunked_logprobs
from longrl.models import load_model, load_tokenizer, token_logprobs
from longrl.rollout.engine import make_engine
from longrl.packing import pack
from longrl.trainer import Trainer
from longrl.types import Prompt, Segment, Trajectory
from longrl.weight_sync import WeightSync, sync_tolerance

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_chunked_equals_plain_in_float32_on_gpu():
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(300, 64, device="cuda", generator=g, requires_grad=True)
    weight = torch.randn(1000, 64, device="cuda", generator=g, requires_grad=True)
    targets = torch.randint(0, 1000, (300,), device="cuda", generator=g)
    got, _ = chunked_logprobs(hidden, weight, targets, 0.9, chunk_tokens=128)
    got_grads = torch.autograd.grad(got.sum(), (hidden, weight))
    want = ((hidden @ weight.T) / 0.9).log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    want_grads = torch.autograd.grad(want.sum(), (hidden, weight))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_packed_equals_unpacked_on_gpu(tiny_model_dir):
    model = load_model(tiny_model_dir).cuda().eval()
    seqs = [[3, 20, 21, 22, 4, 30, 31], [3, 25, 4, 40, 41, 42], [3, 26, 27, 4, 50]]
    rows = pack(seqs, [], row_tokens=64, pad_id=0)
    with torch.no_grad():
        packed = token_logprobs(model, rows.input_ids.cuda(), rows.position_ids.cuda(), chunk_tokens=4)[0]
        at = 0
        for seq in seqs:
            alone = token_logprobs(model, torch.tensor([seq], device="cuda"),
                                   torch.arange(len(seq), device="cuda")[None], chunk_tokens=4)[0]
            torch.testing.assert_close(packed[at + 1:at + len(seq)], alone[1:], rtol=0, atol=1e-5)
            at += len(seq)


def _trajectories():
    return [Trajectory(prompt=Prompt(id=f"p{i // 4}", text=""), sample_index=i % 4, prompt_ids=[3, 23 + i, 4],
                       segments=[Segment([20 + i % 4, 21, 22, 5], [-1.0] * 4, 0)], finish_reason="stop",
                       reward=float(i % 2)) for i in range(8)]


def test_bf16_training_on_gpu_keeps_float32_masters(tiny_model_dir):
    trainer = Trainer(load_model(tiny_model_dir, "bfloat16"), TrainConfig(lr=1e-4, mini_batch_size=4,
                      gradient_checkpointing=True, max_tokens_per_micro_batch=16), LossConfig(), pad_id=0,
                      device="cuda", dtype="bfloat16")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train_iteration(_trajectories())
    assert all(p.is_cuda and p.dtype == torch.float32 for p in trainer.model.parameters())
    assert metrics["train/steps"] == 2 and metrics["train/entropy"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    logprobs = trainer.current_logprobs(_trajectories())
    assert logprobs[0].device.type == "cpu" and logprobs[0].shape == (4,)


def test_bf16_engine_on_gpu_generates_and_passes_the_sync_check(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, "bfloat16").cuda()
    engine = make_engine(RolloutConfig(engine="hf", batch_size=16), model, tok, seed=0)
    trainer = Trainer(model, TrainConfig(mini_batch_size=8), LossConfig(), pad_id=0, device="cuda", dtype="bfloat16")
    trainer.train_iteration(_trajectories())
    sync = WeightSync(trainer.model, engine, tok, tolerance=sync_tolerance(1e-3, "bfloat16"))
    assert sync(iteration=1)["sync/probe_max_diff"] < 0.05
    from longrl.types import GenerationRequest, SamplingParams

    out = engine.generate([GenerationRequest([3, 24, 4])] * 4, SamplingParams(max_new_tokens=8))
    assert len(out) == 4 and all(1 <= len(c.token_ids) <= 8 for c in out)
