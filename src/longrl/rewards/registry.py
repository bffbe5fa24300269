"""The reward seam: built-in rewards by name, user rewards by reference (SPEC §6).

A reward is any callable `(prompts, responses) -> list[RewardResult]` over equal-length lists,
where `responses` are decoded response texts. `rewards.score` is the only place anything calls one.

Built-in rewards are an explicit table (`BUILTIN`): a name, the factory that builds the reward
from its options, the dataclass those options are checked against, and the extra that installs
what it needs. Nothing registers itself on import, and a missing extra is an error naming the
`pip install` that fixes it.

A user reward is named by reference: `path/to/file.py:function` (a path relative to the working
directory, or absolute) or `package.module:function`. The function's first two parameters say how
it is called:
- `(prompt, response, ...)`: once per response; `prompt` is a `Prompt`, `response` a string;
- `(prompts, responses, ...)`: once per batch, returning one value per response.
A value is a float (or bool, or int) or a `RewardResult`. Options in the run's `[reward."<ref>"]`
table are passed as keyword arguments on every call and are checked against the signature when
the config loads.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from longrl.errors import ConfigError, MissingExtraError
from longrl.types import Prompt, RewardResult


class Reward(Protocol):
    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]: ...


@dataclass(frozen=True)
class Builtin:
    module: str
    factory: str  # `factory(**options) -> Reward`
    options: str | None  # dataclass of the options, in `module`; None = takes none
    extra: str | None  # `pip install 'longrl[extra]'` installs its dependencies


BUILTIN: dict[str, Builtin] = {
    "world": Builtin("longrl.rewards.world", "world_reward", None, None),
    "math": Builtin("longrl.rewards.math", "math_reward", "MathRewardConfig", "math"),
    "code": Builtin("longrl.rewards.code", "code_reward", "CodeRewardConfig", "sandbox"),
    "reasoning_gym": Builtin("longrl.rewards.gym", "gym_reward", "GymRewardConfig", "data"),
    "rm": Builtin("longrl.rewards.rm", "rm_reward", "RMRewardConfig", None),
    "judge": Builtin("longrl.rewards.judge", "judge_reward", "JudgeRewardConfig", None),
}


def available_rewards() -> list[str]:
    return sorted(BUILTIN)


def _import_builtin(name: str) -> Any:
    entry = BUILTIN[name]
    try:
        return importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "longrl":
            raise
        raise MissingExtraError(f"reward {name!r} needs {exc.name!r}, which is not installed: run "
                                f"pip install 'longrl[{entry.extra}]'") from exc


def _unknown_reward(name: str) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(name, list(BUILTIN), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"unknown reward {name!r}: {hint}built-in rewards are {', '.join(sorted(BUILTIN))}; "
                       "a user reward is FILE.py:FUNCTION or package.module:FUNCTION")


# -- options -----------------------------------------------------------------------------------


def _check_builtin_options(name: str, options: dict[str, Any], where: Callable[[str], str]) -> None:
    from longrl.config.loader import coerce, nearest

    entry = BUILTIN[name]
    module = _import_builtin(name)
    if entry.options is None:
        if options:
            raise ConfigError(f"{where(name)}: reward {name!r} takes no options")
        return
    cls = getattr(module, entry.options)
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    checked = {}
    for key, value in options.items():
        if key not in valid:
            close = nearest(key, valid)
            hint = f"; did you mean {close!r}?" if close else ""
            raise ConfigError(f"{where(f'{name}.{key}')}: unknown option of reward {name!r}{hint} "
                              f"(valid: {', '.join(valid)})")
        try:
            checked[key] = coerce(value, hints[key])
        except TypeError as exc:
            raise ConfigError(f"{where(f'{name}.{key}')}: {exc}") from None
    try:
        cls(**checked)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where(name)}: {exc}") from None


def check_reward(name: str, options: dict[str, Any], where: Callable[[str], str] = repr) -> None:
    """Raise a `ConfigError` (located by `where`) unless reward `name` can be built with `options`."""
    if name in BUILTIN:
        _check_builtin_options(name, options, where)
        return
    if ":" not in name:
        raise ConfigError(f"{where('names')}: {_unknown_reward(name)}")
    function = load_user_function(name)
    try:
        inspect.signature(function).bind_partial(None, None, **options)
    except TypeError as exc:
        raise ConfigError(f"{where(name)}: options {sorted(options)} do not fit {name}: {exc}") from None


# -- user rewards --------------------------------------------------------------------------------


def load_user_function(reference: str) -> Callable:
    """The function named by `FILE.py:NAME` or `package.module:NAME`, checked to take a prompt and a response."""
    target, _, attr = reference.rpartition(":")
    if not target or not attr:
        raise ConfigError(f"reward {reference!r}: a user reward is FILE.py:FUNCTION or package.module:FUNCTION")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"reward {reference!r}: file {str(path)!r} does not exist "
                              f"(relative paths start from {Path.cwd()})")
        module_name = f"longrl_user_reward_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[module_name]
                raise ConfigError(f"reward {reference!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"reward {reference!r}: cannot import module {target!r}: {exc}") from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(f"reward {reference!r}: {target} has no function {attr!r}")
    _call_style(reference, function)
    return function


def _call_style(reference: str, function: Callable) -> str:
    """`one` for `(prompt, response, ...)`, `batch` for `(prompts, responses, ...)`."""
    params = [p.name for p in inspect.signature(function).parameters.values()][:2]
    if params == ["prompt", "response"]:
        return "one"
    if params == ["prompts", "responses"]:
        return "batch"
    raise ConfigError(f"reward {reference!r}: its first two parameters are {params}; name them "
                      "(prompt, response) to be called per response, or (prompts, responses) per batch")


def _as_result(value: Any, reference: str) -> RewardResult:
    if isinstance(value, RewardResult):
        return value
    if isinstance(value, (bool, int, float)):
        return RewardResult(float(value))
    raise TypeError(f"{reference} returned {type(value).__name__} {value!r}: return a float or a RewardResult")


def user_reward(reference: str, **options) -> Reward:
    """A `Reward` calling the user function `reference` with `options` as keyword arguments."""
    function = load_user_function(reference)
    style = _call_style(reference, function)

    def reward(prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        if style == "one":
            return [_as_result(function(p, r, **options), reference) for p, r in zip(prompts, responses)]
        values = function(list(prompts), list(responses), **options)
        return [_as_result(v, reference) for v in values]

    return reward


def get_reward(name: str, **options) -> Reward:
    """Build reward `name` (built-in or `FILE.py:FUNCTION` / `module:FUNCTION`) with its options."""
    if name in BUILTIN:
        return getattr(_import_builtin(name), BUILTIN[name].factory)(**options)
    if ":" in name:
        return user_reward(name, **options)
    raise _unknown_reward(name)


def build_rewards(config) -> dict[str, tuple[Reward, float]]:
    """name -> (reward, weight) of a `RewardConfig`, each built with its `[reward.<name>]` options."""
    return {name: (get_reward(name, **config.options.get(name, {})), weight)
            for name, weight in zip(config.names, config.weights)}


def eval_rewards(reward_config, name: str, rewards: dict[str, tuple[Reward, float]] | None = None
                 ) -> dict[str, tuple[Reward, float]]:
    """The rewards that score an evaluation: reward `name` alone (weight 1, with its `[reward.<name>]`
    options), or, with no name, `rewards` (the run's, already built) or a fresh `build_rewards`."""
    if name:
        return {name: (get_reward(name, **reward_config.options.get(name, {})), 1.0)}
    return rewards if rewards is not None else build_rewards(reward_config)
