"""Files shipped with puretools: the toy world's checkpoint and record, the notebooks, saved benchmark results.

In the source tree each lives once, in the top-level folders ``data/``, ``notebooks/`` and
``benchmarks/results/``. ``pyproject.toml`` maps those folders into the package as
``puretools._data``, ``puretools._notebooks`` and ``puretools._results``, so a wheel carries
them and :mod:`importlib.resources` finds them wherever puretools is installed (a wheel or an
editable install). Only a checkout used without installing it (on ``PYTHONPATH``) has no
such packages; then the folders beside the package are used.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from .errors import PuretoolsError

__all__ = ["load_benchmark_results", "notebook_files", "resource_path"]

#: resource package (under puretools) -> the folder of the source tree it is made from
FOLDERS = {"_data": "data", "_notebooks": "notebooks", "_results": "benchmarks/results"}


def resource_path(package: str, *parts: str) -> Path:
    """The path of ``parts`` inside the shipped folder ``package`` (``"_data"``, ``"_notebooks"``, ``"_results"``).

    The path need not exist (e.g. a checkpoint that is still to be written).

    Examples
    --------
    >>> resource_path("_data", "toyworld", "model.safetensors").name
    'model.safetensors'
    >>> resource_path("_data", "toyworld", "model.safetensors").is_file()
    True
    """
    if package not in FOLDERS:
        raise PuretoolsError(f"package must be one of {sorted(FOLDERS)}, not {package!r}.")
    try:
        root: Any = importlib.resources.files(f"puretools.{package}")
    except ModuleNotFoundError:  # a checkout on sys.path, not installed: the folder beside the package
        return Path(__file__).resolve().parent.parent.joinpath(FOLDERS[package], *parts)
    if not isinstance(root, os.PathLike):  # a namespace package (a folder without __init__.py)
        spec = importlib.util.find_spec(f"puretools.{package}")
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if len(locations) != 1:
            raise PuretoolsError(
                f"puretools.{package} is not one folder on disk ({locations}); reinstall puretools "
                "(pip install . or pip install -e .)."
            )
        root = locations[0]
    return Path(root).joinpath(*parts)


def notebook_files() -> list[Path]:
    """The shipped notebooks in teaching order (``01_...`` to ``07_...``; 05b and 05c after 05).

    Examples
    --------
    >>> [p.name[:3] for p in notebook_files()][:2]
    ['01_', '02_']
    """
    return sorted(resource_path("_notebooks").glob("[0-9][0-9]*_*.ipynb"))


def load_benchmark_results(name: str) -> dict[str, Any]:
    """The saved results of a benchmark: ``benchmarks/results/<name>.json`` as a dict.

    Examples
    --------
    >>> "machine" in load_benchmark_results("disentangle")
    True
    """
    path = resource_path("_results", f"{name}.json")
    if not path.is_file():
        have = sorted(p.stem for p in resource_path("_results").glob("*.json"))
        raise PuretoolsError(f"There are no saved results of the benchmark {name!r}; saved: {have}.")
    return json.loads(path.read_text())
