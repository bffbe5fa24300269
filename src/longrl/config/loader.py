"""Typed configuration: one dataclass per component, composed into a run config.

A config file is TOML with at most two levels (`[section]` then `key = value`); command-line
overrides use the same paths (`train.lr=3e-4`). Every field documents itself through
`opt(default, help)`, which is what `longrl train --help` prints. Loading is strict: an unknown
key or a value of the wrong type is a `ConfigError` naming the key, the file and line, and the
nearest valid key.

Two hooks let a component config check what a dataclass alone cannot:
- `__tables__ = "field"`: sub-tables under the section whose names are not fields (e.g.
  `[reward.math]`, one per reward) are collected, unchecked, into that `dict[str, dict]` field;
- `check_given(given, where)`: called after construction with the keys the user set in that
  section and a function that locates a dotted key (`where("eval")` -> "run.toml, line 7: key
  'data.eval'"), so a check can name the file and line and tell a given value from a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from longrl.errors import ConfigError

__all__ = ["ConfigError", "coerce", "config_to_dict", "describe", "dump_toml", "load_config", "nearest", "opt"]


def opt(default: Any, help: str) -> Any:
    """A documented dataclass field; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _line_of(text: str, section: str | None, key: str) -> int | None:
    """Best-effort line number of `key` (inside `[section]` when given) in a TOML text."""
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[([^\[\]]+)\]", stripped)
        if header:
            current = header.group(1).strip()
            if current == (f"{section}.{key}" if section else key):  # the key is a table
                return number
            continue
        if current == section and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return None


@dataclass
class _Source:
    """Where a value came from, for error messages."""

    path: str | None = None
    text: str = ""
    overrides: set[str] = field(default_factory=set)

    def where(self, dotted: str) -> str:
        if dotted in self.overrides:
            return f"command-line override {dotted!r}"
        if self.path is None:
            return f"key {dotted!r}"
        section, _, key = dotted.rpartition(".")
        line = _line_of(self.text, section or None, key)
        return f"{self.path}" + (f", line {line}" if line else "") + f": key {dotted!r}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise TypeError. Ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError(f"must be one of {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option)
            except TypeError:
                continue
        raise TypeError(f"must be {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise TypeError("must be empty")
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"must be a list ({_type_name(tp)}), got {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(v, item) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise TypeError(f"must be true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise TypeError(f"must be an integer, got {value!r}")
    if isinstance(value, tp):
        return value
    raise TypeError(f"must be {_type_name(tp)}, got {type(value).__name__} {value!r}")


def nearest(key: str, options: list[str]) -> str | None:
    """The valid key the user most likely meant: a near spelling, initials, or a containment."""
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    if close:
        return close[0]
    initials = "".join(word[0] for word in key.split("_") if word)
    for option in options:
        if option == initials or (len(option) > 2 and (option in key or key in option)):
            return option
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.4)
    return close[0] if close else None


def _build(cls: type, values: dict[str, Any], source: _Source, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    tables_field = getattr(cls, "__tables__", None)
    kwargs: dict[str, Any] = {tables_field: {}} if tables_field else {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields or key == tables_field:
            if tables_field and isinstance(value, dict):
                kwargs[tables_field][key] = dict(value)
                continue
            close = nearest(key, [f for f in fields if f != tables_field])
            hint = f"; did you mean {prefix + close!r}?" if close else ""
            valid = ", ".join(sorted(f for f in fields if f != tables_field))
            raise ConfigError(f"{source.where(dotted)}: unknown key{hint} (valid here: {valid})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{source.where(dotted)}: must be a [{dotted}] section")
            kwargs[key] = _build(tp, value, source, prefix=f"{dotted}.")
            continue
        try:
            kwargs[key] = coerce(value, tp)
        except TypeError as exc:
            raise ConfigError(f"{source.where(dotted)}: {exc}") from None
    try:
        config = cls(**kwargs)
    except ConfigError as exc:
        where = source.path or "config"
        raise ConfigError(f"{where}: {exc}") from None
    if hasattr(config, "check_given"):
        config.check_given(set(values), lambda key: source.where(f"{prefix}{key}"))
    return config


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string such as `model.path=runs/sft/final`
    return dotted.strip().split("."), value


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """Build config `cls` from an optional TOML file and `a.b=value` overrides, strictly."""
    source = _Source()
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        source.path, source.text = str(path), path.read_text()
        try:
            values = tomllib.loads(source.text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for item in overrides:
        keys, value = _parse_override(item)
        source.overrides.add(".".join(keys))
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {key!r} is not a section")
        node[keys[-1]] = value
    return _build(cls, values, source)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def _tables(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(scalars, sub-tables) of a config; `__tables__` entries become sub-tables of their own."""
    scalars, tables = {}, {}
    tables_field = getattr(type(config), "__tables__", None)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == tables_field:
            tables.update(value)
        elif dataclasses.is_dataclass(value):
            tables[f.name] = value
        else:
            scalars[f.name] = value
    return scalars, tables


def dump_toml(config: Any) -> str:
    """Write a config back as TOML: scalars first, then one table per nested section."""

    def section(node: Any, name: str) -> list[str]:
        scalars, tables = _tables(node) if dataclasses.is_dataclass(node) else (node, {})
        lines = ([f"[{name}]"] if name else []) + [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        for key, sub in tables.items():
            lines += [""] + section(sub, f"{name}.{key}" if name else key)
        return lines

    return "\n".join(section(config, "")) + "\n"


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per field: `section.key  (type, default)  help` — the body of `--help`."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name == getattr(cls, "__tables__", None):
            lines.append(f"  {prefix}<name>.*  {f.metadata.get('help', '')}")
            continue
        if dataclasses.is_dataclass(tp):
            lines.append("")
            lines += describe(tp, prefix=f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {prefix}{f.name} ({_type_name(tp)}, default {default!r})")
        lines.append(f"      {f.metadata.get('help', '')}")
    return lines
