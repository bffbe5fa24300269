"""Prompt files: JSONL rows in the `Prompt` schema, validated with errors that say where.

One JSON object per line with at least `text` (the question) and `answer` (the reference);
optional `id`, `tags`, `difficulty`, `source`. A malformed row raises `DataError` naming the file,
the line and the field (`on_error="skip"` reports it on stderr and goes on instead).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from longrl.types import Prompt


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file, line and field."""


_FIELDS = {"id": str, "text": str, "answer": str, "tags": list, "difficulty": (int, float), "source": str}
_REQUIRED = ("text", "answer")


def _prompt_from_row(row: object, where: str, line: int) -> Prompt:
    if not isinstance(row, dict):
        raise DataError(f"{where}, line {line}: expected a JSON object, got {type(row).__name__}")
    for name in _REQUIRED:
        if name not in row:
            raise DataError(f"{where}, line {line}: missing field {name!r}")
    for name, kind in _FIELDS.items():
        if name in row and row[name] is not None and not isinstance(row[name], kind):
            expected = kind.__name__ if isinstance(kind, type) else "number"
            raise DataError(f"{where}, line {line}: field {name!r} must be a {expected}, "
                            f"got {type(row[name]).__name__}")
    return Prompt(id=row.get("id") or f"{Path(where).stem}:{line}", text=row["text"], answer=row["answer"],
                  tags=list(row.get("tags") or []), difficulty=row.get("difficulty"),
                  source=row.get("source") or Path(where).name,
                  meta={k: v for k, v in row.items() if k not in _FIELDS})


def load_prompts(path: str | Path, on_error: Literal["raise", "skip"] = "raise") -> list[Prompt]:
    """Read a JSONL prompt file; malformed rows raise (or are reported and skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {str(path)!r} does not exist")
    prompts, skipped = [], 0
    with path.open() as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {line_no}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                prompts.append(_prompt_from_row(row, str(path), line_no))
            except DataError as exc:
                if on_error == "raise":
                    raise
                skipped += 1
                print(f"skipping: {exc}", file=sys.stderr)
    if not prompts:
        raise DataError(f"{path}: no prompts in the file" + (f" ({skipped} malformed rows skipped)" if skipped else ""))
    return prompts
