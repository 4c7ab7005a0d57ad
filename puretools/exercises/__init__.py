"""Self-checks for the notebooks' exercises: say "correct", "not quite" or "not attempted yet".

An exercise in a notebook is a code cell tagged ``exercise`` that holds a placeholder line
``answer = ...`` for the student and ends with a call to a check from this package, e.g.
``ex.check_top_neuron(answer, mix)``. The solution sits one click away, in the markdown cell
right after it, inside ``<details><summary>Solution</summary> ... </details>`` as one fenced
``python`` block whose lines replace the placeholder line (``tests/test_exercises.py`` runs
every solution through its check that way).

A check never prints the expected answer. It returns ``True`` when the answer is right and
``False`` otherwise; with ``PURETOOLS_EXERCISES=strict`` (the tests) a wrong or missing answer
raises :class:`ExerciseError` instead, so a broken solution cannot pass unnoticed.

One module per notebook holds that notebook's checks (``nb01``, ``nb02``, ...); each check
computes the expected answer itself from the inputs it is given, with an independent route
where one exists, and hands it to :func:`report`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["ExerciseError", "answers_equal", "is_placeholder", "report", "strict"]

SOLUTION_HINT = "open the 'Solution' cell right below this one"


class ExerciseError(AssertionError):
    """Raised by a check in strict mode (``PURETOOLS_EXERCISES=strict``) on a wrong answer."""


def strict() -> bool:
    """True when ``PURETOOLS_EXERCISES=strict``: checks raise instead of printing.

    Examples
    --------
    >>> import os
    >>> before = os.environ.pop("PURETOOLS_EXERCISES", None)
    >>> strict()
    False
    >>> if before is not None: os.environ["PURETOOLS_EXERCISES"] = before
    """
    return os.environ.get("PURETOOLS_EXERCISES", "").strip().lower() == "strict"


def is_placeholder(answer: Any) -> bool:
    """True when the student has not replaced the placeholder ``...`` (Ellipsis) yet.

    Examples
    --------
    >>> is_placeholder(...), is_placeholder(0)
    (True, False)
    """
    return answer is Ellipsis


def _plain(x: Any) -> Any:
    """Tensors, numpy scalars and arrays to plain Python / float64 tensors for comparison."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.item() if x.ndim == 0 else x.double() if x.is_floating_point() else x.long()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return _plain(torch.from_numpy(x))
    return x


def answers_equal(answer: Any, expected: Any, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Whether ``answer`` equals ``expected`` in any correct form.

    A float, a 0-d tensor and a numpy scalar are the same number; ``True`` and ``np.bool_(True)``
    are the same truth value; tensors, arrays and lists compare element-wise with
    ``rtol`` / ``atol``; dicts compare key by key; strings exactly.

    Examples
    --------
    >>> import numpy as np, torch
    >>> answers_equal(torch.tensor(0.5), 0.5), answers_equal(np.bool_(True), True)
    (True, True)
    >>> answers_equal([1, 2], torch.tensor([1, 2])), answers_equal({"a": 1.0}, {"a": 1.1})
    (True, False)
    """
    a, e = _plain(answer), _plain(expected)
    if isinstance(e, bool) or isinstance(a, bool):
        return isinstance(a, (bool, int)) and isinstance(e, (bool, int)) and bool(a) == bool(e) \
            and a in (0, 1, True, False)
    if isinstance(e, str) or isinstance(a, str):
        return a == e
    if isinstance(e, Mapping):
        return isinstance(a, Mapping) and set(map(_plain, a)) == set(map(_plain, e)) and all(
            answers_equal(a[k], e[k], rtol, atol) for k in e)
    if isinstance(e, (int, float)) and isinstance(a, (int, float)):
        return math.isclose(float(a), float(e), rel_tol=rtol, abs_tol=atol)
    if isinstance(e, (torch.Tensor, Sequence)) or isinstance(a, (torch.Tensor, Sequence)):
        if isinstance(a, Sequence) and isinstance(e, Sequence) and (
                any(isinstance(v, str) for v in a) or any(isinstance(v, str) for v in e)):
            return len(a) == len(e) and all(answers_equal(x, y, rtol, atol) for x, y in zip(a, e))
        try:
            ta = torch.as_tensor(a if isinstance(a, torch.Tensor) else list(map(_plain, a))).double()
            te = torch.as_tensor(e if isinstance(e, torch.Tensor) else list(map(_plain, e))).double()
        except (TypeError, ValueError, RuntimeError):
            return False
        return ta.shape == te.shape and bool(torch.allclose(ta, te, rtol=rtol, atol=atol))
    return a == e


def report(exercise: str, answer: Any, expected: Any = None, *,
           correct: Callable[[Any], bool] | None = None, hint: str = "",
           rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Print (or, in strict mode, raise) the verdict on one exercise; return whether it is right.

    Parameters
    ----------
    exercise : str
        Its name as the notebook's heading gives it, e.g. ``"Exercise 2"``.
    answer : Any
        What the student stored; ``...`` means not attempted yet.
    expected : Any, optional
        The right answer, compared with :func:`answers_equal`; never printed.
    correct : callable, optional
        Instead of ``expected``: a predicate on the answer (for answers with several right forms).
    hint : str
        Printed on a wrong answer: what to look at, never the answer itself.

    Examples
    --------
    >>> report("Exercise 1", ..., 3)
    Exercise 1: not attempted yet. Replace `...` with your answer; open the 'Solution' cell right below this one to compare.
    False
    >>> report("Exercise 1", torch.tensor(3), 3)
    Exercise 1: correct!
    True
    >>> report("Exercise 1", 4, 3, hint="count from 0")
    Exercise 1: not quite. Hint: count from 0
    False
    """
    if is_placeholder(answer):
        message = (f"{exercise}: not attempted yet. Replace `...` with your answer; "
                   f"{SOLUTION_HINT} to compare.")
        if strict():
            raise ExerciseError(message)
        print(message)
        return False
    try:
        ok = bool(correct(answer)) if correct is not None else answers_equal(answer, expected, rtol, atol)
    except Exception as err:  # a malformed answer is a wrong answer, with the reason
        ok, hint = False, f"{hint} (checking it raised {type(err).__name__}: {err})".strip()
    if ok:
        print(f"{exercise}: correct!")
        return True
    message = f"{exercise}: not quite." + (f" Hint: {hint}" if hint else "")
    if strict():
        raise ExerciseError(message)
    print(message)
    return False
