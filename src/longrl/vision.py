"""Vision-language policies (issue 18, model side): a tiny Qwen2-VL, prompts with images, 3-D
rotary positions, and per-token log-probs of sequences that hold images.

The family is Qwen2-VL's (Qwen2-VL, Qwen2.5-VL): a vision tower turns each image into
grid_t·grid_h·grid_w / merge² feature vectors, and the prompt holds that many `<|image_pad|>`
placeholder tokens, whose embeddings are replaced by the features. Positions are 3-D ("M-RoPE"):
a text token has the same index on the (temporal, height, width) axes; an image's tokens take
their grid coordinates, offset by the text before them, and the text after an image resumes at
start + max(grid_h, grid_w) / merge, which is fewer positions than the image has tokens. So a
row's last position is its token count + `rope_delta` (≤ 0), and every later token, sampled or
scored, sits at (text index + rope_delta) on all three axes.

How longrl computes them: the model's own `get_rope_index` over the whole context (prompt and any
earlier response segments), with the image placeholders marked from the prompt only, then
explicit positions for every forward. Position tensors are [4, B, L]: the plain text index first
(transformers builds the attention mask and flash-attention's packing from it), then the three
M-RoPE axes. Continuing a response therefore gives the tokens a one-shot generation gives.

Placeholders count only inside the prompt: a response that happens to sample `<|image_pad|>`
keeps that token's own embedding, in generation, scoring and training alike (the model's plain
forward would instead try to fill it with image features and fail).

Not covered: videos; vision families with other placeholder or position schemes (LLaVA-style
models would need their own `embed_with_images`/positions); several image sequences packed in
one row (one sequence per row, right-padded, for training); the vLLM engine.

Why `VisionProcessor` and not transformers' `Qwen2VLProcessor`: the latter cannot be built
without torchvision (its video half is looked up in a mapping that is a dummy then), and longrl
needs only its image half. `encode_vision_prompt` does that half as `Qwen2VLProcessor` does:
the chat template renders one `<|image_pad|>` per image, which becomes one per feature vector.

Shape legend: B rows, L tokens per row, I images, P image patches (all images), D patch size
(channels · temporal patch · patch²), H hidden size, V vocabulary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from longrl.errors import DataError, ModelError
from longrl.types import Prompt

IMAGE_TOKEN = "<|image_pad|>"
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", IMAGE_TOKEN, "<|video_pad|>"]
# longrl's tiny chat template (`tiny.CHAT_TEMPLATE`) plus transformers' content-parts convention:
# a message's content is a string, or a list of {"type": "image"} and {"type": "text", "text"} parts
VISION_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MultiModal = dict[str, torch.Tensor]  # {"pixel_values": [P, D], "image_grid_thw": [I, 3]}


def is_vision_model(model_or_config) -> bool:
    """True for a model (or its config) with a vision tower."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "vision_config", None) is not None


# ---------------------------------------------------------------------------- the processor

class VisionProcessor:
    """An image processor, a tokenizer and its chat template: what encoding a prompt needs."""

    def __init__(self, image_processor, tokenizer, image_token: str = IMAGE_TOKEN):
        self.image_processor, self.tokenizer, self.image_token = image_processor, tokenizer, image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ModelError(f"the tokenizer has no {image_token!r} token: it is not a vision-language tokenizer")

    def save_pretrained(self, out_dir: str | Path) -> None:
        self.image_processor.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


def load_processor(path: str | Path) -> VisionProcessor:
    """The processor of a vision-language model directory (its image processor and tokenizer)."""
    from transformers import AutoImageProcessor

    from longrl.models import check_model_dir, load_tokenizer

    path = check_model_dir(path)
    if not (path / "preprocessor_config.json").is_file():
        raise ModelError(f"{str(path)!r} has no preprocessor_config.json: it is not a vision-language model "
                         "directory (a prompt with images needs one, e.g. a Qwen2-VL model)")
    return VisionProcessor(AutoImageProcessor.from_pretrained(path), load_tokenizer(path))


