"""Packing, packed log-probs, and one OPMD training phase."""

import math

import pytest
import torch

from longrl.config import LossConfig, TrainConfig
from longrl.models import load_model, token_logprobs
from longrl.packing import build_train_batch, group_indices, micro_batches, pack, row_lengths
from longrl.trainer import Trainer
from longrl.types import Prompt, Segment, Trajectory


def test_pack_lays_sequences_end_to_end():
    rows = pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], [[[1, 1, 1], [2, 2], [3, 3, 3, 3]]], row_tokens=5, pad_id=0)
    assert rows.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert rows.seq_ids.tolist() == [[0, 0, 0, 1, 1], [2, 2, 2, 2, -1]]
    assert rows.values[0].tolist() == [[1, 1, 1, 2, 2], [3, 3, 3, 3, 0]]


def test_packed_logprobs_equal_separate_ones(tiny_model_dir):
    model = load_model(tiny_model_dir).eval()
    seqs = [[3, 20, 21, 22, 4, 30, 31], [3, 25, 4, 40, 41, 42], [3, 26, 27, 4, 50]]
    rows = pack(seqs, [], row_tokens=64, pad_id=0)
    assert rows.input_ids.shape[0] == 1
    with torch.no_grad():
        packed = token_logprobs(model, rows.input_ids, rows.position_ids)[0]
        at = 0
        for seq in seqs:
            ids = torch.tensor([seq])
            alone = token_logprobs(model, ids, torch.arange(len(seq))[None])[0]
            # position 0 of each sequence has no prediction in either layout
            torch.testing.assert_close(packed[at + 1:at + len(seq)], alone[1:], rtol=0, atol=1e-5)
            at += len(seq)


def _trajectories(k=4):
    prompts = [Prompt(id=f"p{i}", text=f"{i}+{i}", answer=str(2 * i)) for i in range(2)]
    out = []
    for p in prompts:
        for j in range(k):
            response = [20 + j, 21, 22 + (j % 2), 5]
            out.append(Trajectory(prompt=p, sample_index=j, prompt_ids=[3, 23 + j, 4],
                                  segments=[Segment(response, [0.0] * 4, 0)], finish_reason="stop",
                                  reward=float(j % 2)))
    return out


def test_current_logprobs_packed_equal_one_forward_per_sequence(tiny_model_dir):
    model = load_model(tiny_model_dir).eval()
    trajectories = _trajectories()
    trajectories[2].segments.append(Segment([30, 31, 32, 33, 34, 35], [0.0] * 6, 1))  # longer ones
    trajectories[5].prompt_ids = [3, 24, 25, 26, 4]
    # rows of 12 tokens hold one or two sequences; chunks of 2 rows: several forwards, several rows each
    trainer = Trainer(model, TrainConfig(row_tokens=12, micro_batch_rows=2), LossConfig(), pad_id=0)
    packed = trainer.current_logprobs(trajectories)
    assert trainer.current_logprobs([]) == []
    with torch.no_grad():
        for t, got in zip(trajectories, packed):
            ids = torch.tensor([t.prompt_ids + t.response_ids])
            alone = token_logprobs(model, ids, torch.arange(ids.shape[1])[None])[0, len(t.prompt_ids):]
            assert got.shape == (t.num_response_tokens,)
            torch.testing.assert_close(got, alone, rtol=0, atol=1e-5)


def test_train_batch_masks_prompts_and_keeps_sampling_logprobs():
    trajectories = _trajectories(k=2)
    trajectories[0].segments[0].logprobs = [-0.1, -0.2, -0.3, -0.4]
    batch = build_train_batch(trajectories, torch.zeros(4), row_tokens=100, pad_id=0)
    assert batch.loss_mask[0, :7].tolist() == [0, 0, 0, 1, 1, 1, 1]
    torch.testing.assert_close(batch.old_logprobs[0, 3:7], torch.tensor([-0.1, -0.2, -0.3, -0.4]))
    assert batch.seq_ids[0, :7].tolist() == [-1, -1, -1, 0, 0, 0, 0]
    assert group_indices(trajectories).tolist() == [0, 0, 1, 1]


