"""The one switch for tiny runs (``PURETOOLS_SMOKE``) and the default cache folder."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PuretoolsError

__all__ = ["cache_dir", "smoke"]


def smoke() -> bool:
    """True when ``PURETOOLS_SMOKE`` is set to ``1``/``true``/``yes``/``on``: use tiny sizes.

    Unset, empty, ``0``, ``false``, ``no`` or ``off``: False; any other value is a typo and raises.

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
    value = os.environ.get("PURETOOLS_SMOKE", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise PuretoolsError(
        f"PURETOOLS_SMOKE={os.environ['PURETOOLS_SMOKE']!r} is not understood; set it to 1 for tiny runs or 0 "
        "(or unset it) for full ones."
    )


def cache_dir() -> Path:
    """Where notebooks and the command line cache results: ``$PURETOOLS_CACHE`` or ``~/.cache/puretools``.

    Examples
    --------
    >>> cache_dir().name
    'puretools'
    """
    value = os.environ.get("PURETOOLS_CACHE")
    if value is None:
        return Path.home() / ".cache" / "puretools"
    if not value.strip() or Path(value).is_file():
        raise PuretoolsError(
            f"PURETOOLS_CACHE={value!r} is not a folder for the cache"
            + (" (it is a file)" if value.strip() else "")
            + "; set it to a folder (it is created when needed), or unset it for ~/.cache/puretools."
        )
    return Path(value)
