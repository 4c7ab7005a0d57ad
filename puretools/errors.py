"""Exception types raised by puretools: each message names the problem and the fix."""

from __future__ import annotations

__all__ = ["CacheError", "PuretoolsError", "WeightsNotFoundError"]


class PuretoolsError(ValueError):
    """Bad input to a puretools function; the message says what was wrong and how to fix it."""


class WeightsNotFoundError(PuretoolsError, FileNotFoundError):
    """Pretrained weights are not on disk and could not be downloaded."""


class CacheError(PuretoolsError):
    """A cache file is corrupt, truncated or was written by something else."""
