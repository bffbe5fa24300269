"""The trainer as a 2-rank FSDP2 group (gloo, CPU) against the one-process trainer.

One 2-rank session (`group_results`, started once for the module) runs every scenario and saves
what each rank returned; the tests compare it with the one-process trainer run here on the same
model (same seed), the same trajectories and the same configuration.
"""

import dataclasses
import math
import time

import pytest
import torch
import torch.multiprocessing as mp

from longrl.config import LossConfig, TinyModelConfig, TrainConfig
from longrl.lora import apply_lora
from longrl.tiny import build_char_tokenizer, build_tiny_model
from longrl.packing import split_by_tokens
from longrl.trainer import Trainer
from longrl.types import Prompt, Segment, Trajectory

TINY = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
WORLD = 2
TIMEOUT_S = 240

# A: one step, gradients kept (no clipping, no step); micro-batches of one row: 3 on rank 0, 4 on
# rank 1, so rank 0 runs one empty micro-batch
GRADS = TrainConfig(mini_batch_size=8, row_tokens=12, micro_batch_rows=1, grad_clip=0.0, optimizer_reset="none")
# B: mini-batches of 7 and 1 sequences (rank 1 gets none in the second), weights, recomputed π_θi
METRICS = TrainConfig(lr=1e-2, mini_batch_size=7, row_tokens=12, micro_batch_rows=1, recompute_old_logprobs=True)
# C: one step per iteration with the optimizer kept, for the checkpoint round trip. AdamW's first
# step is lr·g/(|g| + 1e-8): for a weight whose gradient is near 0 it magnifies the summation-order
# noise of the gradient by up to lr/1e-8; at lr = 1e-2 a few weights of 10^4 moved 4e-6 apart
STATE = TrainConfig(lr=1e-3, mini_batch_size=8, row_tokens=16, micro_batch_rows=2, optimizer_reset="none")
# D: B with activation checkpointing and FSDP2's CPU offload (a plain CPU copy on a CPU mesh)
CHECKPOINTED = dataclasses.replace(METRICS, gradient_checkpointing=True)
LOSS = LossConfig(tau=0.1, level="token")
PROBE = torch.tensor([[3, 23, 4, 20, 21, 22, 5]])  # [1, T] one sequence, as the weight-sync probe


def _trajectories() -> list[Trajectory]:
    """Two prompts x 4 samples, responses of 3 to 12 tokens: the ranks get uneven rows."""
    prompts = [Prompt(id=f"p{i}", text=f"{i}+{i}", answer=str(2 * i)) for i in range(2)]
    out = []
    for i, p in enumerate(prompts):
        for j in range(4):
            response = [20 + j, 21, 22 + (j % 2)] + [30 + i] * ((2 + i) * j)
            logprobs = [-0.5 - 0.1 * k for k in range(len(response))]
            out.append(Trajectory(prompt=p, sample_index=j, prompt_ids=[3, 23 + j, 4],
                                  segments=[Segment(response, logprobs, 0)], finish_reason="stop",
                                  reward=float(j % 2)))
    return out


def _weights(trajectories):
    """Per-token loss weights with some zeros (tokens outside the loss)."""
    return [[0.0 if k == 1 else 1.0 + 0.25 * k for k in range(t.num_response_tokens)] for t in trajectories]


def _trainer(train: TrainConfig, distributed: bool, cpu_offload: bool = False, lora: bool = False) -> Trainer:
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TINY, tokenizer, seed=0)
    if lora:
        torch.manual_seed(1)  # the adapters' A matrices are drawn from the process's RNG
        model = apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=["q_proj", "v_proj"])
    return Trainer(model, train, LOSS, pad_id=tokenizer.pad_token_id, distributed=distributed,
                   cpu_offload=cpu_offload)


