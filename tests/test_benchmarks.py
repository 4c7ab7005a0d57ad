"""The benchmark scripts run end to end in their --quick mode and print their result lines.

No timing is asserted here (the machine may be busy); only that each script exits 0, prints
the ratio and max-abs-diff lines, and that the printed differences are within 1e-4.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
NUMBER = r"([0-9.]+(?:e[+-]?[0-9]+)?)"

pytestmark = pytest.mark.subprocess  # every test runs a benchmark script in its own process


def run_script(name, *args, timeout=120):
    # one thread: on a busy 2-core machine two OpenMP threads can be 20x slower
    cmd = [sys.executable, str(BENCH / name), "--quick", "--threads", "1", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def max_abs_diffs(out):
    values = [float(v) for v in re.findall(r"^MAX_ABS_DIFF .*?: " + NUMBER, out, flags=re.MULTILINE)]
    assert values, f"no MAX_ABS_DIFF line in:\n{out}"
    return values


def ratios(out):
    values = [float(v) for v in re.findall(r"^RATIO [^:]*: " + NUMBER, out, flags=re.MULTILINE)]
    assert values, f"no RATIO line in:\n{out}"
    return values


def test_bench_circuits_quick():
    out = run_script("bench_circuits.py")
    assert "reference loop (CondAttribution)" in out and "puretools.circuit_attributions" in out
    assert all(r > 0 for r in ratios(out))
    assert all(d <= 1e-4 for d in max_abs_diffs(out))
    assert "machine:" in out and "peak memory" in out


def test_bench_circuits_quick_with_a_memory_bound():
    out = run_script("bench_circuits.py", "--max-memory", "0.05")
    plan = re.search(r"--max-memory 0.05 GiB: .* -> batch size (\d+), image chunk (\d+)", out)
    assert plan, out
    assert f"puretools batch_size={plan[1]} image_chunk={plan[2]};" in out
    assert all(d <= 1e-4 for d in max_abs_diffs(out))


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
