"""The master loop of an RL run, stage by stage in data-flow order (SPEC §8).

Each iteration i:
    sample prompts -> k responses each from π_θi -> rewards -> replay buffer -> train (OPMD)
    -> weight sync into the engine -> evaluate on the held-out split (periodically)
    -> log -> checkpoint (periodically)

Trainer and engine live in this process (colocated), or, with `cluster.enabled`, behind the
same methods on Ray actors (`longrl.cluster`: an engine pool, reward actors, a trainer group and
a weight sync to every engine); `iteration` is the same code either way. The run directory holds
everything a resumed run needs: `config.toml`, `metrics.jsonl`, TensorBoard events, `samples/`,
`checkpoints/<iter>/` and, at the end, the final model in `final/`.

A vision-language policy (a model directory with a vision tower and a `preprocessor_config.json`,
`longrl.vision`, docs/vision.md) brings its processor: one `VisionInputs` encodes each image
prompt once for the rollout, the trainer and evaluation, the weight-sync probe holds an image,
and checkpoints and `final/` carry the processor's files, so `longrl eval` and a resume need
only the directory. Prompts with images are checked at set-up (`check_images`).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from longrl import checkpoint
from longrl.buffer import ReplayBuffer
from longrl.config import RunConfig, config_to_dict, dump_toml, load_config
from longrl.data.sources import load_sources
from longrl.device import resolve_device
from longrl.errors import ConfigError, LongrlError, ModelError
from longrl.evaluate import evaluate
from longrl.logger import ProgressBar, run_sinks
from longrl.lora import with_lora
from longrl.models import encode_prompt, load_policy, load_tokenizer
from longrl.rewards.length import add_length_reward, length_weight
from longrl.rewards.registry import build_rewards, eval_rewards
from longrl.rewards.score import prefetch, score
from longrl.rollout.engine import InferenceEngine, make_engine
from longrl.rollout.partial import partial_rollout, prepare_loss
from longrl.rollout.repetition import apply_penalty, detector_factory
from longrl.rollout.sample import sample
from longrl.sampler import Sampler, make_sampler
from longrl.trainer import Trainer
from longrl.types import Prompt, SamplingParams, Trajectory
from longrl.vision import VisionInputs, vision_inputs_for
from longrl.weight_sync import WeightSync, sync_tolerance


# ----------------------------------------------------------------------------------------------
# Stages (rollout: `rollout/sample.py`, `rollout/partial.py`; rewards: `rewards/score.py`)
# ----------------------------------------------------------------------------------------------


def write_samples(run_dir: Path, iteration: int, trajectories: list[Trajectory], count: int) -> None:
    if count <= 0:
        return
    path = run_dir / "samples" / f"iter_{iteration:06d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for t in trajectories[:count]:
            f.write(json.dumps({
                "prompt_id": t.prompt.id, "prompt": t.prompt.text, "answer": t.prompt.answer,
                "response": t.text, "reward": t.reward, "reward_info": _jsonable(t.reward_info),
                "finish_reason": t.finish_reason, "tokens": t.num_response_tokens,
                "policy_versions": [s.policy_version for s in t.segments]}) + "\n")


def _jsonable(info: dict) -> dict:
    return {k: v if isinstance(v, (str, int, float, bool, type(None), list)) else repr(v) for k, v in info.items()}


# ----------------------------------------------------------------------------------------------
# Set-up, checkpoints, the run
# ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    config: RunConfig
    dir: Path
    tokenizer: object
    trainer: Trainer  # or a `cluster.TrainerGroup`: the methods called here exist on both
    engine: InferenceEngine
    sampler: Sampler
    buffer: ReplayBuffer
    rewards: dict
    eval_prompts: list[Prompt]
    sync: WeightSync  # or a `cluster.ClusterSync`: sync(iteration) -> metrics
    iteration: int = 0
    cluster: object | None = None  # the `cluster.Cluster` whose actors this run holds
    eval_rewards: dict | None = None  # `eval.reward` when set; None: `rewards` score evaluations too
    vision: VisionInputs | None = None  # a vision-language policy's prompt encoder (its processor); None: text

    @property
    def saved_with_model(self):
        """What `save_pretrained` writes beside the weights: the processor (image processor and
        tokenizer) of a vision-language policy, else the tokenizer."""
        return self.tokenizer if self.vision is None else self.vision.processor


def close(run: Run) -> None:
    """End the run's cluster actors (and Ray, when the run started it); nothing in one process."""
    if run.cluster is not None:
        run.cluster.close()
        run.cluster = None