class _KeepGradients:
    """Stands in for the optimizer: keeps the full accumulated gradients instead of stepping."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        full = lambda g: g.full_tensor() if hasattr(g, "full_tensor") else g  # noqa: E731  gathers the shards
        self.grads = {n: full(p.grad).clone() for n, p in self.model.named_parameters()}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def _gradients(distributed: bool) -> tuple[dict, dict]:
    trainer = _trainer(GRADS, distributed)
    trainer.optimizer = _KeepGradients(trainer.model)
    metrics = trainer.train_iteration(_trajectories())
    return trainer.optimizer.grads, metrics


def _metrics_run(distributed: bool, out_dir=None, train: TrainConfig = METRICS, cpu_offload=False) -> dict:
    trainer = _trainer(train, distributed, cpu_offload)
    trajectories = _trajectories()
    metrics = trainer.train_iteration(trajectories, _weights(trajectories))
    result = {"metrics": metrics, "weights": trainer.full_state_dict(),
              "recomputed": [s.logprobs for t in trajectories for s in t.segments],
              "logprobs": trainer.current_logprobs(_trajectories()),
              "probe": trainer.token_logprobs(PROBE, torch.arange(PROBE.shape[1])[None], temperature=1.0)}
    if out_dir is not None:
        trainer.save_pretrained(out_dir / "hf", build_char_tokenizer())
    return result


def _lora_run(distributed: bool) -> dict:
    """E: two iterations of B's settings training LoRA adapters only; the merged weights."""
    trainer = _trainer(METRICS, distributed, lora=True)
    metrics = [trainer.train_iteration(_trajectories()) for _ in range(2)]
    return {"metrics": metrics, "weights": trainer.full_state_dict()}


def _state_run(distributed: bool, out_dir) -> dict:
    """One step, save, a second step, restore, the second step again."""
    trainer = _trainer(STATE, distributed)
    trainer.train_iteration(_trajectories())
    one_step = trainer.full_state_dict()
    trainer.save_state(out_dir / "ckpt")
    rng = trainer.rng.getstate()
    trainer.train_iteration(_trajectories())
    two_steps = trainer.full_state_dict()
    trainer.load_state(out_dir / "ckpt")
    trainer.rng.setstate(rng)
    restored = trainer.full_state_dict()
    trainer.train_iteration(_trajectories())
    return {"one_step": one_step, "two_steps": two_steps, "restored": restored,
            "two_steps_again": trainer.full_state_dict()}


def _rank_main(rank: int, store: str, out_dir) -> None:
    from longrl.distributed import init_group

    torch.set_num_threads(1)
    init_group("gloo", rank, WORLD, f"file://{store}", timeout_s=TIMEOUT_S)
    grads, grad_metrics = _gradients(distributed=True)
    result = {"grads": grads, "grad_metrics": grad_metrics, **_metrics_run(True, out_dir),
              "state": _state_run(True, out_dir),
              "checkpointed": _metrics_run(True, train=CHECKPOINTED, cpu_offload=True)["metrics"],
              "lora": _lora_run(True)}
    torch.save(result, out_dir / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def group_results(tmp_path_factory):
    """What each rank of the 2-rank group returned, [rank 0, rank 1], and the output folder."""
    out = tmp_path_factory.mktemp("fsdp")
    context = mp.spawn(_rank_main, args=(str(out / "store"), out), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD}-rank group did not finish within {TIMEOUT_S} s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], out


def _assert_same_weights(got: dict, want: dict, atol: float) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=atol, msg=name)


def test_split_by_tokens_by_hand():
    # longest first to the lighter part: 9 -> 0, 7 -> 1, 5 -> 1 (7 < 9), 3 -> 0 (9 < 12), 1 -> 0 (12 = 12)
    assert split_by_tokens([3, 9, 5, 7, 1], 2) == [[0, 1, 4], [2, 3]]
    assert split_by_tokens([4], 2) == [[0], []]  # fewer sequences than ranks: one rank gets none
    assert split_by_tokens([2, 2, 2], 1) == [[0, 1, 2]]


def test_the_metrics_run_leaves_rank_1_without_a_sequence():
    lengths = [len(t.prompt_ids) + t.num_response_tokens for t in _trajectories()]
    assert METRICS.mini_batch_size == 7 and len(lengths) == 8  # the second mini-batch holds one sequence
    assert split_by_tokens(lengths[:1], WORLD)[1] == []


def test_loss_and_gradients_match_one_process(group_results):
    ranks, _ = group_results
    grads, metrics = _gradients(distributed=False)
    for result in ranks:
        assert result["grad_metrics"]["loss/opmd"] == pytest.approx(metrics["loss/opmd"], abs=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=0, atol=1e-5, msg=name)


def test_parameters_after_one_step_match_one_process(group_results):
    ranks, out = group_results
    want = _state_run(False, out / "single")["one_step"]
    assert ranks[1]["state"]["one_step"] == {}  # the full weights are gathered on rank 0 only
    # A key bias adds the same score to every key of a query, which softmax ignores: its gradient
    # is 0 up to summation-order noise, and AdamW's first step, lr·g/(|g| + 1e-8), turns that noise
    # into moves of up to ±lr. Its gradients are compared in test_loss_and_gradients_match_one_process.
    noise_only = lambda name: name.endswith("k_proj.bias")  # noqa: E731
    got = {k: v for k, v in ranks[0]["state"]["one_step"].items() if not noise_only(k)}
    _assert_same_weights(got, {k: v for k, v in want.items() if not noise_only(k)}, atol=1e-6)
    noise = [k for k in want if noise_only(k)]
    assert noise  # ...but they moved no further than one step of ±lr apart
    _assert_same_weights({k: ranks[0]["state"]["one_step"][k] for k in noise}, {k: want[k] for k in noise},
                         atol=2 * STATE.lr * 1.001)


