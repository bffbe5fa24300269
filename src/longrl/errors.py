"""The errors a user can cause and fix: one base, one line each.

Every error that a user can fix by changing a config, a data file, a path or an install is a
`LongrlError`. The CLI prints its message on one line and exits with status 2 (`--debug` shows
the traceback); anything else is a bug in longrl and keeps its traceback. Each kind also
subclasses the built-in exception it used to be, so `except ValueError` in user code still works.
"""

from __future__ import annotations


class LongrlError(Exception):
    """A user-facing error: the message says what was wrong, where, and what to do."""


class ConfigError(LongrlError, ValueError):
    """A config file or override that cannot be used."""


class DataError(LongrlError, ValueError):
    """A data source or row that cannot be read; the message names the file, line and field."""


class ModelError(LongrlError, FileNotFoundError):
    """A model directory that is missing or not a Hugging Face model."""


class MissingExtraError(LongrlError, ImportError):
    """A feature whose optional dependencies are not installed; the message names the extra."""