def test_training_phase_moves_the_policy_toward_rewarded_samples(tiny_model_dir):
    model = load_model(tiny_model_dir)
    trainer = Trainer(model, TrainConfig(lr=1e-2, mini_batch_size=4, epochs=2, recompute_old_logprobs=True),
                      LossConfig(tau=0.1, level="sequence"), pad_id=0)
    trajectories = _trajectories()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([trajectories[1].prompt_ids + trajectories[1].response_ids])
    with torch.no_grad():
        rewarded_before = token_logprobs(model, ids, torch.arange(ids.shape[1])[None])[0, 3:].sum()
    metrics = trainer.train_iteration(trajectories)
    assert metrics["train/steps"] == 4  # 2 epochs x 8 sequences / 4 per step
    assert metrics["train/old_logprob_max_diff"] > 0  # the recorded zeros were replaced
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    with torch.no_grad():
        rewarded_after = token_logprobs(model, ids, torch.arange(ids.shape[1])[None])[0, 3:].sum()
    assert rewarded_after > rewarded_before  # sample 1 had reward 1 > its group's mean 0.5


@pytest.mark.parametrize("kind", ["grpo", "rest"])
def test_baseline_losses_train_toward_rewarded_samples(tiny_model_dir, kind):
    model = load_model(tiny_model_dir)
    trainer = Trainer(model, TrainConfig(lr=1e-2, mini_batch_size=4, epochs=2), LossConfig(kind=kind), pad_id=0)
    trajectories = _trajectories()
    ids = torch.tensor([trajectories[1].prompt_ids + trajectories[1].response_ids])
    with torch.no_grad():
        rewarded_before = token_logprobs(model, ids, torch.arange(ids.shape[1])[None])[0, 3:].sum()
    metrics = trainer.train_iteration(trajectories)
    assert math.isfinite(metrics[f"loss/{kind}"]) and metrics["train/steps"] == 4
    with torch.no_grad():
        rewarded_after = token_logprobs(model, ids, torch.arange(ids.shape[1])[None])[0, 3:].sum()
    assert rewarded_after > rewarded_before


def test_optimizer_is_reset_every_iteration(tiny_model_dir):
    trainer = Trainer(load_model(tiny_model_dir), TrainConfig(mini_batch_size=8, optimizer_reset="all"), LossConfig(),
                      pad_id=0)
    trainer.train_iteration(_trajectories())
    first = trainer.optimizer
    assert len(first.state) > 0
    trainer.train_iteration(_trajectories())
    assert trainer.optimizer is not first
    step = next(iter(trainer.optimizer.state.values()))["step"]
    assert float(step) == 1.0  # one step since the reset, not two


@pytest.mark.parametrize("reset", ["first_moment", "none"])
def test_optimizer_kept_or_momentum_cleared_between_iterations(tiny_model_dir, reset):
    trainer = Trainer(load_model(tiny_model_dir), TrainConfig(mini_batch_size=16, grad_clip=0.0, optimizer_reset=reset),
                      LossConfig(), pad_id=0)
    trainer.train_iteration(_trajectories())
    optimizer = trainer.optimizer
    param, state = next((p, s) for p, s in optimizer.state.items() if s["exp_avg"].abs().sum() > 0)
    m, v = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    grads = []  # the gradient of the next iteration's first (only) step
    param.register_post_accumulate_grad_hook(lambda p: grads.append(p.grad.clone()))
    trainer.train_iteration(_trajectories())
    assert trainer.optimizer is optimizer and float(state["step"]) == 2.0
    beta1, beta2 = TrainConfig().betas
    kept_m = 0.0 if reset == "first_moment" else beta1 * m
    torch.testing.assert_close(state["exp_avg"], kept_m + (1 - beta1) * grads[0])
    torch.testing.assert_close(state["exp_avg_sq"], beta2 * v + (1 - beta2) * grads[0] ** 2)


