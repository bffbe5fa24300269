"""False-positive rate of the repetition detector on normal traces (not a test).

Feeds (1) the world's reference chain-of-thought traces, every task and level, and (2) optionally
samples of a model (e.g. the SFT warm-up) through `RepetitionDetector` with the default
`RepetitionConfig`, and prints the share of traces it would have stopped.

    python benchmarks/repetition_fp.py [--model runs/sft/final --task add --levels 2 3] [--n 2000]
"""

from __future__ import annotations

import argparse
import random

from longrl.config import RepetitionConfig, WorldConfig
from longrl.data.worlds import TASKS, World
from longrl.rollout.repetition import RepetitionDetector


def fires(config: RepetitionConfig, ids: list[int]) -> bool:
    detector = RepetitionDetector(config)
    return any(detector.feed(t) for t in ids)


def reference_traces(tokenizer, n: int, levels=(1, 2, 3, 4, 6, 10, 20, 30)) -> dict[str, list[list[int]]]:
    out = {}
    for task in TASKS:
        for level in levels:
            if task != "chain" and level > 6:
                continue
            world = World(WorldConfig(tasks=[task], min_level=level, max_level=level, seed=level))
            prompts = world.train_prompts(n // 8)
            out[f"{task}:{level}"] = [tokenizer.encode(p.meta["trace"], add_special_tokens=False) for p in prompts]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--task", default="add", help="world task the model's prompts are drawn from")
    parser.add_argument("--levels", type=int, nargs=2, default=(2, 3))
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    from longrl.tiny import build_char_tokenizer

    config = RepetitionConfig(enabled=True)
    tokenizer = build_char_tokenizer()
    total = hits = 0
    for name, traces in reference_traces(tokenizer, args.n).items():
        h = sum(fires(config, ids) for ids in traces)
        total, hits = total + len(traces), hits + h
        if h:
            print(f"  reference {name}: {h}/{len(traces)} fired")
    print(f"reference traces: {hits}/{total} fired, false-positive rate {hits / max(total, 1):.4f}")
    if args.model:
        from longrl.models import encode_prompt, load_model, load_tokenizer
        from longrl.rollout.engine import HFEngine
        from longrl.types import GenerationRequest, SamplingParams

        tok = load_tokenizer(args.model)
        engine = HFEngine(load_model(args.model), tok, batch_size=128, seed=0)
        world = World(WorldConfig(tasks=[args.task], min_level=args.levels[0], max_level=args.levels[1]))
        prompts = world.train_prompts(args.n // 4)
        random.Random(0).shuffle(prompts)
        requests = [GenerationRequest(encode_prompt(tok, p.text)) for p in prompts for _ in range(4)]
        samples = engine.generate(requests, SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens))
        h = sum(fires(config, c.token_ids) for c in samples)
        print(f"model samples ({args.task} {args.levels}, T=1): {h}/{len(samples)} fired, false-positive rate {h / max(len(samples), 1):.4f}"
              " (upper bound: a fired sample may truly loop)")


if __name__ == "__main__":
    main()
