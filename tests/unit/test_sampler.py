"""Samplers (SPEC §5): probabilities against hand-computed values, curriculum phases, composition,
and checkpoints that continue exactly where the uninterrupted sampler would have gone."""

import io
import json
import random
import shutil
from collections import Counter

import pytest
import torch

from longrl.config import ConfigError, RunConfig, SamplerConfig, load_config
from longrl.sampler import (
    CurriculumSampler,
    Phase,
    PrioritizedSampler,
    UniformSampler,
    make_sampler,
    warmup_then_hard,
)
from longrl.types import Prompt, Trajectory


def prompt(pid, difficulty=None, tags=()):
    return Prompt(id=pid, text=pid, answer="0", difficulty=difficulty, tags=list(tags))


def responses(p, correct, total):
    """`total` scored trajectories of prompt `p`, the first `correct` of them right."""
    return [Trajectory(prompt=p, sample_index=i, prompt_ids=[], reward=1.0 if i < correct else 0.0)
            for i in range(total)]


POOL = [prompt("a", 0.0), prompt("b", 0.5), prompt("c", 1.0)]


def primed_prioritized(**kwargs):
    """a: 3 of 4 correct (s = 0.75), b: 4 of 4 (s = 1), c never sampled (s = prior)."""
    sampler = PrioritizedSampler(POOL, seed=0, floor=0.1, prior=0.2, **kwargs)
    sampler.update(responses(POOL[0], 3, 4) + responses(POOL[1], 4, 4))
    return sampler


# ----------------------------------------------------------------------------------------------
# Prioritized
# ----------------------------------------------------------------------------------------------


def test_prioritized_probabilities_hand_computed():
    sampler = primed_prioritized()
    # w = max(1 - s, floor): a 1 - 0.75 = 0.25, b max(0, 0.1) = 0.1, c 1 - prior 0.2 = 0.8
    indices, p = sampler.probabilities()
    assert indices == [0, 1, 2]
    total = 0.25 + 0.1 + 0.8
    assert p.tolist() == pytest.approx([0.25 / total, 0.1 / total, 0.8 / total], abs=1e-12)


def test_success_rate_running_mean_and_moving_average():
    mean, ema = primed_prioritized(), primed_prioritized(ema=0.5)
    for sampler in (mean, ema):
        sampler.update(responses(POOL[0], 0, 2))  # a: 0 of 2 more
    assert mean.success_rate(POOL[0]) == pytest.approx(3 / 6)  # (3 + 0) / (4 + 2)
    assert ema.success_rate(POOL[0]) == pytest.approx(0.5 * 0.75 + 0.5 * 0.0)
    assert mean.success_rate(POOL[2]) == 0.2  # unseen: the prior


def test_prioritized_empirical_frequencies_match_probabilities():
    sampler = primed_prioritized()
    _, p = sampler.probabilities()
    draws = 10000  # standard error at most 0.005; tolerance 4 of them
    first = Counter(sampler.sample(1)[0].id for _ in range(draws))
    for i, pid in enumerate("abc"):
        assert first[pid] / draws == pytest.approx(p[i], abs=0.02)
    # two draws without replacement: P(i in pair) = p_i + sum_{j != i} p_j p_i / (1 - p_j)
    pairs = [sampler.sample(2) for _ in range(draws)]
    assert all(x.id != y.id for x, y in pairs)
    included = Counter(q.id for pair in pairs for q in pair)
    for i, pid in enumerate("abc"):
        expected = p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(3) if j != i)
        assert included[pid] / draws == pytest.approx(expected, abs=0.02)


def test_prioritized_call_larger_than_pool_takes_all_then_draws_again():
    drawn = [q.id for q in primed_prioritized().sample(5)]
    assert sorted(drawn[:3]) == ["a", "b", "c"] and len(set(drawn[3:])) == 2


def test_prioritized_metrics_describe_the_draws():
    sampler = primed_prioritized()
    drawn = sampler.sample(2)
    metrics = sampler.update([])
    rates = {"a": 0.75, "b": 1.0, "c": 0.2}
    assert metrics["sampler/mean_success_sampled"] == pytest.approx(sum(rates[q.id] for q in drawn) / 2)
    assert metrics["sampler/mean_difficulty"] == pytest.approx(sum(q.difficulty for q in drawn) / 2)
    assert metrics["sampler/hard_share"] == sum(q.difficulty >= 0.5 for q in drawn) / 2
    assert metrics["sampler/tracked"] == 2 and metrics["sampler/mean_success"] == pytest.approx(0.875)
    assert metrics["sampler/pool_size"] == 3
    assert metrics["sampler/distinct_seen"] == len({q.id for q in drawn})


