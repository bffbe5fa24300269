"""Vision-language policies: the tiny Qwen2-VL, prompts with images, generation, continuation,
log-probs and the weight-sync probe (`longrl.vision`)."""

import io

import pytest
import torch
from PIL import Image

from longrl.buffer import ReplayBuffer
from longrl.config import PartialRolloutConfig, RolloutConfig
from longrl.data.images import load_image
from longrl.errors import DataError, ModelError
from longrl.logprobs import policy_logprobs
from longrl.models import encode_prompt, load_model, load_policy, load_tokenizer, token_logprobs
from longrl.rollout.engine import HFEngine, make_engine
from longrl.rollout.partial import partial_rollout
from longrl.rollout.sample import sample
from longrl.types import GenerationRequest, Prompt, SamplingParams
from longrl.vision import (VisionInputs, build_tiny_vlm, build_vision_tokenizer, encode_vision_prompt,
                           is_vision_model, load_processor, save_tiny_vlm, vision_logprobs)
from longrl.weight_sync import WeightSync, WeightSyncError, probe_sequence

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    # init_std 0.2: greedy outputs then depend on the image (at 0.02 they repeat one token)
    return save_tiny_vlm(tmp_path_factory.mktemp("vlm"), seed=0, init_std=0.2)


@pytest.fixture(scope="module")
def vlm(vlm_dir):
    model, tok = load_policy(vlm_dir)
    return model, tok, load_processor(vlm_dir)


def _red():  # 112x112: resized to nothing, 8x8 patches of 14, merged 2x2 -> 16 image tokens
    return Image.new("RGB", (112, 112), (200, 10, 30))


def _ramp():  # 84 wide, 56 high: 6x4 patches -> 6 image tokens
    image = Image.new("RGB", (84, 56))
    image.putdata([(3 * x, 4 * y, (x * y) % 256) for y in range(56) for x in range(84)])
    return image


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _prompts(tmp_path):
    path = tmp_path / "red.png"
    _red().save(path)
    return [Prompt("red", "colour?", images=[str(path)]),  # a file path
            Prompt("two", "which is bigger?", images=[_png(_ramp()), {"bytes": _png(_red())}])]  # bytes


def test_tiny_vlm_round_trips_through_its_directory(vlm_dir, vlm, tiny_model_dir):
    model, tok, processor = vlm
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration" and is_vision_model(model)
    assert is_vision_model(model.config) and not is_vision_model(load_model(tiny_model_dir))
    built = build_tiny_vlm(build_vision_tokenizer(), seed=0, init_std=0.2)
    saved = dict(model.named_parameters())
    for name, p in built.named_parameters():
        assert torch.equal(p, saved[name]), name
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    config = model.config
    for token, key in [("<|vision_start|>", "vision_start_token_id"), ("<|vision_end|>", "vision_end_token_id"),
                       ("<|image_pad|>", "image_token_id"), ("<|video_pad|>", "video_token_id")]:
        assert tok.convert_tokens_to_ids(token) == getattr(config, key)
    assert len(tok) == model.get_input_embeddings().weight.shape[0] == 266  # 262 tiny + 4 vision tokens
    from transformers import AutoModelForImageTextToText

    assert type(AutoModelForImageTextToText.from_pretrained(vlm_dir)).__name__ == "Qwen2VLForConditionalGeneration"