def test_metrics_match_one_process_with_an_empty_rank(group_results):
    ranks, _ = group_results
    want = _metrics_run(False)["metrics"]
    assert want["train/steps"] == 2
    for result in ranks:
        got = result["metrics"]
        assert got.keys() == want.keys()
        for key, value in want.items():
            if not key.startswith("perf/"):  # wall time
                assert got[key] == pytest.approx(value, abs=1e-5), key
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # perf/ included: reduced over ranks


def test_checkpointing_and_cpu_offload_metrics_match_one_process(group_results):
    ranks, _ = group_results
    want = _metrics_run(False, train=CHECKPOINTED)["metrics"]
    for result in ranks:
        for key, value in want.items():
            if not key.startswith("perf/"):
                assert result["checkpointed"][key] == pytest.approx(value, abs=1e-5), key


def test_full_state_dict_and_save_pretrained_round_trip(group_results):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ranks, out = group_results
    want = _metrics_run(False)["weights"]
    _assert_same_weights(ranks[0]["weights"], want, atol=1e-5)
    loaded = AutoModelForCausalLM.from_pretrained(out / "hf").state_dict()
    _assert_same_weights({k: v for k, v in loaded.items()}, ranks[0]["weights"], atol=0)
    assert loaded["lm_head.weight"].data_ptr() == loaded["model.embed_tokens.weight"].data_ptr()  # still tied
    assert "lm_head.weight" not in load_file(out / "hf" / "model.safetensors")  # stored once, as HF does


def test_save_state_and_load_state_restore_model_and_optimizer(group_results):
    ranks, _ = group_results
    state = ranks[0]["state"]
    assert max((state["two_steps"][k] - v).abs().max().item() for k, v in state["one_step"].items()) > 1e-4
    _assert_same_weights(state["restored"], state["one_step"], atol=0)
    # the restored AdamW moments make the second step exactly the first run's second step
    _assert_same_weights(state["two_steps_again"], state["two_steps"], atol=0)


def test_current_logprobs_match_one_process(group_results):
    ranks, _ = group_results
    want = _metrics_run(False)
    for result in ranks:
        assert len(result["recomputed"]) == len(want["recomputed"])  # π_θi recomputed inside train_iteration
        for got, value in zip(result["recomputed"], want["recomputed"]):
            assert got == pytest.approx(value, abs=1e-5)
        torch.testing.assert_close(result["probe"], want["probe"], rtol=0, atol=1e-5)
        assert result["probe"].shape == PROBE.shape and result["probe"][0, 0] == 0
        for got, value in zip(result["logprobs"], want["logprobs"]):
            assert got.device.type == "cpu" and got.shape == value.shape
            torch.testing.assert_close(got, value, rtol=0, atol=1e-5)


def test_save_state_and_load_state_in_one_process(tmp_path):
    state = _state_run(False, tmp_path)
    _assert_same_weights(state["restored"], state["one_step"], atol=0)
    _assert_same_weights(state["two_steps_again"], state["two_steps"], atol=0)
    assert math.isfinite(sum(v.sum().item() for v in state["two_steps"].values()))


def test_lora_adapters_train_under_fsdp2_as_in_one_process(group_results):
    ranks, _ = group_results
    want = _lora_run(False)
    for result in ranks:
        for got, expected in zip(result["lora"]["metrics"], want["metrics"]):
            assert got["train/trainable_params"] == expected["train/trainable_params"] < 10_000  # adapters only
            for key, value in expected.items():
                if not key.startswith("perf/"):
                    assert got[key] == pytest.approx(value, abs=1e-5), key
    assert ranks[1]["lora"]["weights"] == {}
    got = ranks[0]["lora"]["weights"]  # merged into the plain model's names, as the engines take them
    assert not any("lora_" in k or "base_layer" in k for k in got)
    _assert_same_weights(got, want["weights"], atol=1e-6)
    start = _trainer(METRICS, False).full_state_dict()
    moved = {k for k in start if not torch.equal(start[k], got[k])}
    assert moved and all("q_proj.weight" in k or "v_proj.weight" in k for k in moved)
