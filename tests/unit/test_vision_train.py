"""Training on trajectories with images (`trainer.py`, `sft.py`, `loop.check_images`): each loss
on image rows equals the loss written out by hand from the model's own plain forward (pixel
values through `Qwen2VLForConditionalGeneration.forward`), values and gradients; mixed text and
image batches; SFT examples with images."""

import math

import pytest
import torch

from longrl.config import LossConfig, ModelConfig, RunConfig, TrainConfig, WorldConfig
from longrl.data.worlds import World
from longrl.errors import ConfigError, ModelError
from longrl.models import encode_prompt
from longrl.sft import step_loss, world_example
from longrl.packing import build_train_batch
from longrl.trainer import Trainer
from longrl.types import Prompt, Segment, Trajectory
from longrl.vision import VisionInputs, build_tiny_processor, build_tiny_vlm, build_vision_tokenizer

TAU, TEMPERATURE = 0.1, 0.7


@pytest.fixture(scope="module")
def vlm():
    tok = build_vision_tokenizer()
    # init_std 0.2: log-probs that differ from token to token and from image to image
    model = build_tiny_vlm(tok, seed=0, init_std=0.2)
    return model, tok, VisionInputs(build_tiny_processor(tok))


@pytest.fixture(scope="module")
def image_prompts():
    # add_img: a 224x56 image (16 image tokens); count_img: 112x112 (16 image tokens)
    world = World(WorldConfig(tasks=["add_img", "count_img"], min_level=2, max_level=2, eval_size=8))
    by_task = {}
    for p in world.eval_prompts():
        by_task.setdefault(p.tags[0], p)
    return [by_task["task:add_img"], by_task["task:count_img"]]