def test_encode_expands_each_image_to_its_feature_count(vlm, tmp_path):
    _, tok, processor = vlm
    red, two = _prompts(tmp_path)
    ids, mm = encode_vision_prompt(processor, red)
    pad = "<|image_pad|>"
    assert tok.decode(ids) == f"<|user|><|vision_start|>{pad * 16}<|vision_end|>colour?<|end|><|assistant|>"
    assert mm["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert mm["pixel_values"].shape == (64, 3 * 2 * 14 * 14)  # 8x8 patches of 2 frames x 14 x 14 x RGB
    ids, mm = encode_vision_prompt(processor, two)  # images first, in order, then the text
    assert tok.decode(ids) == (f"<|user|><|vision_start|>{pad * 6}<|vision_end|><|vision_start|>{pad * 16}"
                               "<|vision_end|>which is bigger?<|end|><|assistant|>")
    assert mm["image_grid_thw"].tolist() == [[1, 4, 6], [1, 8, 8]] and mm["pixel_values"].shape[0] == 24 + 64
    # messages that place their image parts themselves keep them where they are
    placed = Prompt("p", "x", images=[_ramp()], messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look: "}, {"type": "image"}]}])
    assert tok.decode(encode_vision_prompt(processor, placed)[0]) == (
        f"<|system|>be brief<|end|><|user|>look: <|vision_start|>{pad * 6}<|vision_end|><|end|><|assistant|>")
    # a prompt without images encodes as text does
    assert encode_vision_prompt(processor, Prompt("t", "1+1")) == (encode_prompt(tok, "1+1"), None)


def test_encode_and_generate_errors_name_the_fix(vlm, tiny_model_dir, tmp_path):
    _, tok, processor = vlm
    red, _ = _prompts(tmp_path)
    wrong = Prompt("w", "x", images=[_red()], messages=[
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "x"}]}])
    with pytest.raises(DataError, match=r"prompt 'w': its messages have 2 image parts but it has 1 images"):
        encode_vision_prompt(processor, wrong)
    with pytest.raises(DataError, match=r"prompt 'm', image 0: image file .* does not exist"):
        encode_vision_prompt(processor, Prompt("m", "x", images=[str(tmp_path / "missing.png")]))
    text_tok = load_tokenizer(tiny_model_dir)
    text_engine = HFEngine(load_model(tiny_model_dir), text_tok)
    with pytest.raises(ModelError, match=r"prompt 'red' has 1 image\(s\) but the policy has no vision tower"):
        sample(text_engine, text_tok, [red], 1, GREEDY)
    with pytest.raises(ModelError, match=r"prompt 'red' has images: encode it with longrl.vision"):
        encode_prompt(text_tok, red)
    ids, mm = encode_vision_prompt(processor, red)
    with pytest.raises(ValueError, match=r"request carries images but the engine's model \(Qwen2ForCausalLM\) "
                                         r"has no vision tower"):
        text_engine.generate([GenerationRequest(ids, mm=mm)], GREEDY)
    with pytest.raises(ModelError, match=r"no preprocessor_config.json: it is not a vision-language model"):
        load_processor(tiny_model_dir)
    engine = HFEngine(vlm[0], tok)
    other = encode_vision_prompt(processor, Prompt("o", "x", images=[_ramp()]))[1]  # 6 features, not 16
    with pytest.raises(ValueError, match=r"row 0 has 16 image placeholder tokens in its prompt but its images "
                                         r"give 6 feature vectors"):
        engine.generate([GenerationRequest(ids, mm=other)], GREEDY)


def _right_padded(rows, pad_id):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id)  # [B, T]
    mask = torch.zeros((len(rows), T), dtype=torch.long)  # [B, T]
    for b, r in enumerate(rows):
        ids[b, :len(r)], mask[b, :len(r)] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("chunk_tokens", [7, 0])