def test_micro_batches_by_token_budget_by_hand():
    # rows of 5, 3, 4, 2 tokens, budget 8: [5] (2 x 5 = 10 > 8), [3, 4] (2 x 4 = 8), [2]? no:
    # 3 x 4 = 12 > 8, so [2] alone
    assert micro_batches([5, 3, 4, 2], max_tokens=8) == [range(0, 1), range(1, 3), range(3, 4)]
    assert micro_batches([9, 1], max_tokens=8) == [range(0, 1), range(1, 2)]  # too long: alone, unsplit
    assert micro_batches([2, 2, 2, 2, 2], max_tokens=100, max_rows=2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert micro_batches([2, 2, 2], max_tokens=0, max_rows=0) == [range(0, 3)]
    used = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert row_lengths(used) == [4, 1, 1]


class _KeepGradients:
    """Stands in for the optimizer: keeps the accumulated gradients instead of stepping."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters()}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def _step_gradients(model_dir, **train):
    trainer = Trainer(load_model(model_dir), TrainConfig(row_tokens=8, **train), LossConfig(tau=0.1), pad_id=0)
    trainer.optimizer = _KeepGradients(trainer.model)
    trajectories = _trajectories()
    batch = build_train_batch(trajectories, torch.linspace(-1, 1, 8), row_tokens=8, pad_id=0)
    metrics = trainer.step(batch)
    return trainer.optimizer.grads, metrics


def test_token_budget_and_checkpointing_give_the_same_gradients(tiny_model_dir):
    whole, whole_m = _step_gradients(tiny_model_dir)  # 8 rows of 7 tokens in one forward
    for train in ({"max_tokens_per_micro_batch": 16}, {"micro_batch_rows": 3},  # 2 and 3 rows at a time
                  {"gradient_checkpointing": True, "max_tokens_per_micro_batch": 24},
                  {"logprob_chunk_tokens": 0}):
        grads, m = _step_gradients(tiny_model_dir, **train)
        assert m["loss/opmd"] == pytest.approx(whole_m["loss/opmd"], abs=1e-6), train
        assert m["train/entropy"] == pytest.approx(whole_m["train/entropy"], abs=1e-5) if train.get(
            "logprob_chunk_tokens", 1) else "train/entropy" not in m
        for name, grad in whole.items():
            torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-6, msg=f"{train} {name}")


def test_gradient_checkpointing_is_switched_on(tiny_model_dir):
    trainer = Trainer(load_model(tiny_model_dir), TrainConfig(gradient_checkpointing=True), LossConfig(), pad_id=0)
    assert trainer.model.is_gradient_checkpointing


def test_entropy_metric_is_a_per_token_entropy(tiny_model_dir):
    trainer = Trainer(load_model(tiny_model_dir), TrainConfig(mini_batch_size=8), LossConfig(), pad_id=0,
                      device="cpu")
    metrics = trainer.train_iteration(_trajectories())
    vocabulary = trainer.model.config.vocab_size
    assert 0 < metrics["train/entropy"] <= math.log(vocabulary) + 1e-6


def test_bf16_masters_keep_small_updates(tiny_model_dir):
    # why float32 masters (longrl.device): a bf16 weight of 0.5 has a unit of 2^-8 = 0.0039, so an
    # AdamW step of lr = 1e-5 rounds away; the float32 master keeps it
    half = torch.tensor(0.5, dtype=torch.bfloat16)
    assert half + 1e-5 == half
    model = load_model(tiny_model_dir, "bfloat16")
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model, TrainConfig(lr=1e-5, mini_batch_size=8), LossConfig(), pad_id=0, dtype="bfloat16")
    metrics = trainer.train_iteration(_trajectories())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert math.isfinite(metrics["loss/opmd"])
    # AdamW's first step moves every weight with a gradient by ~lr (here: lr·g/(|g| + eps) ≤ lr)
    moved = [(p.detach() - before[n]).abs().max().item() for n, p in trainer.model.named_parameters()]
    assert max(moved) == pytest.approx(1e-5, rel=0.05)
    with pytest.raises(ValueError, match="float16"):
        Trainer(load_model(tiny_model_dir), TrainConfig(), LossConfig(), pad_id=0, dtype="float16")