# ----------------------------------------------------------------------------------------------
# Uniform, curriculum, composition
# ----------------------------------------------------------------------------------------------


def test_uniform_is_each_prompt_once_per_epoch_in_a_seeded_order():
    pool = [prompt(str(i)) for i in range(5)]
    sampler = UniformSampler(pool, seed=3)
    order = list(range(5))
    random.Random("3:0").shuffle(order)
    assert [q.id for q in sampler.sample(5)] == [str(i) for i in order]
    assert sorted(q.id for q in sampler.sample(5)) == [str(i) for i in range(5)]
    assert sampler.update([])["sampler/epoch"] == 1


def test_curriculum_switches_phase_at_the_right_iteration():
    pool = [prompt("easy", 0.0), prompt("mid", 0.5), prompt("hard", 1.0), prompt("unlabelled")]
    sampler = CurriculumSampler(UniformSampler(pool, seed=0), warmup_then_hard(2, 0.5))
    seen = []
    for _ in range(4):
        seen.append({q.id for q in sampler.sample(8)})
        metrics = sampler.update([])
        assert metrics["sampler/phase"] == (0 if len(seen) <= 2 else 1)
    assert seen[0] == seen[1] == {"easy", "mid", "hard", "unlabelled"}  # warm-up: every prompt
    assert seen[2] == seen[3] == {"mid", "hard"}  # then difficulty >= 0.5; unlabelled ones are left out
    assert metrics["sampler/pool_size"] == 2 and metrics["sampler/hard_share"] == 1.0


def test_curriculum_phases_with_tags_and_ranges():
    pool = [prompt("x1", 0.0, ["level:1"]), prompt("x2", 0.5, ["level:2"]), prompt("x3", 1.0, ["level:3"])]
    phases = [Phase(1, tags=("level:2",)), Phase(2, 0.0, 0.5), Phase(0, 0.6, 1.0)]
    sampler = CurriculumSampler(UniformSampler(pool), phases)
    assert [sampler.phase_at(i) for i in range(6)] == [0, 1, 1, 2, 2, 2]
    pools = []
    for _ in range(4):
        pools.append({q.id for q in sampler.sample(4)})
        sampler.update([])
    assert pools == [{"x2"}, {"x1", "x2"}, {"x1", "x2"}, {"x3"}]


def test_curriculum_narrows_the_prioritized_pool():
    inner = primed_prioritized()
    sampler = CurriculumSampler(inner, [Phase(1), Phase(0, min_difficulty=0.5)])
    assert inner.probabilities()[0] == [0, 1, 2]
    sampler.update([])
    indices, p = inner.probabilities()
    assert indices == [1, 2]  # b (w 0.1) and c (w 0.8)
    assert p.tolist() == pytest.approx([0.1 / 0.9, 0.8 / 0.9], abs=1e-12)
    assert {q.id for q in sampler.sample(2)} == {"b", "c"}


def test_empty_phase_is_an_error_that_says_what_to_change():
    with pytest.raises(ValueError) as err:
        CurriculumSampler(UniformSampler([prompt("a", 0.0), prompt("b")]), warmup_then_hard(3, 0.9))
    message = str(err.value)
    assert "phase 1 (difficulty in [0.9, 1])" in message and "none of the 2 training prompts" in message
    assert "1 have no difficulty label" in message and "sampler.hard_threshold" in message


# ----------------------------------------------------------------------------------------------
# Config and factory
# ----------------------------------------------------------------------------------------------


def test_make_sampler_from_config():
    assert isinstance(make_sampler(SamplerConfig(), POOL, 0), UniformSampler)
    sampler = make_sampler(SamplerConfig(kind="prioritized", curriculum="warmup_then_hard",
                                         warmup_iterations=5, hard_threshold=0.5), POOL, 0)
    assert isinstance(sampler, CurriculumSampler) and isinstance(sampler.inner, PrioritizedSampler)
    assert sampler.phases == [Phase(5), Phase(0, min_difficulty=0.5)]
    config = SamplerConfig(curriculum="phases", phase_iterations=[2, 1], phase_min_difficulty=[0, 0.5],
                           phase_max_difficulty=[0.5, 1], phase_tags=[["x"], []])
    sampler = make_sampler(config, [prompt("a", 0.0, ["x"]), *POOL[1:]], 0)
    assert sampler.phases == [Phase(2, 0.0, 0.5, ("x",)), Phase(1, 0.5, 1.0)]
    assert sampler.pools == [[0], [1, 2]]