def test_logprobs_with_images_equal_the_plain_forward_values_and_grads(vlm, tmp_path, chunk_tokens):
    model, tok, processor = vlm
    model = model.float()
    encoded = [encode_vision_prompt(processor, p) for p in _prompts(tmp_path)]
    answers = [tok("red it is", add_special_tokens=False).input_ids, tok("the 2nd", add_special_tokens=False).input_ids]
    ids, mask = _right_padded([e[0] + a for e, a in zip(encoded, answers)], tok.pad_token_id)  # [2, T]
    mms = [e[1] for e in encoded]
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(0)) * mask  # [2, T]
    temperature = 0.7

    got, _ = vision_logprobs(model, ids, mms, attention_mask=mask, temperature=temperature, chunk_tokens=chunk_tokens)
    (got * weights).sum().backward()
    got_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    logits = model(input_ids=ids, attention_mask=mask,
                   pixel_values=torch.cat([m["pixel_values"] for m in mms]),
                   image_grid_thw=torch.cat([m["image_grid_thw"] for m in mms]),
                   mm_token_type_ids=(ids == model.config.image_token_id).int()).logits  # [2, T, V]
    plain = (logits[:, :-1].float() / temperature).log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    plain = torch.nn.functional.pad(plain, (1, 0))  # [2, T]
    (plain * weights).sum().backward()

    real = mask.bool()
    torch.testing.assert_close(got[real], plain[real], rtol=0, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(got_grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)
    model.zero_grad()
    assert got_grads["model.visual.patch_embed.proj.weight"].abs().sum() > 0  # the vision tower learns too


def test_text_rows_packed_on_a_vlm_stay_apart(vlm):
    model, tok, _ = vlm
    a, b = encode_prompt(tok, "12+34"), encode_prompt(tok, "7")
    packed = torch.tensor([a + b])  # [1, Ta + Tb]
    positions = torch.tensor([list(range(len(a))) + list(range(len(b)))])
    with torch.no_grad():
        together = policy_logprobs(model, packed, positions)[0][0]
        alone = [policy_logprobs(model, torch.tensor([s]), torch.arange(len(s))[None])[0][0] for s in (a, b)]
    torch.testing.assert_close(together[1:len(a)], alone[0][1:], rtol=0, atol=1e-5)
    torch.testing.assert_close(together[len(a) + 1:], alone[1][1:], rtol=0, atol=1e-5)


def test_batched_generation_with_different_images_equals_each_alone(vlm, tmp_path):
    model, tok, processor = vlm
    engine = HFEngine(model, tok, batch_size=8)
    (red_ids, red_mm), (two_ids, two_mm) = [encode_vision_prompt(processor, p) for p in _prompts(tmp_path)]
    text_ids = encode_prompt(tok, "no image here")
    requests = [GenerationRequest(red_ids, mm=red_mm), GenerationRequest(two_ids, mm=two_mm),
                GenerationRequest(text_ids),
                GenerationRequest(red_ids, mm=red_mm),  # the same inputs object: one vision pass for both
                GenerationRequest(two_ids, mm=two_mm, max_new_tokens=3),  # leaves the running batch early
                # a continuation 3x as long: prefilled in its own group
                GenerationRequest(red_ids, prefix_ids=tok("ab" * len(red_ids), add_special_tokens=False).input_ids,
                                  mm=red_mm)]
    together = engine.generate(requests, GREEDY)
    alone = [engine.generate([r], GREEDY)[0] for r in requests]
    for r, c, a in zip(requests, together, alone):
        assert c.token_ids == a.token_ids and len(c.token_ids) > 0
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(a.logprobs), rtol=0, atol=1e-4)
        scored = engine.score([r.prompt_ids + r.prefix_ids + c.token_ids], [len(r.prompt_ids) + len(r.prefix_ids)],
                              mm=[r.mm])[0]
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(scored), rtol=0, atol=1e-4)
    assert together[0].token_ids != together[1].token_ids  # the images matter
    # the positions are transformers' own: its `generate` samples the same greedy tokens
    ids = torch.tensor([two_ids])
    reference = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=two_mm["pixel_values"],
                               image_grid_thw=two_mm["image_grid_thw"],
                               mm_token_type_ids=(ids == model.config.image_token_id).int(),
                               max_new_tokens=GREEDY.max_new_tokens, do_sample=False)
    assert reference[0, len(two_ids):].tolist() == together[1].token_ids


def test_three_segment_continuation_with_images_equals_one_shot_greedy(vlm, tmp_path):
    model, tok, processor = vlm
    engine = HFEngine(model, tok, batch_size=8)
    prompts = _prompts(tmp_path)
    vision = VisionInputs(processor)
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    one_shot = engine.generate([GenerationRequest(vision.prompt_ids(p), mm=vision.mm(p)) for p in prompts], params)
    cfg = PartialRolloutConfig(enabled=True, segment_tokens=10, max_age=5)
    buffer, done = ReplayBuffer(), []
    for version in range(3):  # weights unchanged between iterations
        out, _ = partial_rollout(engine, tok, lambda p: encode_prompt(tok, p), buffer,
                                 lambda n: prompts[:n] if version == 0 else [], cfg, 2, 1, params, version,
                                 vision=vision)
        done += out
    by_prompt = {t.prompt.id: t for t in done}
    assert sorted(by_prompt) == ["red", "two"]
    for p, ref in zip(prompts, one_shot):
        t = by_prompt[p.id]
        assert t.prompt_ids == vision.prompt_ids(p) and t.response_ids == ref.token_ids
        torch.testing.assert_close(torch.tensor(t.response_logprobs), torch.tensor(ref.logprobs), rtol=0, atol=1e-4)
    assert [s.policy_version for s in by_prompt["red"].segments] == [0, 1, 2]  # ran all three segments
    assert one_shot[0].finish_reason == "length" and len(one_shot[0].token_ids) == 30


