"""The benchmark scripts run end to end in their --quick mode and print their result lines.

No timing is asserted here (the machine may be busy); only that each script exits 0, prints
the ratio and max-abs-diff lines, and that the printed differences are within 1e-4.
"""

import contextlib
import importlib.util
import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch

import puretools as pt

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
NUMBER = r"([0-9.]+(?:e[+-]?[0-9]+)?)"

pytestmark = pytest.mark.benchmark  # every test runs a benchmark script's --quick mode (not in make test-fast)


def _script(name):
    """The benchmark script ``name`` as a module, imported as ``python benchmarks/NAME`` would run it
    (its folder first on sys.path, for its sibling ``common``)."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{Path(name).stem}", BENCH / name)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def run_script(name, *args):
    """``python benchmarks/NAME --quick --threads 1 ARGS`` in this process (a process costs seconds of
    imports per script): its standard output. One thread: on a busy 2-core machine two OpenMP
    threads can be 20x slower; the test process's thread count is restored afterwards."""
    argv = ["--quick", "--threads", "1", *args]
    out, threads, old_argv = io.StringIO(), torch.get_num_threads(), sys.argv
    sys.argv = [str(BENCH / name), *argv]  # what the script records as its command line
    try:
        with contextlib.redirect_stdout(out):
            code = _script(name).main(argv)
    finally:
        sys.argv = old_argv
        torch.set_num_threads(threads)
    assert code in (0, None), f"{name} {' '.join(argv)} returned {code}\nstdout:\n{out.getvalue()}"
    return out.getvalue()


def max_abs_diffs(out):
    values = [float(v) for v in re.findall(r"^MAX_ABS_DIFF .*?: " + NUMBER, out, flags=re.MULTILINE)]
    assert values, f"no MAX_ABS_DIFF line in:\n{out}"
    return values


def ratios(out):
    values = [float(v) for v in re.findall(r"^RATIO [^:]*: " + NUMBER, out, flags=re.MULTILINE)]
    assert values, f"no RATIO line in:\n{out}"
    return values


def test_bench_circuits_quick_with_a_memory_bound():
    """One run for both (the toy run below covers the default batch sizes): the comparison and the plan."""
    out = run_script("bench_circuits.py", "--max-memory", "0.05")
    assert "reference loop (CondAttribution)" in out and "puretools.circuit_attributions" in out
    assert all(r > 0 for r in ratios(out))
    assert all(d <= 1e-4 for d in max_abs_diffs(out))
    assert "machine:" in out and "peak memory" in out
    plan = re.search(r"--max-memory 0.05 GiB: .* -> batch size (\d+), image chunk (\d+)", out)
    assert plan, out
    assert f"puretools batch_size={plan[1]} image_chunk={plan[2]};" in out


def test_bench_circuits_toy_quick():
    """Runs on the shipped toy model, or says clearly that it is not built yet."""
    out = run_script("bench_circuits.py", "--model", "toy")
    if "SKIPPED toy" in out:
        pytest.skip("toy checkpoint not built: " + out.split("SKIPPED toy:", 1)[1].strip()[:200])
    assert all(r > 0 for r in ratios(out))
    assert all(d <= 1e-4 for d in max_abs_diffs(out))


def test_bench_references_quick():
    out = run_script("bench_references.py")
    assert "plain forward (whole model)" in out and "puretools.collect_references" in out
    assert all(r > 0 for r in ratios(out))
    assert all(d <= 1e-4 for d in max_abs_diffs(out))
    assert "from JPEG" in out
    rows = re.findall(r"^\s+(\d+)\s+" + NUMBER + r"\s+" + NUMBER, out, flags=re.MULTILINE)
    assert len(rows) == 2  # workers 0 and 1


def test_bench_pipeline_quick():
    out = run_script("bench_pipeline.py")
    assert re.search(r"^PIPELINE " + NUMBER + " s", out, flags=re.MULTILINE), out
    assert all(d <= 1e-4 for d in max_abs_diffs(out))


def test_bench_vit_circuits_quick():
    out = run_script("bench_vit_circuits.py")
    assert "per-neuron loop (autograd)" in out and "puretools.circuit_attributions" in out
    assert "kind='tokens'" in out and "extrapolated" in out
    assert all(r > 0 for r in ratios(out))
    assert all(d <= 1e-4 for d in max_abs_diffs(out))
    assert "machine:" in out and "peak memory" in out


@pytest.mark.parametrize("planted", [False, True], ids=["natural", "planted"])
def test_bench_toy_vit_quick(planted, tmp_path):
    """The toy ViT's scores against causal labels (natural neurons) and against planted sources."""
    out_json = tmp_path / "toy_vit.json"
    out = run_script("bench_toy_vit.py", *(["--planted"] if planted else []), "--json", str(out_json))
    assert "load average (1 min) at end" in out and out_json.exists()
    if not planted:
        assert "layer blocks.3.mlp.act (8 neurons)" in out
        return
    assert "kind='tokens'" in out and "3 of " in out
    rows = re.findall(r"^(PURE-gradient|PURE-LRP|act-mean|act-peak|act-peak-lower)\s+" + NUMBER + r" \+- " + NUMBER
                      + r"\s+" + NUMBER + r" \+- " + NUMBER, out, flags=re.MULTILINE)  # fmt: skip
    assert [r[0] for r in rows] == ["PURE-gradient", "PURE-LRP", "act-mean", "act-peak", "act-peak-lower"], out
    assert all(-1 <= float(r[i]) <= 1 for r in rows for i in (1, 3)), rows


def test_bench_disentangle_legacy_quick_prints_one_row_per_method(tmp_path):
    out_json = tmp_path / "quick.json"
    out = run_script("bench_disentangle.py", "--legacy", "--json", str(out_json))
    table = out.split("mean ARI against ground truth", 1)[1].splitlines()[2:2 + len(pt.COMPARISON_METHODS)]
    assert [row.split()[0] for row in table] == list(pt.COMPARISON_METHODS)
    saved = json.loads(out_json.read_text())
    assert saved["models"][0]["model"] == "shipped" and len(saved["models"][0]["planted_pairs"]) == 4
    for m in pt.COMPARISON_METHODS:
        for case in pt.COMPARISON_CASES:
            assert -0.5 <= saved["table"][m][case]["mean"] <= 1
    # the balance that chose the planted pairs is ground truth only, most balanced first
    balance = saved["models"][0]["planted_balance"]
    assert balance == sorted(balance, reverse=True) and balance[-1] > 0.3
    # on planted neurons PURE's circuits find the two sources far above chance
    assert saved["table"]["PURE-gradient"]["planted"]["mean"] > 0.5