@pytest.mark.parametrize("overrides, message", [
    (["sampler.floor=0"], "a floor of 0 would never draw a solved prompt again"),
    (["sampler.phase_iterations=[3]"], "sampler.phase_iterations is set but sampler.curriculum is 'none'"),
    (["sampler.curriculum=phases"], "phase_iterations is empty"),
    (["sampler.curriculum=phases", "sampler.phase_iterations=[3, 0]", "sampler.phase_min_difficulty=[0]",
      "sampler.phase_max_difficulty=[1, 1]"], "sampler.phase_min_difficulty has 1 entries"),
    (["sampler.curriculum=phases", "sampler.phase_iterations=[0, 4]", "sampler.phase_min_difficulty=[0, 0]",
      "sampler.phase_max_difficulty=[1, 1]"], r"sampler.phase_iterations\[0\] is 0"),
    (["sampler.curriculum=phases", "sampler.phase_iterations=[1]", "sampler.phase_min_difficulty=[0.7]",
      "sampler.phase_max_difficulty=[0.2]"], r"got \[0.7, 0.2\]"),
])
def test_bad_sampler_configs_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RunConfig, None, overrides)


# ----------------------------------------------------------------------------------------------
# Checkpoints: a restored sampler continues identically
# ----------------------------------------------------------------------------------------------

_WORLD = [prompt(f"p{i}", (i % 4) / 3, [f"level:{i % 4 + 1}"]) for i in range(24)]
_CONFIGS = {
    "uniform": SamplerConfig(),
    "prioritized": SamplerConfig(kind="prioritized", ema=0.3),
    "curriculum": SamplerConfig(curriculum="warmup_then_hard", warmup_iterations=4),
    "curriculum+prioritized": SamplerConfig(
        kind="prioritized", curriculum="phases", phase_iterations=[3, 2, 1],
        phase_min_difficulty=[0, 0.3, 0.6], phase_max_difficulty=[0.4, 1, 1]),
}


def _iterate(sampler, iterations, start):
    """Draw, score with a fixed rule (correct when (id + iteration + sample) % 3 == 0), update."""
    trace = []
    for it in range(start, start + iterations):
        drawn = sampler.sample(5)
        scored = [t for q in drawn for t in responses(q, 0, 2)]
        for t in scored:
            t.reward = float((int(t.prompt.id[1:]) + it + t.sample_index) % 3 == 0)
        trace.append(([q.id for q in drawn], sampler.update(scored)))
    return trace


@pytest.mark.parametrize("name", list(_CONFIGS))
def test_restored_sampler_continues_identically(name):
    config = _CONFIGS[name]
    original = make_sampler(config, _WORLD, seed=7)
    _iterate(original, 3, start=0)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)  # as in a checkpoint
    expected = _iterate(original, 6, start=3)
    restored = make_sampler(config, _WORLD, seed=7)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    assert _iterate(restored, 6, start=3) == expected
    fresh = _iterate(make_sampler(config, _WORLD, seed=7), 9, start=0)[3:]
    assert fresh == expected  # and the uninterrupted run is the same


def test_resumed_run_continues_the_sampler_identically(tmp_path, tiny_model_dir):
    from longrl import loop

    overrides = [f"out_dir={tmp_path}", "name=rl", f"model.path={tiny_model_dir}", "iterations=4",
                 "checkpoint_every=2", "world.min_level=1", "world.max_level=3", "world.train_size=24",
                 "world.eval_size=4", "rollout.prompts_per_iter=3", "rollout.samples_per_prompt=2",
                 "rollout.max_new_tokens=4", "train.mini_batch_size=6", "train.row_tokens=64",
                 "eval.every=0", "eval.num_prompts=2", "eval.n_samples=1", "eval.max_new_tokens=2",
                 "log_samples=6", "sampler.kind=prioritized", "sampler.curriculum=warmup_then_hard",
                 "sampler.warmup_iterations=3", "sampler.hard_threshold=0.5"]
    loop.train(loop.setup(load_config(RunConfig, None, overrides)), show_progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "rl", copy)
    shutil.rmtree(copy / "checkpoints" / "4")
    loop.train(loop.resume(copy), show_progress=False)

    def drawn(run_dir, iteration):
        lines = (run_dir / "samples" / f"iter_{iteration:06d}.jsonl").read_text().splitlines()
        return [json.loads(line)["prompt_id"] for line in lines]

    def sampler_metrics(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return {r["iteration"]: {k: v for k, v in r.items() if k.startswith("sampler/")} for r in rows}

    for i in (3, 4):
        assert drawn(copy, i) == drawn(tmp_path / "rl", i)
    assert sampler_metrics(copy)[3] == sampler_metrics(tmp_path / "rl")[3]
    assert sampler_metrics(copy)[4] == sampler_metrics(tmp_path / "rl")[4]
    assert sampler_metrics(copy)[4]["sampler/phase"] == 1  # the hard phase, reached after the resume