# ---------------------------------------------------------------------------- the tiny model

def build_vision_tokenizer():
    """`tiny.build_char_tokenizer` plus Qwen2-VL's vision tokens and a chat template for images."""
    from longrl.tiny import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tokenizer.chat_template = VISION_CHAT_TEMPLATE
    return tokenizer


def _mrope_section(head_dim: int) -> list[int]:
    """Rotary frequency pairs per (temporal, height, width) axis: Qwen2-VL's 1/4, 3/8, 3/8 split."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_tiny_vlm(tokenizer, config=None, seed: int = 0, vision_depth: int = 1, vision_dim: int = 32,
                   vision_heads: int = 2, patch_size: int = 14, init_std: float = 0.02):
    """A random-init Qwen2-VL: a text part of `config`'s shape (a `TinyModelConfig`) and a vision
    tower of `vision_depth` blocks of width `vision_dim`, merging 2x2 patches into one token.

    `init_std` is the weights' initial standard deviation (transformers' default 0.02). At 0.02
    greedy decoding of the tiny model repeats its last prompt token whatever the image; ~0.2
    makes its outputs depend on the image, which tests of image handling need.
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from longrl.config import TinyModelConfig

    config = config or TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in zip(
        ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"), VISION_TOKENS)}
    text = dict(vocab_size=len(tokenizer), hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads,
                intermediate_size=config.intermediate_size, max_position_embeddings=config.max_positions,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": _mrope_section(config.hidden_size // config.num_heads)},
                tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, initializer_range=init_std)
    vision = dict(depth=vision_depth, embed_dim=vision_dim, hidden_size=config.hidden_size, num_heads=vision_heads,
                  mlp_ratio=2, patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2,
                  initializer_range=init_std)
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision,
                                                         tie_word_embeddings=True, **ids))


# pixel normalisation of the tiny processor, per RGB channel: (x - mean) / std with x in [0, 1]
INK_MEAN, INK_STD = [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]  # white -> 0, black -> -2


