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

__all__ = ["ExerciseError", "answers_equal", "diagnose", "is_placeholder", "report", "strict"]

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
    >>> answers_equal(True, 1), answers_equal(1, True)  # a count is not a truth value
    (False, True)
    """
    a, e = _plain(answer), _plain(expected)
    if isinstance(e, bool):
        return isinstance(a, (bool, int)) and a in (0, 1) and bool(a) == e
    if isinstance(a, bool):  # True is not the count 1, nor a neuron id
        return False
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


def _kind(x: Any) -> str:
    """'bool', 'int', 'float', 'str', 'mapping', 'sequence' or 'other' (after :func:`_plain`)."""
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, int):
        return "int"
    if isinstance(x, float):
        return "float"
    if isinstance(x, str):
        return "str"
    if isinstance(x, Mapping):
        return "mapping"
    if isinstance(x, (torch.Tensor, Sequence)):
        return "sequence"
    return "other"


_NAMES = {"bool": "True or False", "int": "a whole number (int)", "float": "a number",
          "str": "a string", "mapping": "a dict", "sequence": "a list or tensor", "other": "something else"}


def _described(x: Any, raw: Any) -> str:
    """How an answer looks, without its value: 'a list of 4 items', 'a tensor of shape (50, 2)'."""
    kind = _kind(x)
    if isinstance(raw, (torch.Tensor, np.ndarray)) and getattr(raw, "ndim", 0) > 0:
        return f"a {'tensor' if isinstance(raw, torch.Tensor) else 'numpy array'} of shape {tuple(raw.shape)}"
    if kind == "sequence":
        return f"a {type(raw).__name__} of {len(x)} item{'' if len(x) == 1 else 's'}"
    if kind == "mapping":
        return f"a dict of {len(x)} entries"
    return {"bool": "a bool", "int": "an int", "float": "a float", "str": "a string"}.get(kind, f"a {type(raw).__name__}")


def _how_far(a: float, e: float) -> str:
    """'off by 3' or 'off by about 12 % of the expected value', never the value itself."""
    gap = abs(a - e)
    if float(e).is_integer() and float(a).is_integer():
        return f"off by {gap:.0f}"
    if e == 0:
        return f"off by {gap:.2g}"
    return f"off by about {100 * gap / abs(e):.2g} % of the expected value"


def diagnose(answer: Any, expected: Any, categorical: bool = False) -> str:
    """What is wrong with ``answer``: its type, shape, length, or value (and how far off).

    Never says the expected value. ``categorical`` answers (a neuron, a channel, a concept id)
    are either right or wrong: no "off by".

    Examples
    --------
    >>> diagnose([1, 2, 3], [1, 2, 3, 4])
    'expected 4 items, got 3.'
    >>> diagnose(0.5, 0.4)
    'right type, wrong value: off by about 25 % of the expected value.'
    >>> diagnose(torch.zeros(50, 1), torch.zeros(50))
    'expected shape (50,), got a tensor of shape (50, 1).'
    >>> diagnose(True, 3)
    'expected a whole number (an int), got a bool.'
    >>> diagnose(2, 5, categorical=True)
    'right type (an int), but not the right one.'
    """
    a, e = _plain(answer), _plain(expected)
    ka, ke = _kind(a), _kind(e)
    if ke == "int" and ka == "bool":
        return "expected a whole number (an int), got a bool."
    if ke == "int" and ka == "float":
        return "expected a whole number (an int), got a float." if categorical or not float(a).is_integer() \
            else "right type, wrong value: " + _how_far(float(a), float(e)) + "."
    if ke == "float" and ka == "int" and not isinstance(a, bool):
        ka = "float"
    if ka != ke:
        if ke == "sequence":
            size = f" of shape {tuple(e.shape)}" if isinstance(e, torch.Tensor) and e.ndim > 1 else f" of {len(e)} items"
            return f"expected a list or tensor{size}, got {_described(a, answer)}."
        return f"expected {_NAMES[ke]}, got {_described(a, answer)}."
    if ke in ("int", "float"):
        if categorical:
            return f"right type ({'an int' if ke == 'int' else 'a number'}), but not the right one."
        return "right type, wrong value: " + _how_far(float(a), float(e)) + "."
    if ke == "bool":
        return "right type, but the wrong truth value."
    if ke == "str":
        return "right type (a string), but not the right one."
    if ke == "mapping":
        missing, extra = [k for k in e if k not in a], [k for k in a if k not in e]
        if missing or extra:
            return (f"expected {len(e)} entries with the keys {sorted(e, key=str)}, got {len(a)}"
                    + (f" (missing {sorted(missing, key=str)})" if missing else "") + ".")
        wrong = [k for k in e if not answers_equal(a[k], e[k])]
        return "wrong value for " + ", ".join(f"{k!r} ({diagnose(a[k], e[k], categorical).rstrip('.')})"
                                              for k in wrong[:3]) + "."
    if ke == "sequence":
        try:
            ta = torch.as_tensor(a if isinstance(a, torch.Tensor) else list(map(_plain, a)))
            te = torch.as_tensor(e if isinstance(e, torch.Tensor) else list(map(_plain, e)))
        except (TypeError, ValueError, RuntimeError):
            if len(a) != len(e):
                return f"expected {len(e)} items, got {len(a)}."
            n = sum(not answers_equal(x, y) for x, y in zip(a, e))
            return f"right length, but {n} of {len(e)} items are wrong."
        if ta.shape != te.shape:
            if ta.ndim == te.ndim == 1:
                return f"expected {len(te)} items, got {len(ta)}."
            return f"expected shape {tuple(te.shape)}, got {_described(a, answer)}."
        if te.numel() == 0:
            return ""
        close = torch.isclose(ta.double(), te.double(), rtol=1e-4, atol=1e-6)
        n = int((~close).sum())
        text = f"right shape, but {n} of {te.numel()} entries are wrong"
        if not categorical and te.is_floating_point() and n:
            text += f" (largest difference {float((ta.double() - te.double()).abs().max()):.2g})"
        elif not categorical and n and sorted(ta.flatten().tolist()) == sorted(te.flatten().tolist()):
            text += " (the right values in the wrong order)"
        return text + "."
    return ""


def report(exercise: str, answer: Any, expected: Any = None, *,
           correct: Callable[[Any], bool] | None = None, hint: str = "",
           rtol: float = 1e-4, atol: float = 1e-6, like: Any = None, categorical: bool = False) -> bool:
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
        Printed on a wrong answer after what is wrong with it (:func:`diagnose`: type, shape,
        length, or value and how far off): what to look at, never the answer itself. Left out
        when the answer's type, shape or length is wrong, since the method may be right.
    like : Any, optional
        With ``correct``: one right answer, used only to say what is wrong (type, length) with
        a wrong one.
    categorical : bool
        The answer is an id (a neuron, a channel, a concept): a wrong one is not "off by" anything.

    Examples
    --------
    >>> report("Exercise 1", ..., 3)
    Exercise 1: not attempted yet. Replace `...` with your answer; open the 'Solution' cell right below this one to compare.
    False
    >>> report("Exercise 1", torch.tensor(3), 3)
    Exercise 1: correct!
    True
    >>> report("Exercise 1", 4, 3, hint="count from 0")
    Exercise 1: not quite: right type, wrong value: off by 1. Hint: count from 0
    False
    >>> report("Exercise 1", [4], 3, hint="count from 0")  # the form is wrong: no method hint
    Exercise 1: not quite: expected a whole number (int), got a list of 1 item.
    False
    """
    if is_placeholder(answer):
        message = (f"{exercise}: not attempted yet. Replace `...` with your answer; "
                   f"{SOLUTION_HINT} to compare.")
        if strict():
            raise ExerciseError(message)
        print(message)
        return False
    what = ""
    try:
        ok = bool(correct(answer)) if correct is not None else answers_equal(answer, expected, rtol, atol)
    except Exception as err:  # a malformed answer is a wrong answer, with the reason
        ok, what = False, f"checking it raised {type(err).__name__}: {err}."
    if ok:
        print(f"{exercise}: correct!")
        return True
    reference = expected if correct is None else like
    if reference is not None:  # what is wrong with the answer, if we can say (else the error, if any)
        try:
            what = diagnose(answer, reference, categorical=categorical or correct is not None and
                            _kind(_plain(reference)) == "int") or what
        except Exception:  # noqa: BLE001 - a diagnosis that fails must not hide the verdict
            pass
    if what.startswith("expected"):  # the form is wrong (type, shape, length): the method hint would mislead
        hint = ""
    message = f"{exercise}: not quite" + (f": {what}" if what else ".") + (f" Hint: {hint}" if hint else "")
    if strict():
        raise ExerciseError(message)
    print(message)
    return False
