"""Progress bars that end in their finished state in every front end.

In a live notebook or a terminal, :func:`tqdm` is ``tqdm.auto.tqdm`` (a widget in Jupyter, text
elsewhere). In a headless run that is saved to a page (``python -m puretools demo`` sets
``PURETOOLS_PROGRESS=text``), a widget bar would be stored as its first frame ("0%  0/8"), so
each bar prints instead one plain line to stdout when it closes: its description, the count
and the time taken.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.std import tqdm as _std_tqdm

__all__ = ["plain_progress", "tqdm"]


def plain_progress() -> bool:
    """True when ``PURETOOLS_PROGRESS=text``: bars print one finished line instead of updating.

    Examples
    --------
    >>> import os
    >>> before = os.environ.pop("PURETOOLS_PROGRESS", None)
    >>> plain_progress()
    False
    >>> if before is not None: os.environ["PURETOOLS_PROGRESS"] = before
    """
    return os.environ.get("PURETOOLS_PROGRESS", "").strip().lower() == "text"


class _LineBar(_std_tqdm):
    """A tqdm bar that draws nothing while it runs and one line to stdout when it closes."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["file"] = sys.stdout
        kwargs["delay"] = float("inf")  # never drawn while running
        super().__init__(*args, **kwargs)

    def display(self, *args, **kwargs) -> None:
        """Draw nothing while running, even on ``set_postfix`` or ``refresh`` (see :meth:`close`)."""
        return None

    def close(self) -> None:
        if not self.disable and not getattr(self, "_line_done", False):
            self._line_done = True
            meter = self.format_meter(**{**self.format_dict, "ncols": 0})
            print(meter.strip(), file=sys.stdout, flush=True)
        super().close()


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm``, or with ``PURETOOLS_PROGRESS=text`` a bar printed once when finished.

    Examples
    --------
    >>> import os
    >>> os.environ["PURETOOLS_PROGRESS"] = "text"
    >>> total = sum(tqdm(range(3), desc="demo", unit="item"))  # doctest: +ELLIPSIS
    demo: 100% 3/3 [...]
    >>> bar = tqdm(total=2, desc="stages")
    >>> bar.set_postfix_str("first"); _ = bar.update(2); bar.close()  # doctest: +ELLIPSIS
    stages: 100% 2/2 [...]
    >>> del os.environ["PURETOOLS_PROGRESS"]
    """
    return (_LineBar if plain_progress() else _auto_tqdm)(*args, **kwargs)