def build_tiny_processor(tokenizer, patch_size: int = 14, max_pixels: int = 112 * 112,
                         image_mean: Sequence[float] = INK_MEAN, image_std: Sequence[float] = INK_STD
                         ) -> VisionProcessor:
    """Qwen2-VL's image processor (the PIL one: no torchvision needed) with a small pixel budget:
    an image is resized to at most `max_pixels` (a 112x112 image: 8x8 patches, 16 tokens).

    Pixels are normalised so that white is 0 and black -2 (`INK_MEAN`, `INK_STD`), not with
    Qwen2-VL's CLIP statistics, which put white at +1.9. The visual world's images are mostly
    white: with white at 1.9 every blank patch feeds the same large input to the patch embedding
    of a model trained from scratch, Adam's updates grow that constant feature, and the images'
    content becomes a small part of what the text model sees. Measured, 150 SFT steps of
    configs/vision_sft.toml: held-out pass@1 0.18 with CLIP's statistics, 0.33 with these
    (count_img 0.40 -> 0.72).
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    merge = 2
    image_processor = Qwen2VLImageProcessorPil(min_pixels=(patch_size * merge) ** 2, max_pixels=max_pixels,
                                               patch_size=patch_size, merge_size=merge, temporal_patch_size=2,
                                               image_mean=list(image_mean), image_std=list(image_std))
    return VisionProcessor(image_processor, tokenizer)


def save_tiny_vlm(out_dir: str | Path, seed: int = 0, config=None, **model_kwargs) -> Path:
    """Build a tiny Qwen2-VL and its processor and save both as one Hugging Face model directory
    (`models.load_policy` and `load_processor` read it back). `model_kwargs`: `build_tiny_vlm`'s
    vision-tower and `init_std` arguments."""
    tokenizer = build_vision_tokenizer()
    model = build_tiny_vlm(tokenizer, config, seed, **model_kwargs)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    build_tiny_processor(tokenizer, patch_size=model.config.vision_config.patch_size).save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------- prompts

def vision_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """The prompt's chat with one `{"type": "image"}` part per image: as given when its messages
    already hold image parts, else the images first in its last user message, then its text."""
    messages = [dict(m) for m in (prompt.messages or [{"role": "user", "content": prompt.text}])]
    if _image_parts(messages) or not prompt.images:
        return messages
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise DataError(f"prompt {prompt.id!r}: its messages have no user message to put its images in")
    last = messages[users[-1]]
    content = last["content"]
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    last["content"] = [{"type": "image"} for _ in prompt.images] + parts
    return messages


def _image_parts(messages: Sequence[dict[str, Any]]) -> int:
    return sum(isinstance(part, dict) and part.get("type") == "image"
               for m in messages if not isinstance(m.get("content"), str) for part in m.get("content") or [])


def encode_vision_prompt(processor: VisionProcessor, prompt: Prompt) -> tuple[list[int], MultiModal | None]:
    """(prompt token ids, the model's image inputs) of a prompt with images, ready to answer.

    The chat-templated prompt has each image's placeholder expanded to one token per feature
    vector; the inputs are `pixel_values` [P, D] and `image_grid_thw` [I, 3]. A prompt without
    images gives `models.encode_prompt`'s ids and None.
    """
    from longrl.data.images import load_image
    from longrl.models import encode_prompt

    if not prompt.images:
        return encode_prompt(processor.tokenizer, prompt), None
    messages = vision_messages(prompt)
    if (parts := _image_parts(messages)) != len(prompt.images):
        raise DataError(f"prompt {prompt.id!r}: its messages have {parts} image parts but it has "
                        f"{len(prompt.images)} images; give one {{'type': 'image'}} part per image, in order")
    images = [load_image(x, where=f"prompt {prompt.id!r}, image {i}") for i, x in enumerate(prompt.images)]
    text = processor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pieces = text.split(processor.image_token)
    if len(pieces) - 1 != len(images):
        raise DataError(f"prompt {prompt.id!r}: the chat template rendered {len(pieces) - 1} "
                        f"{processor.image_token!r} tokens for {len(images)} images (does the text contain "
                        "that token, or does the template drop image parts?)")
    mm = dict(processor.image_processor(images=images, return_tensors="pt"))
    mm = {"pixel_values": mm["pixel_values"], "image_grid_thw": mm["image_grid_thw"]}  # [P, D], [I, 3]
    merge = processor.image_processor.merge_size
    counts = (mm["image_grid_thw"].prod(-1) // merge ** 2).tolist()
    text = pieces[0] + "".join(processor.image_token * n + piece for n, piece in zip(counts, pieces[1:]))
    return processor.tokenizer(text, add_special_tokens=False).input_ids, mm


class VisionInputs:
    """Each image prompt's (ids, image inputs), encoded once and shared by its k samples, their
    continuations in later iterations, and training.

    Kept for the `capacity` most recently used prompts (pixel values are large: ~24 MB for a
    Qwen2-VL image at its default budget); an evicted or reloaded prompt is encoded again, to the
    same values. Keyed by the Prompt object, which each entry holds so its id stays unique.
    """

    def __init__(self, processor: VisionProcessor, capacity: int = 256):
        self.processor, self.capacity = processor, capacity
        self._cache: OrderedDict[int, tuple[Prompt, list[int], MultiModal | None]] = OrderedDict()

    def encode(self, prompt: Prompt) -> tuple[list[int], MultiModal | None]:
        key = id(prompt)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            self._cache[key] = (prompt, *encode_vision_prompt(self.processor, prompt))
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return self._cache[key][1], self._cache[key][2]

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return self.encode(prompt)[0]

    def mm(self, prompt: Prompt) -> MultiModal | None:
        return self.encode(prompt)[1] if prompt.images else None


def vision_inputs_for(model, path: str | Path) -> VisionInputs | None:
    """The `VisionInputs` of a vision-language `model` loaded from directory `path` (its
    processor, `load_processor`); None for a text model."""
    return VisionInputs(load_processor(path)) if is_vision_model(model) else None


def require_vision(prompt: Prompt, vision: VisionInputs | None) -> None:
    """A clear error for a prompt with images on a path with no vision-language model."""
    if prompt.images and vision is None:
        raise ModelError(f"prompt {prompt.id!r} has {len(prompt.images)} image(s) but the policy has no vision "
                         "tower (or no processor was given): use a vision-language model (e.g. Qwen2-VL) and pass "
                         "vision=VisionInputs(longrl.vision.load_processor(model_dir)), or drop the images")


# ---------------------------------------------------------------------------- model inputs

def placeholder_mask(model, input_ids: torch.Tensor, starts: Sequence[int], ends: Sequence[int]) -> torch.Tensor:
    """[B, L] bool: the image placeholder tokens of each row's prompt, columns [starts[b], ends[b])."""
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)[None]  # [1, L]
    starts = torch.tensor(list(starts), device=input_ids.device)[:, None]  # [B, 1]
    ends = torch.tensor(list(ends), device=input_ids.device)[:, None]  # [B, 1]
    return (input_ids == model.config.image_token_id) & (columns >= starts) & (columns < ends)


