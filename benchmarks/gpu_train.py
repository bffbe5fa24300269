"""Benchmark: one-device training and rollout figures on a GPU, for `scripts/gpu_check.sh`.

Model: the Qwen2.5-0.5B shape (hidden 896, 24 layers, 14 heads, 2 key/value heads, intermediate
4864, vocabulary 151,936, tied embeddings), random init; nothing is downloaded. Stages, each
run on its own (`--stage`) so that the check script can bound each with `timeout`:

- `train`: `Trainer.step` (OPMD loss, float32 masters under bf16 autocast, chunked log-probs,
  gradient checkpointing, AdamW) on one sequence of 4k, 16k and 32k tokens; training tokens/s,
  peak GPU memory, and model FLOPs utilisation. Model FLOPs per token = 6·N + 6·layers·d·T:
  N counts every weight that multiplies (decoder layers and the LM head, not the embedding
  lookup), and 6·layers·d·T is attention's QKᵀ and AV with a causal mask (half of PaLM's
  12·layers·d·T). Recomputation (checkpointing, the chunked LM head's backward) is not counted,
  as MFU conventionally does not. Peak: 989 TFLOP/s, the H200 SXM's dense bf16 figure
  (`--peak-tflops`). The plain log-prob path (full [T, V] logits) is measured beside it, and a
  length where it runs out of memory is reported as such.
- `rollout`: `HFEngine.generate` tokens/s at 8, 64 and 256 rows (bf16), and the cost of one
  decoding step at each: on a GPU a step costs about the same for 8 rows as for 256.
- `partial`: the straggler tail. A long-tailed batch (256 rows; 1 in 8 may run to `--long`
  tokens, the rest stop at `--short`) generated to completion (full rollouts), against one
  partial-rollout iteration at steady state: the same 256 rows, each capped at `--segment`
  tokens, the long ones continuing from earlier segments (SPEC §8). Reported: sampled tokens/s
  of each and the ratio.

    PYTHONPATH=src python benchmarks/gpu_train.py --stage train|rollout|partial [--out DIR]
    PYTHONPATH=src python benchmarks/gpu_train.py --stage all --device cpu --tiny   # a dry run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

H200_BF16_DENSE_TFLOPS = 989.0

QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=512, tie_word_embeddings=True)


def build_model(args, dtype):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**(TINY if args.tiny else QWEN25_05B), max_position_embeddings=1 << 16,
                         rope_theta=1e6)
    config._attn_implementation = args.attn
    torch.manual_seed(0)
    with torch.device(args.device):  # initialise in place: a CPU init of 0.5B weights takes long
        return Qwen2ForCausalLM(config).to(dtype)


def matmul_params(model) -> int:
    """Weights that multiply activations: all but the embedding lookup (the LM head counts)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total - embedding.numel() + (head.numel() if head is embedding else 0)


def flops_per_token(model, length: int) -> float:
    c = model.config
    return 6 * matmul_params(model) + 6 * c.num_hidden_layers * c.hidden_size * length


def one_sequence_batch(length: int, vocab: int, seed: int):
    """A TrainBatch of one sequence: a 64-token prompt and a response of length - 64 tokens."""
    import torch

    from longrl.packing import build_train_batch
    from longrl.types import Prompt, Segment, Trajectory

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (length,), generator=g).tolist()
    prompt = min(64, length // 2)
    t = Trajectory(prompt=Prompt(id="p", text=""), sample_index=0, prompt_ids=ids[:prompt],
                   segments=[Segment(ids[prompt:], [-12.0] * (length - prompt), 0)], finish_reason="stop",
                   reward=1.0)
    return build_train_batch([t], torch.tensor([0.5]), row_tokens=length, pad_id=0)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_one(args, length: int, chunk: int) -> dict:
    """Steps of `Trainer.step` on one sequence of `length` tokens: best time, peak memory, MFU."""
    import torch

    from longrl.config import LossConfig, TrainConfig
    from longrl.trainer import Trainer

    cuda = args.device.startswith("cuda")
    model = build_model(args, torch.bfloat16)
    config = TrainConfig(lr=1e-6, gradient_checkpointing=True, logprob_chunk_tokens=chunk,
                         max_tokens_per_micro_batch=length)
    trainer = Trainer(model, config, LossConfig(), pad_id=0, device=args.device, dtype="bfloat16")
    batch = one_sequence_batch(length, model.config.vocab_size, seed=length)
    result = {"length": length, "logprob_chunk_tokens": chunk}
    try:
        trainer.step(batch)  # warm-up: kernels, allocator, optimizer state
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            sync(args.device)
            start = time.perf_counter()
            metrics = trainer.step(batch)
            sync(args.device)
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        return result | {"oom": True}
    finally:
        if cuda:
            result["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    best = min(times)
    flops = flops_per_token(trainer.model, length) * length
    return result | {"step_s": best, "tokens_per_s": length / best, "tflops": flops / best / 1e12,
                     "mfu": flops / best / (args.peak_tflops * 1e12), "loss": metrics["loss/opmd"]}


def stage_train(args) -> dict:
    import torch

    rows = []
    for length in args.lengths:
        for chunk in (args.chunk, 0):  # chunked, then the plain path through full logits
            if chunk == 0 and length > args.plain_max:
                continue
            r = train_one(args, length, chunk)
            rows.append(r)
            print(json.dumps(r), flush=True)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    return {"peak_tflops": args.peak_tflops, "rows": rows}


def stub_tokenizer(vocab: int):
    # a random model needs no text: the engine reads only the pad and end-of-sequence ids
    return SimpleNamespace(pad_token_id=0, eos_token_id=vocab - 1)


def timed_generate(engine, requests, params, device: str) -> tuple[float, int]:
    sync(device)
    start = time.perf_counter()
    out = engine.generate(requests, params)
    sync(device)
    return time.perf_counter() - start, sum(len(c.token_ids) for c in out)


def random_requests(n: int, prompt_len: int, vocab: int, seed: int, caps=None, prefix_len: int = 0):
    import torch

    from longrl.types import GenerationRequest

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab - 1, (n, prompt_len + prefix_len), generator=g).tolist()
    return [GenerationRequest(row[:prompt_len], row[prompt_len:], max_new_tokens=None if caps is None else caps[i])
            for i, row in enumerate(ids)]


def stage_rollout(args) -> dict:
    import torch

    from longrl.rollout.engine import HFEngine
    from longrl.types import SamplingParams

    model = build_model(args, torch.bfloat16)
    vocab = model.config.vocab_size
    engine = HFEngine(model, stub_tokenizer(vocab), batch_size=256, seed=0)
    params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens)
    timed_generate(engine, random_requests(8, 64, vocab, 0), SamplingParams(max_new_tokens=8), args.device)
    rows = []
    for n in args.rows:
        seconds, tokens = timed_generate(engine, random_requests(n, 64, vocab, n), params, args.device)
        rows.append({"rows": n, "tokens_per_s": tokens / seconds, "step_ms": 1e3 * seconds / args.new_tokens})
        print(json.dumps(rows[-1]), flush=True)
    return {"new_tokens": args.new_tokens, "prompt_tokens": 64, "rows": rows}


