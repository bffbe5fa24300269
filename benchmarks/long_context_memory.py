"""Benchmark: peak memory and speed of one training step as the sequence grows, chunked log-probs
(`longrl.logprobs`) against the plain path through full [T, V] float32 logits, side by side.

The model is shaped like a real one where it matters for this measurement, the LM head: a Qwen2
config with the real 151,936-token vocabulary, random init, float32, but few layers and a small
hidden size so that it runs on a CPU. A step is forward + backward of a log-prob loss,
-mean_t log p(y_t), over one sequence of T tokens (`models.token_logprobs`, with
`chunk_tokens = 0` for the plain path). Reported per length: peak memory of the step above the
memory held before it, seconds, tokens/s, and chunked/plain ratios; then a linear fit
peak = a + b·T per mode and, from it, the longest sequence whose step fits `--budget-gb`.

Memory, measured honestly: on CPU each (mode, length) runs in a fresh process and the peak is
`ru_maxrss` (the process's high-water mark of resident memory) minus its resident memory just
before the step; on CUDA, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.
The plain path is skipped beyond `--plain-max` tokens (its [T, V] tensors would not fit here).
Not a test: timings depend on the machine and its load.

    OMP_NUM_THREADS=2 python benchmarks/long_context_memory.py [--lengths 512 1024 2048 4096 8192]
        [--plain-max 8192] [--chunk 512] [--hidden 256] [--layers 2] [--budget-gb 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = ("plain", "chunked")


def build_model(args):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=max(1, args.heads // 2), max_position_embeddings=1 << 17,
                         tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config).to(args.device).train()


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(mode: str, length: int, args) -> dict:
    """One (mode, length): peak step memory above the memory held before it, and the best time."""
    import torch

    from longrl.models import token_logprobs

    torch.set_num_threads(args.threads)
    model = build_model(args)
    cuda = args.device.startswith("cuda")
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(0, args.vocab, (1, length), generator=g).to(args.device)  # [1, T]
    positions = torch.arange(length, device=args.device)[None]  # [1, T]
    chunk = 0 if mode == "plain" else args.chunk
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resident_bytes()
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        logp = token_logprobs(model, ids, positions, 1.0, chunk_tokens=chunk)  # [1, T]
        (-logp[:, 1:].mean()).backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del logp
        model.zero_grad(set_to_none=False)  # keep the gradient buffers: each repeat sees the same
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": mode, "length": length, "peak_mb": (peak - before) / 2**20, "step_s": min(times),
            "tokens_per_s": length / min(times)}


def measure_fresh(mode: str, length: int, args) -> dict | None:
    """`measure` in a fresh process (CPU: ru_maxrss is a per-process high-water mark)."""
    options = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
               if k not in ("lengths", "one", "plain_max", "budget_gb")]
    run = subprocess.run([sys.executable, __file__, "--one", f"{mode}:{length}", *options],
                         capture_output=True, text=True, check=False)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode or not lines:
        print(f"{mode} at {length}: failed (exit {run.returncode})\n{run.stderr[-2000:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b·x."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def report(results: dict[tuple[str, int], dict], args) -> None:
    print(f"{'tokens':>7} {'plain MB':>9} {'chunked MB':>10} {'plain/chunked':>13} "
          f"{'plain tok/s':>11} {'chunked tok/s':>13} {'chunked/plain':>13}")
    for length in args.lengths:
        plain, chunked = results.get(("plain", length)), results.get(("chunked", length))
        cell = lambda r, key, fmt: format(r[key], fmt) if r else "-"  # noqa: E731
        mem = f"{plain['peak_mb'] / chunked['peak_mb']:.1f}x" if plain and chunked else "-"
        speed = f"{chunked['tokens_per_s'] / plain['tokens_per_s']:.2f}x" if plain and chunked else "-"
        print(f"{length:>7} {cell(plain, 'peak_mb', '9.0f')} {cell(chunked, 'peak_mb', '10.0f')} {mem:>13} "
              f"{cell(plain, 'tokens_per_s', '11.0f')} {cell(chunked, 'tokens_per_s', '13.0f')} {speed:>13}")
    budget = args.budget_gb * 1024
    for mode in MODES:
        points = [(n, results[(mode, n)]["peak_mb"]) for n in args.lengths if (mode, n) in results]
        if len(points) < 2:
            continue
        a, b = fit_line(points)
        fits = [n for n, mb in points if mb <= budget]
        print(f"{mode:8s} peak ≈ {a:.0f} MB + {b * 1024:.1f} MB per 1k tokens; longest step in "
              f"{args.budget_gb:g} GB: {(budget - a) / b:.0f} tokens by the fit "
              f"(measured: {max(fits) if fits else 'none'})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--plain-max", type=int, default=8192, help="skip the plain path above this length")
    parser.add_argument("--chunk", type=int, default=512, help="logprob chunk, tokens")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="steps per measurement; the best time counts")
    parser.add_argument("--budget-gb", type=float, default=4.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, length = args.one.split(":")
        print("RESULT " + json.dumps(measure(mode, int(length), args)), flush=True)
        return
    results = {}
    for length in args.lengths:
        for mode in MODES:
            if mode == "plain" and length > args.plain_max:
                continue
            r = measure(mode, length, args) if args.device.startswith("cuda") else measure_fresh(mode, length, args)
            if r:
                results[(mode, length)] = r
                print(f"  {mode} {length}: peak {r['peak_mb']:.0f} MB, {r['step_s']:.2f} s/step", flush=True)
    report(results, args)


if __name__ == "__main__":
    main()
