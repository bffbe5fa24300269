"""The cluster's unrecoverable faults, as user errors (one line, exit status 2 from the CLI)."""

from __future__ import annotations

from longrl.errors import LongrlError


class ClusterError(LongrlError, RuntimeError):
    """A cluster fault the run cannot recover from; the message names the actor and the way on."""


class TrainerRankError(ClusterError):
    """A trainer rank died: the group's collectives cannot go on without it."""