def stage_partial(args) -> dict:
    import torch

    from longrl.rollout.engine import HFEngine
    from longrl.types import SamplingParams

    model = build_model(args, torch.bfloat16)
    vocab = model.config.vocab_size
    engine = HFEngine(model, stub_tokenizer(vocab), batch_size=256, seed=0)
    n, long_every = 256, 8
    is_long = [i % long_every == 0 for i in range(n)]
    params = SamplingParams(temperature=1.0, max_new_tokens=args.long)
    timed_generate(engine, random_requests(8, 64, vocab, 0), SamplingParams(max_new_tokens=8), args.device)
    # full: every row runs to its end; the batch waits for its longest rows
    caps = [args.long if x else args.short for x in is_long]
    full_s, full_tokens = timed_generate(engine, random_requests(n, 64, vocab, 1, caps), params, args.device)
    # partial, steady state: long rows continue from `--long // 2` earlier tokens, capped at a
    # segment; short rows are new samples that end as before
    long_rows = random_requests(sum(is_long), 64, vocab, 2, [args.segment] * sum(is_long), args.long // 2)
    short_rows = random_requests(n - len(long_rows), 64, vocab, 3, [min(args.short, args.segment)] * (n - len(long_rows)))
    part_s, part_tokens = 0.0, 0
    for group in (long_rows, short_rows):  # the HF engine pads contexts: two calls (rollout/partial.py)
        s, t = timed_generate(engine, group, params, args.device)
        part_s, part_tokens = part_s + s, part_tokens + t
    result = {"rows": n, "long_share": 1 / long_every, "long_tokens": args.long, "short_tokens": args.short,
              "segment_tokens": args.segment, "full_s": full_s, "full_tokens_per_s": full_tokens / full_s,
              "partial_s": part_s, "partial_tokens_per_s": part_tokens / part_s}
    result["partial_over_full"] = result["partial_tokens_per_s"] / result["full_tokens_per_s"]
    print(json.dumps(result), flush=True)
    return result


STAGES = {"train": stage_train, "rollout": stage_rollout, "partial": stage_partial}


def parse_args(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and short lengths (a CPU dry run)")
    parser.add_argument("--attn", default="sdpa", help="transformers attn_implementation")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--plain-max", type=int, default=32768, help="plain log-prob path up to this length")
    parser.add_argument("--chunk", type=int, default=4096, help="train.logprob_chunk_tokens")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per length (after one warm-up)")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--long", type=int, default=512)
    parser.add_argument("--short", type=int, default=64)
    parser.add_argument("--segment", type=int, default=128)
    parser.add_argument("--out", default="", help="write <stage>.json here")
    args = parser.parse_args(argv)
    if args.tiny:  # shapes small enough for a CPU, same code path
        args.lengths, args.plain_max, args.chunk, args.steps = [128, 256], 256, 64, 1
        args.rows, args.new_tokens, args.long, args.short, args.segment = [2, 8], 8, 32, 4, 8
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__})", flush=True)
    results = {}
    for name in (STAGES if args.stage == "all" else [args.stage]):
        start = time.perf_counter()
        results[name] = STAGES[name](args) | {"stage_s": time.perf_counter() - start}
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"{name}.json").write_text(json.dumps(results[name], indent=1))
    return results


if __name__ == "__main__":
    main()