def prompt_sets(config: RunConfig) -> tuple[list[Prompt], list[Prompt]]:
    """(train, eval) prompts of the `data` sources; the `world` source follows the [world] section."""
    data = config.data
    return (load_sources(data.train, data.on_error, config.world),
            load_sources(data.eval, data.on_error, config.world))


def check_images(prompts: list[Prompt], vision: VisionInputs | None, model_path: str, engine: str,
                 cluster: bool = False) -> None:
    """A clear error, at set-up, for prompts with images that a job cannot take: a text-only
    model, the vLLM engine (`engine`), or the cluster (not supported with images yet, docs/vision.md)."""
    first = next((p for p in prompts if p.images), None)
    if first is None:
        return
    where = f"prompt {first.id!r} (source {first.source!r}) has {len(first.images)} image(s)"
    if cluster:
        raise ConfigError(f"{where}, but cluster.enabled: the FSDP2 trainer group does not take images yet; "
                          "set cluster.enabled = false (one process) for a vision-language run")
    if engine == "vllm":
        raise ConfigError(f"{where}, but rollout.engine = \"vllm\" does not take images yet; set "
                          "rollout.engine = \"hf\"")
    if vision is None:
        raise ModelError(f"{where}, but model {model_path!r} has no vision tower: use a vision-language model "
                         "(e.g. Qwen2-VL; `longrl sft configs/vision_sft.toml` trains a tiny one) or data "
                         "without images")


def setup(config: RunConfig, model_path: str | None = None) -> Run:
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    run_dir = Path(config.out_dir) / config.name
    if config.cluster.enabled:
        return setup_on_cluster(config, str(model_path or config.model.path), run_dir)
    path = str(model_path or config.model.path)
    model, tokenizer = load_policy(path, config.model.dtype)
    vision = vision_inputs_for(model, path)
    train_pool, eval_prompts = prompt_sets(config)
    check_images(train_pool + eval_prompts, vision, path, config.rollout.engine)
    device = resolve_device(config.train.device)
    model = model.to(device)  # the colocated engine copies the weights from here, on the same device
    engine = make_engine(config.rollout, model, tokenizer, seed=config.seed)
    model = with_lora(model, config.model)  # after the engine's copy: the engine holds a plain model
    trainer = Trainer(model, config.train, config.loss, tokenizer.pad_token_id,
                      temperature=config.rollout.temperature, seed=config.seed, device=device,
                      dtype=config.model.dtype, vision=vision)
    rewards = build_rewards(config.reward)
    tolerance = sync_tolerance(config.rollout.sync_check_tolerance, config.model.dtype)
    sync = WeightSync(trainer.model, engine, tokenizer, tolerance=tolerance,
                      processor=None if vision is None else vision.processor)
    return Run(config, run_dir, tokenizer, trainer, engine, make_sampler(config.sampler, train_pool, config.seed),
               ReplayBuffer(config.partial.max_unfinished), rewards, eval_prompts, sync, vision=vision)


def setup_on_cluster(config: RunConfig, model_path: str, run_dir: Path) -> Run:
    """`setup` with `cluster.enabled`: the driver holds the tokenizer, sampler and buffer; engines,
    trainer ranks and (with `cluster.reward_workers`) rewards are Ray actors (`longrl.cluster`)."""
    from longrl.cluster import setup_cluster  # ray is an optional extra

    tokenizer = load_tokenizer(model_path)
    train_pool, eval_prompts = prompt_sets(config)
    check_images(train_pool + eval_prompts, None, model_path, config.rollout.engine, cluster=True)
    cluster = setup_cluster(config, model_path, tokenizer)
    rewards = cluster.rewards if cluster.rewards is not None else build_rewards(config.reward)
    return Run(config, run_dir, tokenizer, cluster.trainer, cluster.engine,
               make_sampler(config.sampler, train_pool, config.seed), ReplayBuffer(config.partial.max_unfinished),
               rewards, eval_prompts, cluster.sync, cluster=cluster)


