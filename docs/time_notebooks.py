"""Write each notebook's measured runtime into its header and into the README's table.

``make demo`` (``python -m puretools demo``) executes every notebook and records its wall time,
with the machine's load average before and after, in ``build/notebook_times.json`` (a demo never
changes the checkout, so ``make test`` after ``make demo`` on any machine still passes). This
script makes those times the stated runtimes: it copies them to ``docs/notebook_times.json`` (the
record the README links to) and rewrites the README table and each notebook's header::

    python docs/time_notebooks.py          # take build/notebook_times.json as the stated runtimes
    python docs/time_notebooks.py --check  # exit 1 if a stated runtime is off by more than 1.5x

A stated runtime is the measured one, rounded (5 s steps below 100 s, half minutes above), so
it stays within :data:`TOLERANCE` of the measurement; ``tests/test_pages.py`` checks that.
Measure on a quiet machine: with other jobs running every time is inflated (the file records
the load, and the README says when it was high).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMES = ROOT / "docs" / "notebook_times.json"  # the record behind the stated runtimes (committed)
DEMO_TIMES = ROOT / "build" / "notebook_times.json"  # what the last `make demo` measured
README = ROOT / "README.md"
NOTEBOOKS = ROOT / "notebooks"
#: A stated runtime may differ from the measured one by at most this factor, either way.
TOLERANCE = 1.5

# "**Runtime**: about 45 s on a 2-core CPU" (07: "**Runtime**: in smoke mode (...) about 45 s on a ...")
HEADER = re.compile(r"(\*\*Runtime\*\*:[^*]*?about )(\d+(?:\.\d+)?) (s|min)( on a )(\d+)(-core CPU)")
# "| 05b | [title](notebooks/05b_...ipynb) | what you learn | ~45 s |"
ROW = re.compile(r"^(\| (\w+) \| \[[^\]]*\]\(notebooks/[^)]*\) \|[^\n]*\| ~)(\d+(?:\.\d+)?) (s|min)( [^|\n]*)?( \|)$",
                 re.M)
LOAD_LINE = re.compile(r"^Runtimes: measured by `make demo`.*$", re.M)


def format_runtime(seconds: float) -> tuple[str, str]:
    """``("45", "s")`` or ``("2.5", "min")``: 5 s steps below 100 s, half minutes above.

    Examples
    --------
    >>> format_runtime(43.2), format_runtime(2.0), format_runtime(151)
    (('45', 's'), ('5', 's'), ('2.5', 'min'))
    """
    if seconds < 97.5:
        return str(max(5, int(5 * round(seconds / 5)))), "s"
    minutes = round(seconds / 30) / 2
    return (f"{minutes:.0f}" if minutes.is_integer() else f"{minutes:.1f}"), "min"


def stated_seconds(value: str, unit: str) -> float:
    """Seconds of a stated runtime such as ``("2.5", "min")``."""
    return float(value) * (60 if unit == "min" else 1)


def load_times(path: Path = TIMES) -> dict:
    """The record ``python -m puretools demo`` writes: ``machine`` and ``notebooks[stem]['seconds']``."""
    return json.loads(Path(path).read_text())


def notebook_prefix(stem: str) -> str:
    """``"05b"`` for ``"05b_ground_truth_and_baselines"``."""
    return stem.split("_", 1)[0]


def stated_runtimes() -> dict[str, dict[str, float]]:
    """``{prefix: {"header": seconds, "readme": seconds}}`` as the docs state them now."""
    found: dict[str, dict[str, float]] = {}
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb")):
        first = "".join(json.loads(nb.read_text())["cells"][0]["source"])
        m = HEADER.search(first)
        if m:
            found.setdefault(notebook_prefix(nb.stem), {})["header"] = stated_seconds(m[2], m[3])
    for m in ROW.finditer(README.read_text()):
        found.setdefault(m[2], {})["readme"] = stated_seconds(m[3], m[4])
    return found


def load_note(record: dict) -> str:
    """The README's line that says where and under what load the runtimes were measured."""
    machine, loads = record["machine"], [v["load_avg_1min_before"] for v in record["notebooks"].values()]
    cores = machine.get("cpu_count") or 1
    # the load before a notebook includes the notebooks run just before it (a 1-minute average):
    # other jobs ran only if even the quietest moment was busy
    busy = min(loads) > 0.5 * cores
    return (f"Runtimes: measured by `make demo` on {machine['date']}, {cores}-core CPU, load average "
            f"{min(loads):.1f}-{max(loads):.1f} ([docs/notebook_times.json](docs/notebook_times.json))"
            + ("; other jobs were running, so these times are inflated." if busy
               else "; the demo's own notebooks count in that load."))


def write(record: dict) -> list[str]:
    """Rewrite the headers and the README table from ``record``; return what changed."""
    changed = []
    cores = record["machine"].get("cpu_count") or 1
    times = {notebook_prefix(stem): v["seconds"] for stem, v in record["notebooks"].items()}
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb")):
        prefix = notebook_prefix(nb.stem)
        if prefix not in times:
            continue
        value, unit = format_runtime(times[prefix])
        data = json.loads(nb.read_text())
        first = "".join(data["cells"][0]["source"])
        new = HEADER.sub(lambda m: f"{m[1]}{value} {unit}{m[4]}{cores}{m[6]}", first, count=1)
        if new != first:
            data["cells"][0]["source"] = new.splitlines(keepends=True)
            nb.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            changed.append(nb.name)
    text = README.read_text()

    def row(m: re.Match) -> str:
        if m[2] not in times:
            return m[0]
        value, unit = format_runtime(times[m[2]])
        return f"{m[1]}{value} {unit}{m[5] or ''}{m[6]}"

    new = ROW.sub(row, text)
    new = LOAD_LINE.sub(lambda _m: load_note(record), new)
    if new != text:
        README.write_text(new)
        changed.append(README.name)
    return changed


def problems(record: dict, tolerance: float = TOLERANCE) -> list[str]:
    """Every stated runtime off by more than ``tolerance`` from the measured one, or missing."""
    stated, out = stated_runtimes(), []
    for stem, v in record["notebooks"].items():
        prefix, measured = notebook_prefix(stem), float(v["seconds"])
        for where in ("header", "readme"):
            s = stated.get(prefix, {}).get(where)
            if s is None:
                out.append(f"{stem}: no runtime stated in its {where}")
            elif not measured / tolerance <= s <= measured * tolerance:
                out.append(f"{stem}: {where} states {s:.0f} s, `make demo` measured {measured:.0f} s")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", default=None,
                        help=f"the JSON file make demo wrote (default: {DEMO_TIMES.relative_to(ROOT)}; "
                             f"with --check: {TIMES.relative_to(ROOT)})")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 on a runtime off by > 1.5x")
    args = parser.parse_args(argv)
    path = Path(args.times) if args.times else TIMES if args.check else DEMO_TIMES
    record = load_times(path)
    if not args.check and path.resolve() != TIMES.resolve():
        TIMES.write_text(path.read_text())  # the measurements become the record
    if args.check:
        bad = problems(record)
        print("\n".join(bad) or "every stated runtime is within 1.5x of its measurement")
        sys.exit(1 if bad else 0)
    print("rewrote:", ", ".join(write(record)) or "nothing (already up to date)")


if __name__ == "__main__":
    main()
