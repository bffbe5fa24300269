"""reasoning-gym reward (SPEC §6, rule-based): score a response with its task's own scorer.

Prompts from the `reasoning_gym:NAME` source (`data/sources.py`) carry in
`meta["reasoning_gym"]` what the scorer needs: the generator name, the config it was built with
(size, seed and any options), the item's index and the generated entry (question, answer,
metadata). The reward rebuilds that generator once per (name, config), and scores each response
with `dataset.score_answer(answer, entry)`.

Answer format the model must use: the final answer between `<answer>` and `</answer>` tags,
as reasoning-gym's own system prompts ask (the source puts one in by default). The last such
pair counts; whitespace around the answer is stripped (`reasoning_gym.utils.extract_answer`).
A response without the tags scores 0 (`reason: no_answer`): the scorer never sees free text,
because several scorers give partial credit to any text that contains the reference.

The score is 1.0 when the task's scorer gives full credit and 0.0 otherwise (`binary=True`,
the default; the 0/1 correctness reward of the k1.5 recipe). Many scorers also give partial
credit, and some for answers that merely contain the reference: reasoning-gym's default scorer
gives `len(reference) / len(answer)`, so `-41` for the reference `-4` earns 2/3 and listing
candidates pays. `binary=False` (ours) passes the task's graded score through; `info` holds
it as `task_score` either way.

Some scorers raise on an answer they cannot parse (`prime_factorization` calls `int()` on each
factor); that is a wrong answer, scored 0 with `reason: unparsable` and the exception in
`info["scorer_exception"]`, not a reward failure.

A prompt without `meta["reasoning_gym"]` scores 0 (`reason: not_reasoning_gym`), so a mixed
pool can weight this reward beside others.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache

if importlib.util.find_spec("reasoning_gym") is None:  # a missing extra says which install fixes it
    raise ModuleNotFoundError("the reasoning_gym reward needs reasoning-gym: pip install 'longrl[data]'", name="reasoning_gym")

from longrl.types import Prompt, RewardResult


@dataclass
class GymRewardConfig:
    """Options of the `reasoning_gym` reward: a run's `[reward.reasoning_gym]` table, or
    `gym_reward(**options)`."""

    binary: bool = field(default=True, metadata={
        "help": "1.0 only for a full-credit answer, else 0.0 (k1.5's 0/1 reward); false passes "
                "the task scorer's graded score through (ours; the module docstring says what "
                "that pays for)."})  # fmt: skip


@lru_cache(maxsize=256)
def _dataset(name: str, config_json: str):
    """The generator `name` built with `config` (cached: some are slow to build)."""
    import reasoning_gym

    return reasoning_gym.create_dataset(name, **json.loads(config_json))


@lru_cache(maxsize=65536)
def _regenerated(name: str, config_json: str, index: int) -> dict:
    return _dataset(name, config_json)[index]


def _entry(gym: dict, config_json: str) -> dict:
    """The entry as the generator made it: regenerated from its index when it still matches.

    A prompt that went through JSON (a curated JSONL file) has lists where the generator had
    tuples, and some scorers compare with `==` (ARC grids): the regenerated entry has the
    generator's own types. Items are a pure function of (config, index).
    """
    stored = gym["entry"]
    if "index" not in gym:
        return stored
    fresh = _regenerated(gym["dataset"], config_json, gym["index"])
    return fresh if fresh["question"] == stored["question"] else stored


def score_gym_response(prompt: Prompt, response: str, config: GymRewardConfig) -> RewardResult:
    """The task scorer's verdict on the response's `<answer>` (module docstring); never raises
    for a bad response."""
    from reasoning_gym.utils import extract_answer

    gym = prompt.meta.get("reasoning_gym")
    if not gym:
        return RewardResult(0.0, {"reason": "not_reasoning_gym"})
    answer = extract_answer(response or "")
    if answer is None:
        return RewardResult(0.0, {"reason": "no_answer", "extracted": None})
    config_json = json.dumps(gym["config"], sort_keys=True)
    dataset = _dataset(gym["dataset"], config_json)
    try:
        raw = float(dataset.score_answer(answer, _entry(gym, config_json)))
    except Exception as exc:  # noqa: BLE001 - scorers parse the answer and raise on junk
        return RewardResult(0.0, {"reason": "unparsable", "extracted": answer,
                                  "scorer_exception": f"{type(exc).__name__}: {exc}"})
    score = float(raw >= 1.0) if config.binary else raw
    reason = "correct" if raw >= 1.0 else "partial" if raw > 0 else "wrong"
    return RewardResult(score, {"reason": reason, "extracted": answer, "task_score": raw})


class GymReward:
    """`(prompts, responses) -> [RewardResult]`, one scorer call per response."""

    def __init__(self, config: GymRewardConfig):
        self.config = config

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        return [score_gym_response(p, r, self.config) for p, r in zip(prompts, responses)]


def gym_reward(**options) -> GymReward:
    """The `reasoning_gym` reward's factory: `options` are `GymRewardConfig` fields."""
    valid = {f.name for f in fields(GymRewardConfig)}
    if unknown := set(options) - valid:
        raise TypeError(
            f"reasoning_gym reward: unknown option(s) {sorted(unknown)}; valid: {sorted(valid)}"
        )
    return GymReward(GymRewardConfig(**options))