def load_optimizer(trainer, checkpoint: Path, saved) -> None:
    """Restore what `save_checkpoint` recorded of the optimizer (nothing with `optimizer_reset = "all"`)."""
    if saved == "state/":
        trainer.load_state(checkpoint / "state")
    elif saved is not None:  # a checkpoint from before `Trainer.save_state`: the state dict itself
        trainer.optimizer.load_state_dict(saved)


def save_checkpoint(run: Run) -> Path:
    """Checkpoint `run` at its iteration into `checkpoints/<iteration>/`, crash-safely (`checkpoint.py`)."""

    def write(path: Path) -> None:
        # through the trainer, which gathers a sharded model (a trainer group, FSDP2) before writing
        run.trainer.save_pretrained(path, run.saved_with_model)
        optimizer = None
        if run.config.train.optimizer_reset != "all":  # model and optimizer, sharded, in path/state
            run.trainer.save_state(path / "state")
            optimizer = "state/"
        # the HF engine samples from its own torch generator, and so does vLLM with
        # rollout.vllm_request_seeds; without, vLLM's randomness is not saved (rollout/vllm_engine.py)
        generator = getattr(run.engine, "generator", None)
        torch.save({
            "iteration": run.iteration, "optimizer": optimizer, "sampler": run.sampler.state_dict(),
            "buffer": run.buffer.state_dict(), "python_rng": random.getstate(), "torch_rng": torch.get_rng_state(),
            "engine_rng": generator.get_state() if generator is not None else None,
            "trainer_rng": run.trainer.rng.getstate(),
        }, path / "trainer_state.pt")

    return checkpoint.save(run.dir / "checkpoints", run.iteration, write, keep=run.config.checkpoint_keep)