def _row_features(model, mms: Sequence[MultiModal | None]) -> list[torch.Tensor | None]:
    """Each row's image features [n_b, H]: the vision tower runs once per distinct inputs object
    (the k samples of a prompt share theirs), and once in all."""
    distinct: dict[int, MultiModal] = {id(m): m for m in mms if m is not None}
    if not distinct:
        return [None] * len(mms)
    pixels = torch.cat([m["pixel_values"] for m in distinct.values()])  # [P, D]
    grids = torch.cat([m["image_grid_thw"] for m in distinct.values()])  # [I, 3]
    device = model.get_input_embeddings().weight.device
    out = model.get_image_features(pixels.to(device), grids.to(device))
    per_image = list(getattr(out, "pooler_output", out))  # I x [tokens_i, H]
    by_key, at = {}, 0
    for key, m in distinct.items():
        n = len(m["image_grid_thw"])
        by_key[key] = torch.cat(per_image[at:at + n])  # [n_b, H]
        at += n
    return [None if m is None else by_key[id(m)] for m in mms]


def embed_with_images(model, input_ids: torch.Tensor, image_mask: torch.Tensor,
                      mms: Sequence[MultiModal | None]) -> torch.Tensor:
    """[B, L, H] token embeddings, each row's image features in place of its placeholders."""
    embeds = model.get_input_embeddings()(input_ids)  # [B, L, H]
    features = _row_features(model, mms)
    counts = image_mask.sum(-1).tolist()
    for row, (f, n) in enumerate(zip(features, counts)):
        if (0 if f is None else len(f)) != n:
            raise ValueError(f"row {row} has {n} image placeholder tokens in its prompt but its images give "
                             f"{0 if f is None else len(f)} feature vectors: its multimodal inputs are not this "
                             "prompt's (encode prompt and images together with `encode_vision_prompt`)")
    present = [f for f in features if f is not None]
    if not present:
        return embeds
    return embeds.masked_scatter(image_mask[..., None], torch.cat(present).to(embeds.dtype))  # [B, L, H]