class _KeepGradients:
    """Stands in for the optimizer: keeps the accumulated gradients instead of stepping."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def _trajectories(tok, vision, prompts, k=2):
    """k trajectories per prompt, responses of different lengths, made-up sampling log-probs."""
    out = []
    for i, p in enumerate(prompts):
        ids = vision.prompt_ids(p) if p.images else encode_prompt(tok, p)
        for j in range(k):
            response = tok(f"{i}{j}+{'7' * (j + 2 * i)}=9", add_special_tokens=False).input_ids + [tok.eos_token_id]
            old = [-1.0 - 0.1 * t for t in range(len(response))]
            out.append(Trajectory(p, j, ids, [Segment(response, old, 0)], "stop", reward=float((i + j) % 2)))
    return out


def _plain_logprobs(model, t: Trajectory, vision, mm=None, temperature=TEMPERATURE) -> torch.Tensor:
    """The response log-probs of one trajectory alone from the model's own forward (its prompt's
    image inputs from `vision`, or `mm` when given)."""
    ids = torch.tensor([t.prompt_ids + t.response_ids])  # [1, T]
    mm = mm if mm is not None else vision.mm(t.prompt) if t.prompt.images else None
    if mm is not None:
        logits = model(input_ids=ids, pixel_values=mm["pixel_values"], image_grid_thw=mm["image_grid_thw"],
                       mm_token_type_ids=(ids == model.config.image_token_id).int()).logits  # [1, T, V]
    else:
        logits = model(input_ids=ids).logits  # [1, T, V]
    logp = (logits[0, :-1].float() / temperature).log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return logp[len(t.prompt_ids) - 1:]  # [n_response]: targets after the prompt


def _by_hand(kind, model, trajectories, advantages, vision, weights=None):
    """The loss of `kind` over `trajectories`, written out per sequence (losses.py's formulas)."""
    per_seq = []
    for j, t in enumerate(trajectories):
        logp = _plain_logprobs(model, t, vision)  # [n]
        w = torch.ones_like(logp) if weights is None else torch.tensor(weights[j])  # [n]
        keep = w > 0
        ratio = logp - torch.tensor(t.response_logprobs)  # log π_θ/π_θi per token
        a = advantages[j]
        if kind == "opmd":  # token level: w_t (a - τ ρ_t)² / 2τ, mean over the loss tokens
            terms = w * (a - TAU * ratio) ** 2 / (2 * TAU)
        elif kind == "grpo":  # -min(ρ a, clip(ρ, 0.8, 1.2) a)
            rho = ratio.exp()
            terms = -w * torch.minimum(rho * a, rho.clamp(0.8, 1.2) * a)
        else:  # rest: -log π on the kept responses (a = 1), 0 on the others (a = 0)
            terms = -w * logp * a
        per_seq.append(terms[keep].mean())
    return torch.stack(per_seq).mean()


@pytest.mark.parametrize("kind", ["opmd", "grpo", "rest"])
def test_a_step_on_image_rows_is_the_loss_by_hand_from_the_plain_forward(vlm, image_prompts, kind):
    model, tok, vision = vlm
    trajectories = _trajectories(tok, vision, image_prompts)  # 2 prompts x 2 samples, all with images
    advantages = torch.tensor([1.0, 0.0, 0.0, 1.0] if kind == "rest" else [0.5, -0.5, -0.25, 0.25])
    # partial-rollout weights: the first token of trajectory 1 outside the loss, others weighted
    weights = [[1.0] * t.num_response_tokens for t in trajectories]
    weights[1][0], weights[2][1] = 0.0, 0.5
    mm = [vision.mm(t.prompt) for t in trajectories]
    batch = build_train_batch(trajectories, advantages, 64, tok.pad_token_id, weights, mm)
    assert batch.input_ids.shape[0] == 4 and batch.prompt_lens == [len(t.prompt_ids) for t in trajectories]
    assert batch.mm[0] is batch.mm[1] is mm[0]  # a prompt's k samples share one image-inputs object

    trainer = Trainer(model, TrainConfig(row_tokens=64, grad_clip=0.0), LossConfig(tau=TAU, kind=kind),
                      tok.pad_token_id, temperature=TEMPERATURE, vision=vision)
    trainer.optimizer = _KeepGradients(trainer.model)
    metrics = trainer.step(batch)
    got = trainer.optimizer.grads

    expected = _by_hand(kind, model, trajectories, advantages, vision, weights)
    assert metrics[f"loss/{kind}"] == pytest.approx(expected.item(), abs=1e-5)
    expected.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert got["model.visual.patch_embed.proj.weight"].abs().sum() > 0  # the vision tower is trained
    model.zero_grad(set_to_none=True)


def test_mixed_text_and_image_batch_by_hand_and_in_micro_batches(vlm, image_prompts):
    model, tok, vision = vlm
    text = [Prompt("t0", "12+34"), Prompt("t1", "5+6")]
    # interleaved: image, text, image, text prompts (2 samples each)
    trajectories = _trajectories(tok, vision, [image_prompts[0], text[0], image_prompts[1], text[1]])
    advantages = torch.linspace(-1, 1, 8)
    mm = [vision.mm(t.prompt) if t.prompt.images else None for t in trajectories]
    batch = build_train_batch(trajectories, advantages, 256, tok.pad_token_id, mm=mm)
    # text sequences packed into one row first, then one row per image sequence, right-padded
    image_js = [0, 1, 4, 5]
    assert batch.input_ids.shape[0] == 1 + 4
    assert batch.mm[0] is None and batch.mm[1:] == [mm[j] for j in image_js]
    assert batch.prompt_lens == [0] + [len(trajectories[j].prompt_ids) for j in image_js]
    assert set(batch.seq_ids[0].unique().tolist()) == {-1, 2, 3, 6, 7}  # the text trajectories' indices
    for row, j in enumerate(image_js, start=1):
        n = len(trajectories[j].prompt_ids) + trajectories[j].num_response_tokens
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
        assert batch.input_ids[row, :n].tolist() == trajectories[j].prompt_ids + trajectories[j].response_ids
        assert set(batch.seq_ids[row].unique().tolist()) == {-1, j}
    assert batch.attention_mask[0].sum() == 0

    expected = _by_hand("opmd", model, trajectories, advantages, vision)
    expected.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    for train in ({}, {"micro_batch_rows": 1}, {"max_tokens_per_micro_batch": 120}, {"logprob_chunk_tokens": 0}):
        trainer = Trainer(model, TrainConfig(row_tokens=256, grad_clip=0.0, **train), LossConfig(tau=TAU),
                          tok.pad_token_id, temperature=TEMPERATURE, vision=vision)
        trainer.optimizer = _KeepGradients(trainer.model)
        metrics = trainer.step(batch)
        assert metrics["loss/opmd"] == pytest.approx(expected.item(), abs=1e-5), train
        for name, grad in want.items():
            torch.testing.assert_close(trainer.optimizer.grads[name], grad, rtol=1e-4, atol=1e-5, msg=f"{train} {name}")


def test_current_and_recomputed_logprobs_of_a_mixed_list(vlm, image_prompts):
    model, tok, vision = vlm
    trajectories = _trajectories(tok, vision, [Prompt("t0", "12+34"), *image_prompts], k=2)
    trainer = Trainer(model, TrainConfig(row_tokens=64, micro_batch_rows=3), LossConfig(tau=TAU), tok.pad_token_id,
                      temperature=TEMPERATURE, vision=vision)
    scored = trainer.current_logprobs(trajectories)
    with torch.no_grad():
        for t, got in zip(trajectories, scored):
            torch.testing.assert_close(got, _plain_logprobs(model, t, vision), rtol=0, atol=1e-5)
    largest = trainer.recompute_logprobs(trajectories)
    assert largest == pytest.approx(max((s - torch.tensor([-1.0 - 0.1 * i for i in range(len(s))])).abs().max().item()
                                        for s in scored), abs=1e-6)
    torch.testing.assert_close(torch.tensor(trajectories[3].response_logprobs), scored[3], rtol=0, atol=1e-7)


def test_a_training_iteration_on_images_moves_toward_the_rewarded_response(vlm, image_prompts):
    _, tok, vision = vlm
    model = build_tiny_vlm(tok, seed=1, init_std=0.2)  # its own copy: this test changes the weights
    trajectories = _trajectories(tok, vision, image_prompts[:1], k=2)  # sample 1 rewarded, sample 0 not
    trainer = Trainer(model, TrainConfig(lr=1e-2, mini_batch_size=2, epochs=2, recompute_old_logprobs=True),
                      LossConfig(tau=TAU), tok.pad_token_id, temperature=TEMPERATURE, vision=vision)
    before = trainer.current_logprobs(trajectories)
    metrics = trainer.train_iteration(trajectories)
    after = trainer.current_logprobs(trajectories)
    assert metrics["train/steps"] == 2 and math.isfinite(metrics["loss/opmd"])
    assert after[1].sum() > before[1].sum() + 0.5 and after[0].sum() < before[0].sum() - 0.5


def test_image_trajectories_without_vision_inputs_name_the_fix(vlm, image_prompts):
    model, tok, vision = vlm
    trajectories = _trajectories(tok, vision, image_prompts[:1])
    trainer = Trainer(model, TrainConfig(), LossConfig(), tok.pad_token_id)
    with pytest.raises(ModelError, match=r"prompt 'add_img:.*' has 1 image\(s\) but the policy has no vision tower"):
        trainer.train_iteration(trajectories)


def test_sft_examples_with_images(vlm, image_prompts):
    model, tok, vision = vlm
    add = image_prompts[0]
    ids, mask, mm = world_example(tok, add, vision=vision)
    n = len(vision.prompt_ids(add))
    assert ids[:n] == vision.prompt_ids(add) and mm is vision.mm(add)
    assert tok.decode(ids[:n]).count("<|image_pad|>") == 16 and mm["image_grid_thw"].tolist() == [[1, 4, 16]]
    assert tok.decode(ids[n:-1]) == add.meta["trace"] and ids[-1] == tok.eos_token_id
    assert mask == [0.0] * n + [1.0] * (len(ids) - n)
    ids, _, _ = world_example(tok, add, direct=True, vision=vision)
    assert tok.decode(ids[n:-1]) == f"A: {add.answer}"
    text = World(WorldConfig(tasks=["add"], eval_size=1)).eval_prompts()[0]
    assert world_example(tok, text, vision=vision)[2] is None
    with pytest.raises(ModelError, match=r"prompt 'add_img:.*' has 1 image\(s\) but the policy has no vision"):
        world_example(tok, add)

    # the step's loss: mean NLL over the trace tokens of all examples, text packed, images one per row
    examples = [world_example(tok, p, direct=d, vision=vision) for p, d in
                [(image_prompts[0], False), (text, False), (image_prompts[1], True)]]
    got = step_loss(model, examples, 256, tok.pad_token_id)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask, mm in examples:
            n = mask.index(1.0)
            logp = _plain_logprobs(model, Trajectory(text, 0, ids[:n], [Segment(ids[n:], [], 0)]), None, mm, 1.0)
            total, count = total + logp.sum().item(), count + len(logp)
    assert got.item() == pytest.approx(-total / count, abs=1e-5)


def test_setup_refuses_images_it_cannot_take(image_prompts, tiny_model_dir):
    from longrl.loop import check_images, setup

    with pytest.raises(ModelError, match=r"prompt 'add_img:.*' \(source 'world'\) has 1 image\(s\), but model "
                                         r"'.*' has no vision tower"):
        setup(RunConfig(model=ModelConfig(path=str(tiny_model_dir)),
                        world=WorldConfig(tasks=["add", "add_img"], train_size=50, eval_size=10)))
    vision = object()  # a vision-language model's inputs: the engine or cluster still refuse
    with pytest.raises(ConfigError, match=r'rollout.engine = "vllm" does not take images yet; set '
                                          r'rollout.engine = "hf"'):
        check_images(image_prompts, vision, "m", "vllm")
    with pytest.raises(ConfigError, match=r"cluster.enabled: the FSDP2 trainer group does not take images yet"):
        check_images(image_prompts, vision, "m", "hf", cluster=True)
    check_images([Prompt("t", "1+1")], None, "m", "vllm")  # text prompts: nothing to refuse


def test_the_vision_configs_load_as_their_jobs():
    from pathlib import Path

    from longrl.config import SFTConfig, load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    sft = load_config(SFTConfig, root / "vision_sft.toml")
    rl = load_config(RunConfig, root / "vision_rl.toml")
    assert sft.tiny.vision and sft.world.direct_fraction == 0.5
    assert sft.world.tasks == rl.world.tasks == ["add_img", "count_img", "text_img"]
    assert (sft.world.min_level, sft.world.max_level) == (rl.world.min_level, rl.world.max_level) == (2, 3)
    assert rl.model.path == f"{sft.out_dir}/{sft.name}/final" and rl.rollout.engine == "hf"