def resume(run_dir: str | Path, overrides: list[str] = ()) -> Run:
    """Rebuild a run from its directory alone: its config and its latest complete checkpoint.

    What the run logged after that checkpoint (metrics, samples, TensorBoard events) is cut, so
    the resumed run logs those iterations once more, and only once. A run killed before its first
    checkpoint starts again from iteration 0. `overrides` change the saved config, e.g.
    `iterations=200` to train further.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise LongrlError(f"{run_dir}: not a run directory (no config.toml)")
    config = load_config(RunConfig, run_dir / "config.toml", overrides)
    checkpoint.remove_partial(run_dir / "checkpoints")
    latest = checkpoint.latest(run_dir / "checkpoints")
    if latest is None:
        checkpoint.cut_logs(run_dir, -1)
        run = setup(config)
        run.dir = run_dir
        return run
    run = setup(config, model_path=str(latest))
    run.dir = run_dir
    state = torch.load(latest / "trainer_state.pt", weights_only=False)
    run.iteration = state["iteration"]
    checkpoint.cut_logs(run_dir, run.iteration)
    run.sampler.load_state_dict(state["sampler"])
    run.buffer.load_state_dict(state["buffer"])
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state["engine_rng"] is not None and getattr(run.engine, "generator", None) is not None:
        run.engine.generator.set_state(state["engine_rng"])
    run.trainer.rng.setstate(state["trainer_rng"])
    load_optimizer(run.trainer, latest, state["optimizer"])
    return run


def iteration(run: Run) -> dict[str, float]:
    """One RL iteration, stage by stage."""
    c = run.config
    start = time.perf_counter()
    params = SamplingParams(temperature=c.rollout.temperature, top_p=c.rollout.top_p,
                            max_new_tokens=c.rollout.max_new_tokens,
                            detector=detector_factory(c.repetition))
    k = c.rollout.samples_per_prompt
    # remote rewards score each rollout worker's trajectories as it returns (`score` collects them)
    start_scoring = lambda finished: prefetch(run.rewards, finished)  # noqa: E731
    if c.partial.enabled:  # budgeted segments; only complete groups come back (rollout/partial.py)
        trajectories, metrics = partial_rollout(
            run.engine, run.tokenizer, lambda prompt: encode_prompt(run.tokenizer, prompt), run.buffer,
            run.sampler.sample, c.partial, c.rollout.prompts_per_iter, k, params, version=run.iteration,
            on_finished=start_scoring, vision=run.vision)
    else:
        prompts = run.sampler.sample(c.rollout.prompts_per_iter)
        trajectories, metrics = sample(run.engine, run.tokenizer, prompts, k, params, version=run.iteration,
                                       on_finished=start_scoring, vision=run.vision)
    metrics |= score(trajectories, run.rewards)
    metrics |= run.sampler.update(trajectories)  # success rates from the task reward, before shaping
    weight = length_weight(run.iteration, c.reward.length_weight, c.reward.length_warmup)
    if weight:
        metrics |= add_length_reward(trajectories, weight)
    if c.repetition.enabled:
        metrics |= apply_penalty(trajectories, c.repetition.penalty)
    run.buffer.add(trajectories)
    metrics |= run.buffer.metrics()
    batch, weights = run.buffer.take(), None
    if c.partial.enabled:
        weights, m = prepare_loss(batch, run.iteration, c.partial, run.trainer.current_logprobs)
        metrics |= m
    run.engine.sleep()  # frees the engine's memory for training where the platform can
    if batch:
        metrics |= run.trainer.train_iteration(batch, weights)
    run.engine.wake()
    metrics |= run.sync(run.iteration)
    run.iteration += 1
    write_samples(run.dir, run.iteration, trajectories, c.log_samples)
    metrics["perf/iteration_s"] = time.perf_counter() - start
    return metrics


def run_eval(run: Run) -> dict[str, float]:
    if run.eval_rewards is None:
        run.eval_rewards = eval_rewards(run.config.reward, run.config.eval.reward, run.rewards)
    return evaluate(run.engine, run.tokenizer, run.eval_prompts, run.eval_rewards, run.config.eval, vision=run.vision)


def train(run: Run, show_progress: bool = True) -> dict[str, float]:
    """Run iterations until `config.iterations`; return the first and last evaluation."""
    c = run.config
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "config.toml").write_text(dump_toml(c))
    if run.iteration == 0:  # a new run, or one resumed before its first checkpoint: logs start afresh
        checkpoint.cut_logs(run.dir, -1)
    sinks = run_sinks(run.dir, c.name, config_to_dict(c), c.logging, resumed_at=run.iteration)
    progress = ProgressBar(c.iterations, initial=run.iteration, disable=not show_progress)
    summary: dict[str, float] = {}
    metrics: dict[str, float] = {}
    try:
        if run.iteration == 0:
            first = run_eval(run)
            summary["start/pass@1"] = first["eval/pass@1"]
            for sink in sinks:
                sink.log(0, first)
        spent = 0.0  # seconds of iterations in this process, for `max_train_s`
        while run.iteration < c.iterations:
            metrics = iteration(run)
            spent += metrics["perf/iteration_s"]
            last = run.iteration == c.iterations or (c.max_train_s > 0 and spent >= c.max_train_s)
            if last or (c.eval.every and run.iteration % c.eval.every == 0):
                metrics |= run_eval(run)
            for sink in (*sinks, progress):
                sink.log(run.iteration, metrics)
            if last or (c.checkpoint_every and run.iteration % c.checkpoint_every == 0):
                save_checkpoint(run)
            if last:
                break
        if "eval/pass@1" in metrics:
            summary["end/pass@1"] = metrics["eval/pass@1"]
    finally:
        for sink in (*sinks, progress):
            sink.close()
    run.trainer.save_pretrained(run.dir / "final", run.saved_with_model)
    return summary
