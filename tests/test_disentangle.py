"""Tests of puretools.disentangle and its benchmark script: runs offline, one row per method."""

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


@pytest.mark.slow
def test_comparison_and_its_sae_are_cached(tmp_path, monkeypatch):
    """A rerun with the same model, images and settings reads the comparison back (no SAE training,
    no circuits); the SAE alone is also cached, so another comparison of the same model reuses it."""
    import torch

    import puretools as pt
    import puretools.disentangle as dis
    import puretools.sae as sae_module
    from puretools import toyworld

    model = pt.load_model("toy")
    test, train = toyworld.ToyWorld("test", n=300), toyworld.ToyWorld("train", n=60)
    first = dis.compare_on_toy(model, test, train, n_pairs=1, n_ref=10, cache_dir=tmp_path)

    def fails(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(dis, "_compare_on_toy", fails)
    again = dis.compare_on_toy(model, test, train, n_pairs=1, n_ref=10, cache_dir=tmp_path)
    assert again == first
    with pytest.raises(AssertionError, match="recomputed"):  # other settings: another entry
        dis.compare_on_toy(model, test, train, n_pairs=2, n_ref=10, cache_dir=tmp_path)
    monkeypatch.undo()

    trained = sae_module.train_layer_sae(model, train, "layer4", epochs=2, cache_dir=tmp_path)
    monkeypatch.setattr(sae_module, "_positions", fails)  # a cached SAE reads no activations
    loaded = sae_module.train_layer_sae(model, train, "layer4", epochs=2, cache_dir=tmp_path)
    assert torch.allclose(loaded.dictionary, trained.dictionary, atol=1e-6) and loaded.scale == trained.scale
    assert (loaded.r2, loaded.dead) == (trained.r2, trained.dead)
    x = torch.rand(7, 8)
    assert torch.allclose(loaded.encode(x), trained.encode(x), atol=1e-5)