def test_sample_shares_one_encoding_across_a_prompts_k_samples(vlm, tmp_path):
    model, tok, processor = vlm
    seen = []

    class Recording(HFEngine):
        def generate(self, requests, params):
            seen.extend(requests)
            return super().generate(requests, params)

    red, _ = _prompts(tmp_path)
    trajectories, _ = sample(Recording(model, tok), tok, [red], 3, GREEDY, vision=VisionInputs(processor))
    assert len({id(r.mm) for r in seen}) == 1 and seen[0].mm is not None
    assert len({tuple(t.response_ids) for t in trajectories}) == 1  # greedy: the same answer 3 times


def test_a_sampled_image_token_in_a_response_keeps_its_own_embedding(vlm, tmp_path):
    """Only prompt placeholders take image features: a response holding `<|image_pad|>` (a random
    policy samples it) is generated, continued and scored alike, without a count mismatch."""
    model, tok, processor = vlm
    engine = HFEngine(model, tok, batch_size=8)
    ids, mm = encode_vision_prompt(processor, _prompts(tmp_path)[0])
    pad = model.config.image_token_id
    prefix = [pad, 70, pad, pad]
    (c,) = engine.generate([GenerationRequest(ids, prefix_ids=prefix, mm=mm)], GREEDY)
    seq = torch.tensor([ids + prefix + c.token_ids])  # [1, T]
    with torch.no_grad():
        want = vision_logprobs(model, seq, [mm], prompt_lens=[len(ids)])[0][0, len(ids) + len(prefix):]
    torch.testing.assert_close(torch.tensor(c.logprobs), want, rtol=0, atol=1e-4)
    # scoring the whole response, the image tokens of its prefix included, agrees too
    scored = engine.score([ids + prefix + c.token_ids], [len(ids)], mm=[mm])[0]
    assert len(scored) == len(prefix) + len(c.token_ids)
    torch.testing.assert_close(torch.tensor(scored[len(prefix):]), want, rtol=0, atol=1e-4)


def _perturb_vision_tower(model):
    with torch.no_grad():  # one weight of the vision tower, nothing else
        weight = model.model.visual.blocks[0].mlp.fc1.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)) * 0.2)


def test_sync_check_covers_the_vision_tower(vlm_dir, forgetful):
    model, tok = load_policy(vlm_dir)
    processor = load_processor(vlm_dir)
    engine = make_engine(RolloutConfig(engine="hf", batch_size=8), model, tok, seed=0)
    _perturb_vision_tower(model)
    # a text-only probe cannot see the change: the vision tower is not on its path
    ids, n = probe_sequence(tok)
    text_engine = torch.tensor(engine.score([ids], [n])[0])
    with torch.no_grad():
        text_trainer = token_logprobs(model, torch.tensor([ids]), torch.arange(len(ids))[None])[0, n:]
    assert float((text_engine - text_trainer).abs().max()) < 1e-5
    # the probe with an image does, and a real push makes it pass
    with pytest.raises(WeightSyncError, match=r"differ from the trainer's by .* > tol 0.001 after sync at iteration 4"):
        WeightSync(model, forgetful(engine), tok, tolerance=1e-3, processor=processor)(iteration=4)
    metrics = WeightSync(model, engine, tok, tolerance=1e-4, processor=processor)(iteration=5)
    assert metrics["sync/probe_max_diff"] < 1e-5
    assert torch.equal(engine.model.model.visual.blocks[0].mlp.fc1.weight, model.model.visual.blocks[0].mlp.fc1.weight)
    with pytest.raises(ValueError, match=r"give WeightSync its processor"):
        WeightSync(model, engine, tok)


def test_load_image_is_what_encoding_reads(tmp_path, vlm):
    _, _, processor = vlm
    red, _ = _prompts(tmp_path)  # the same picture as a path and as a PIL image encodes the same
    as_path = encode_vision_prompt(processor, red)
    as_pil = encode_vision_prompt(processor, Prompt("red", "colour?", images=[load_image(red.images[0])]))
    assert as_path[0] == as_pil[0] and torch.equal(as_path[1]["pixel_values"], as_pil[1]["pixel_values"])
