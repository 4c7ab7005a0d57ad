"""Tests of puretools.disentangle and its benchmark script: runs offline, one row per method."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from puretools.disentangle import CASES, METHODS, ToyComparison, aggregate, format_table

ROOT = Path(__file__).resolve().parents[1]


def comparison(value: float) -> ToyComparison:
    return ToyComparison({m: {c: {"ari": value + i / 100} for c in CASES} for i, m in enumerate(METHODS)},
                         [], [], [], [], {}, {})  # fmt: skip


def test_aggregate_mean_and_sample_spread():
    table = aggregate([comparison(0.5), comparison(0.7), comparison(0.9)])
    cell = table["PURE-LRP"]["planted"]
    assert cell["mean"] == pytest.approx(0.71) and cell["sd"] == pytest.approx(np.std([0.51, 0.71, 0.91], ddof=1))
    assert (cell["min"], cell["max"]) == (0.51, 0.91)
    rows = format_table(table).splitlines()
    assert [r.split()[0] for r in rows[1:]] == list(METHODS)
    assert "0.71 +- 0.20 (0.51-0.91)" in rows[2]


@pytest.mark.subprocess
def test_quick_benchmark_prints_one_row_per_method(tmp_path):
    out = tmp_path / "quick.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_disentangle.py"), "--quick",
                             "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("mean ARI against ground truth", 1)[1].splitlines()[2:2 + len(METHODS)]
    assert [row.split()[0] for row in table] == list(METHODS)
    saved = json.loads(out.read_text())
    assert saved["models"][0]["model"] == "shipped" and len(saved["models"][0]["planted_pairs"]) == 4
    for m in METHODS:
        for case in CASES:
            assert -0.5 <= saved["table"][m][case]["mean"] <= 1
    # the balance that chose the planted pairs is ground truth only, most balanced first
    balance = saved["models"][0]["planted_balance"]
    assert balance == sorted(balance, reverse=True) and balance[-1] > 0.3
    # on planted neurons PURE's circuits find the two sources far above chance
    assert saved["table"]["PURE-gradient"]["planted"]["mean"] > 0.5
