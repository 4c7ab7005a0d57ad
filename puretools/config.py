"""The one switch for tiny runs (``PURETOOLS_SMOKE``) and the default cache folder."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "smoke"]


def smoke() -> bool:
    """True when ``PURETOOLS_SMOKE`` is set (to anything but ``0``/``false``): use tiny sizes.

    The tests set it to run notebook 07 (your own model) with random weights and a tiny
    generated image folder; nothing else in puretools reads it.

    Examples
    --------
    >>> import os
    >>> before = os.environ.get("PURETOOLS_SMOKE")
    >>> os.environ["PURETOOLS_SMOKE"] = "1"; smoke()
    True
    >>> os.environ["PURETOOLS_SMOKE"] = "0"; smoke()
    False
    >>> _ = os.environ.pop("PURETOOLS_SMOKE") if before is None else os.environ.update(PURETOOLS_SMOKE=before)
    """
    return os.environ.get("PURETOOLS_SMOKE", "").strip().lower() not in ("", "0", "false", "no")


def cache_dir() -> Path:
    """Where notebooks and the command line cache results: ``$PURETOOLS_CACHE`` or ``~/.cache/puretools``.

    Examples
    --------
    >>> cache_dir().name
    'puretools'
    """
    return Path(os.environ.get("PURETOOLS_CACHE", Path.home() / ".cache" / "puretools"))
