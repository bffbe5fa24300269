"""Rows -> Prompts: column mapping and validation, for every tabular source (`data/sources.py`).

Rows of a file (or dataset) map onto the `Prompt` schema by column name: the question is
`text`, `prompt` or `question`, or `messages` (a chat list of `{role, content}`; a text column
holding such a list counts too); the reference is `answer` or `solution`, or `tests` for code;
optional `id`, `tags`, `difficulty` (0 easy .. 1 hard), `source`, and `images` (or `image`):
one image or a list of them (a JSON list or one path in a CSV cell). Other columns go to
`Prompt.meta`. Query options rename columns: `jsonl:qa.jsonl?text=q&answer=final`.

Images (vision-language prompts, `Prompt.images`). An image is a file path, relative paths
read from the data file's folder (the dataset's folder for `hf:`), or encoded bytes (a Parquet
or `datasets` Image cell, `{"bytes", "path"}`). Each one is opened once at load time
(`data/images.py`), so a missing file, a non-image or a too-large image is a `DataError` naming
the file, the line and the field. A prompt keeps paths as absolute paths and bytes as bytes,
never decoded pixels. A chat message's content may be a list of parts in the transformers
convention, `[{"type": "image"}, {"type": "text", "text": "..."}]`: each image part takes the
row's next image, so their counts must agree, and `Prompt.text` is the text parts of the last
user message joined by newlines.

Validation: a row with a missing field, a value of the wrong type, a line that is not JSON, or
a repeated id is a `DataError` naming the file, the line (the row for Parquet and datasets) and
the field. With `on_error="skip"` each bad row is reported on stderr with that same message
and the load ends with a count; no row is ever dropped silently. A missing file, an unreadable
file, an empty file, or a file with no good row is always an error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from longrl.data.images import row_images
from longrl.errors import DataError
from longrl.types import Prompt

OnError = Literal["raise", "skip"]


# Prompt field -> the column names tried, in order, when the spec does not map it.
ALIASES = {
    "id": ("id",), "text": ("text", "prompt", "question"), "messages": ("messages",),
    "answer": ("answer", "solution"), "tests": ("tests",), "tags": ("tags",),
    "difficulty": ("difficulty",), "source": ("source",), "images": ("images", "image"),
}  # fmt: skip
_JSON_CELLS = ("messages", "tests")  # CSV cells of these fields hold JSON text


def _column(row: dict, name: str, field_map: dict[str, str]) -> str | None:
    """The column of `row` that holds Prompt field `name` (None if absent or empty)."""
    candidates = (field_map[name],) if name in field_map else ALIASES[name]
    return next((c for c in candidates if row.get(c) not in (None, "")), None)


def _type_error(column: str, expected: str, value: Any) -> DataError:
    shown = f" {value!r}" if isinstance(value, str) else ""
    return DataError(f"field {column!r} must be {expected}, got {type(value).__name__}{shown}")


def _content_text(where: str, content: list) -> str:
    """The text parts of a list-of-parts message content, joined by newlines; checks every part."""
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind != "image":
            raise DataError(f"{where}: a content part must be {{'type': 'text', 'text': str}} or "
                            f"{{'type': 'image'}}, got {json.dumps(part, default=str)[:80]}")
    return "\n".join(texts)


def _check_messages(column: str, value: Any) -> tuple[list[dict], str]:
    """A chat list of {role, content} with a user turn; returns it and the last user turn's text.

    A content is a str, or a list of text and image parts (module docstring).
    """
    if not isinstance(value, list) or not value:
        raise _type_error(column, "a non-empty list of {role, content} messages", value)
    messages, users = [], []
    for i, message in enumerate(value, start=1):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), (str, list))):
            raise DataError(f"field {column!r}, message {i}: must be an object with string "
                            f"'role' and 'content', got {json.dumps(message, default=str)[:80]}")
        content = message["content"]
        where = f"field {column!r}, message {i}"
        text = content if isinstance(content, str) else _content_text(where, content)
        if message["role"] == "user":
            users.append(text)
        messages.append({"role": message["role"],
                         "content": content if isinstance(content, str) else [dict(p) for p in content]})
    if not users:
        raise DataError(f"field {column!r}: no message with role 'user'")
    return messages, users[-1]


def _image_parts(messages: list[dict]) -> int:
    return sum(part["type"] == "image" for m in messages if isinstance(m["content"], list)
               for part in m["content"])


def _from_cell(name: str, column: str, value: str) -> Any:
    """A CSV cell (always text) as the value of Prompt field `name`."""
    if name in _JSON_CELLS or (name == "images" and value.lstrip().startswith("[")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"field {column!r} must hold JSON in a CSV cell ({exc.msg} at "
                            f"column {exc.colno})") from None
    if name == "tags":
        return json.loads(value) if value.lstrip().startswith("[") else \
            [t.strip() for t in value.split(",") if t.strip()]
    if name == "difficulty":
        try:
            return float(value)
        except ValueError:
            raise DataError(f"field {column!r} must be a number, got {value!r}") from None
    return value


def _check_value(name: str, column: str, value: Any) -> Any:
    if name in ("text", "answer", "source") and not isinstance(value, str):
        raise _type_error(column, "a str", value)
    if name == "id":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _type_error(column, "a str or an int", value)
        return str(value)
    if name == "tags" and not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
        raise _type_error(column, "a list of str", value)
    if name == "tests" and not (isinstance(value, list) and all(isinstance(t, dict) for t in value)):
        raise _type_error(column, "a list of test objects", value)
    if name == "difficulty":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(column, "a number", value)
        if not 0 <= value <= 1:
            raise DataError(f"field {column!r} must be between 0 (easy) and 1 (hard), got {value}: "
                            "rescale it, or leave it out and label difficulty by curation")
        return float(value)
    return value


def prompt_from_row(row: Any, default_id: str, source: str, field_map: dict[str, str] | None = None,
                    text_cells: bool = False, base: Path | None = None) -> Prompt:
    """One row (a dict of columns) as a `Prompt`; raises `DataError` naming the bad field.

    `text_cells` says every value is text (CSV): JSON fields are parsed and numbers converted.
    `base` is the folder that relative image paths are read from (default: the working directory).
    """
    field_map = field_map or {}
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}")
    used = {name: _column(row, name, field_map) for name in ALIASES}
    values = {}
    for name, column in used.items():
        if column is None:
            continue
        value = row[column]
        if text_cells and isinstance(value, str):
            value = _from_cell(name, column, value)
        if name == "text" and isinstance(value, list):
            name = "messages"  # a text column holding a chat
        values[name] = value if name in ("messages", "images") else _check_value(name, column, value)
    if "messages" in values:
        column = used["messages"] or used["text"]
        values["messages"], values["text"] = _check_messages(column, values["messages"])
        parts = _image_parts(values["messages"])
        images = len(values["images"]) if isinstance(values.get("images"), list) else int("images" in values)
        if parts and parts != images:
            raise DataError(f"field {column!r} has {parts} image part(s) but the row has {images} image(s) "
                            f"(column {used['images'] or 'images'!r}): give one image per image part")
    elif "text" not in values:
        wanted = field_map.get("text") or field_map.get("messages")
        raise DataError(f"missing field {wanted!r}" if wanted else
                        "missing field 'text' (or 'prompt', 'question', 'messages')")
    if "answer" not in values and "tests" not in values:
        wanted = field_map.get("answer")
        raise DataError(f"missing field {wanted!r}" if wanted else
                        "missing field 'answer' (or 'solution', or 'tests' for code)")
    if "images" in values:  # last: opening every image is the slowest check
        values["images"] = row_images(used["images"], values["images"], base)
    known = {*field_map.values(), *(c for aliases in ALIASES.values() for c in aliases)}
    taken = {c for c in row if c in used.values() or (c in known and row[c] in (None, ""))}
    return Prompt(id=values.get("id", default_id), text=values["text"], answer=values.get("answer"),
                  tests=values.get("tests"), tags=list(values.get("tags", [])),
                  difficulty=values.get("difficulty"), source=values.get("source", source),
                  meta={k: v for k, v in row.items() if k not in taken}, messages=values.get("messages"),
                  images=values.get("images", []))


def collect(rows: Iterator[tuple[str, Any]], where: str, name: str, on_error: OnError,
             field_map: dict[str, str], text_cells: bool = False, base: Path | None = None) -> list[Prompt]:
    """Validate `(location, row)` pairs (a row may be a `DataError` already) under `on_error`.

    `where` names the data in messages; `name` is the default `source` and the stem of default
    ids (`<stem>:<line or row>`); `base` is the folder relative image paths are read from.
    """
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error is {on_error!r}: use 'raise' or 'skip'")
    prompts, seen, skipped = [], {}, 0
    for location, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            prompt = prompt_from_row(row, f"{Path(name).stem}:{location.split()[-1]}", name,
                                     field_map, text_cells, base)
            if prompt.id in seen:
                raise DataError(f"field 'id': {prompt.id!r} repeats the id of {seen[prompt.id]}")
            seen[prompt.id] = location
            prompts.append(prompt)
        except DataError as exc:
            message = f"{where}, {location}: {exc}"
            if on_error == "raise":
                raise DataError(message) from None
            skipped += 1
            print(f"skipping: {message}", file=sys.stderr)
    if not prompts:
        why = f"{skipped} malformed rows skipped" if skipped else "it is empty"
        raise DataError(f"{where}: no prompts in the file ({why})")
    if skipped:
        print(f"{where}: skipped {skipped} malformed row(s), kept {len(prompts)}", file=sys.stderr)
    return prompts
