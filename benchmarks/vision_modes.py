"""What a vision-language policy does on each task of the visual world: how often it answers
directly or reasons first, and how often each is right.

Samples `--samples` responses to each of the first `--prompts` held-out prompts of a run config
(default configs/vision_rl.toml) with the policy at `--model`, scores them with the config's
rewards, and prints per task: pass@1 over all responses, over those with a chain of thought (a
response of more than one line) and over direct answers (`A: n` alone), with their counts. Run
on the SFT start and on the RL result, it shows what RL changed.

    OMP_NUM_THREADS=1 python benchmarks/vision_modes.py --model runs/vision_sft/final
    OMP_NUM_THREADS=1 python benchmarks/vision_modes.py --model runs/vision_rl/final [k=v ...]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from longrl import loop
from longrl.config import RunConfig, load_config
from longrl.rewards.score import score
from longrl.rollout.sample import sample
from longrl.types import SamplingParams


def main(argv: list[str] | None = None) -> dict[tuple[str, str], tuple[int, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="policy directory (model and processor)")
    parser.add_argument("--config", default="configs/vision_rl.toml")
    parser.add_argument("--prompts", type=int, default=150, help="held-out prompts")
    parser.add_argument("--samples", type=int, default=4, help="responses per prompt")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of the config")
    args = parser.parse_args(argv)

    config = load_config(RunConfig, args.config, [f"model.path={args.model}", *args.overrides])
    torch.set_num_threads(config.threads or torch.get_num_threads())
    run = loop.setup(config)
    params = SamplingParams(temperature=config.eval.temperature, max_new_tokens=config.eval.max_new_tokens)
    trajectories, _ = sample(run.engine, run.tokenizer, run.eval_prompts[:args.prompts], args.samples, params,
                             vision=run.vision)
    score(trajectories, run.rewards)

    counts = defaultdict(lambda: [0, 0])  # (task, mode) -> [responses, correct]
    for t in trajectories:
        task = t.prompt.id.split(":", 1)[0]
        text = run.tokenizer.decode([token for s in t.segments for token in s.token_ids]).strip()
        mode = "reasoned" if "\n" in text else "direct"
        for key in ((task, "all"), (task, mode)):
            counts[key][0] += 1
            counts[key][1] += t.reward >= 1.0
    print(f"{'task':10s} {'responses':10s} {'n':>5s} {'pass@1':>7s}")
    results = {}
    for (task, mode), (n, correct) in sorted(counts.items()):
        results[task, mode] = (n, correct / n)
        print(f"{task:10s} {mode:10s} {n:5d} {correct / n:7.3f}")
    return results


if __name__ == "__main__":
    main()