def mrope_positions(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    image_mask: torch.Tensor, mms: Sequence[MultiModal | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """(position ids [4, B, L]: text index, then temporal/height/width; rope deltas [B]).

    Padding (attention 0) sits at position 0. A token appended after column L - 1 of row b goes
    at text index t (its count of real tokens before it) and at t + delta[b] on the three axes.
    """
    B, L = input_ids.shape
    grids = [m["image_grid_thw"] for m in mms if m is not None]
    grid = torch.cat(grids).to(input_ids.device) if grids else None  # [I, 3]
    rope, deltas = model.model.get_rope_index(input_ids, mm_token_type_ids=image_mask.int(),
                                              image_grid_thw=grid, attention_mask=attention_mask)  # [3, B, L], [B, 1]
    if attention_mask is None:
        text = torch.arange(L, device=input_ids.device).expand(B, L)  # [B, L]
    else:
        text = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]
    return torch.cat([text[None], rope.to(text)]), deltas.reshape(B).to(text)


def vision_forward_inputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          mms: Sequence[MultiModal | None], prompt_lens: Sequence[int] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds [B, L, H], position_ids [4, B, L]) of right-padded rows, one sequence each;
    placeholders count in the first `prompt_lens[b]` tokens (None: anywhere)."""
    if not is_vision_model(model):
        raise ModelError(f"{type(model).__name__} has no vision tower: it cannot take images")
    B, L = input_ids.shape
    ends = [L] * B if prompt_lens is None else prompt_lens
    image_mask = placeholder_mask(model, input_ids, [0] * B, ends)  # [B, L]
    embeds = embed_with_images(model, input_ids, image_mask, mms)
    positions, _ = mrope_positions(model, input_ids, attention_mask, image_mask, mms)
    return embeds, positions


def vision_logprobs(model, input_ids: torch.Tensor, mms: Sequence[MultiModal | None],
                    attention_mask: torch.Tensor | None = None, prompt_lens: Sequence[int] | None = None,
                    temperature: float = 1.0, chunk_tokens: int = 1024, with_entropy: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(input_ids[:, t] | input_ids[:, <t]) [B, T], entropy [B, T] or None), 0 at t = 0,
    for sequences with images: one per row, right-padded (`attention_mask` 1 on real tokens),
    `mms[b]` the images of row b's prompt (`encode_vision_prompt`), None for a text row.

    Through the LM head in chunks (`logprobs.chunked_logprobs`) when the model allows it, else
    through its full logits; gradients reach the vision tower through the image features.
    """
    from longrl.logprobs import chunked_logprobs, supports_chunked

    B, T = input_ids.shape
    embeds, positions = vision_forward_inputs(model, input_ids, attention_mask, mms, prompt_lens)
    targets = input_ids[:, 1:]  # [B, T-1]
    temperature = max(temperature, 1e-6)
    if chunk_tokens > 0 and supports_chunked(model):
        hidden = model.get_decoder()(inputs_embeds=embeds, position_ids=positions, attention_mask=attention_mask,
                                     use_cache=False).last_hidden_state[:, :-1]  # [B, T-1, H]
        head = model.get_output_embeddings()
        logp, entropy = chunked_logprobs(hidden.reshape(B * (T - 1), -1), head.weight, targets.reshape(-1),
                                         temperature, chunk_tokens, head.bias, with_entropy)  # [B*(T-1)]
    else:
        logits = model(inputs_embeds=embeds, position_ids=positions, attention_mask=attention_mask,
                       use_cache=False).logits[:, :-1].float() / temperature  # [B, T-1, V]
        log_p = logits.log_softmax(-1)
        logp = log_p.gather(-1, targets[..., None]).squeeze(-1)  # [B, T-1]
        entropy = -(log_p.exp() * log_p).sum(-1).detach() if with_entropy else None
    pad = lambda x: torch.nn.functional.pad(x.reshape(B, T - 1), (1, 0))  # noqa: E731  [B, T]
    return pad(logp), None if entropy is None else pad(entropy)


# ---------------------------------------------------------------------------- the sync probe

def probe_image(size: int = 56):
    """A fixed test card for the weight-sync probe: colour gradients and a diagonal."""
    from PIL import Image

    image = Image.new("RGB", (size, size))
    image.putdata([((7 * x) % 256, (5 * y) % 256, 255 if abs(x - y) < 3 else (x * y) % 256)
                   for y in range(size) for x in range(size)])
    return image
