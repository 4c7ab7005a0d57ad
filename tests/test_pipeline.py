"""Pipeline: each step equals the public function it calls, is computed once, and keeps the defaults."""

import pytest
import torch

import puretools as pt
from puretools import toyworld
from puretools.config import cache_dir

NEURONS = [1, 5]


@pytest.fixture(scope="module")
def small_toy():
    return pt.load_model("toy"), toyworld.ToyWorld("test", n=400)


def test_steps_equal_the_public_functions_on_the_toy_world(small_toy):
    model, data = small_toy
    pipe = pt.Pipeline(model, data, toyworld.LAYER, toyworld.LOWER_LAYER, n_ref=30)
    refs = pt.collect_references(model, data, toyworld.LAYER, n_ref=30, progress=False)
    got = pipe.references()
    assert torch.equal(got.indices, refs.indices) and torch.equal(got.values, refs.values)
    for method in ("gradient", "lrp"):
        circuits = pt.circuit_attributions(model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs,
                                           neurons=NEURONS, method=method, progress=False)
        assert torch.equal(pipe.circuits(NEURONS, method=method), circuits), method
    circuits = pt.circuit_attributions(model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs, neurons=NEURONS,
                                       progress=False)
    vn = pt.VirtualNeurons(seed=0).fit(circuits, k=2, neurons=NEURONS)
    mine = pipe.virtual_neurons(neurons=NEURONS)
    assert torch.equal(mine.labels, vn.labels) and mine.neurons == NEURONS and mine.ks == [2, 2]
    assert all(torch.equal(a, b) for a, b in zip(mine.centroids, vn.centroids, strict=True))
    acts = pt.activation_features(model, data, toyworld.LAYER, refs, neurons=NEURONS)
    assert torch.equal(pipe.activations(NEURONS), acts)
    heat = pt.reference_heatmaps(model, data, toyworld.LAYER, refs, NEURONS, batch_size=256)
    assert torch.equal(pipe.reference_heatmaps(NEURONS), heat)
    patches = torch.stack([pt.reference_patches(model, data, toyworld.LAYER, refs, n, size=16,
                                                denormalize=toyworld.denormalize, heatmaps=heat[j])
                           for j, n in enumerate(NEURONS)])
    assert torch.equal(pipe.patches(NEURONS, size=16, denormalize=toyworld.denormalize), patches)
    images = pipe.reference_images([NEURONS[0]], toyworld.denormalize)[0, :3]
    heat_v, full = pipe.heatmaps(NEURONS[0], images, neurons=NEURONS, return_full=True)
    want_v, want_full = pt.virtual_heatmaps(model, images, toyworld.LAYER, toyworld.LOWER_LAYER, mine, NEURONS[0],
                                            method="gradient", return_full=True)
    assert torch.equal(heat_v, want_v) and torch.equal(full, want_full)


def test_each_step_runs_once_and_a_subset_of_all_circuits_is_read_from_them(small_toy, monkeypatch):
    model, data = small_toy
    pipe = pt.Pipeline(model, data, toyworld.LAYER, toyworld.LOWER_LAYER, n_ref=10)
    calls = []
    real = pt.pipeline.circuit_attributions
    monkeypatch.setattr(pt.pipeline, "circuit_attributions", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    assert pipe.references() is pipe.references()
    everything = pipe.circuits()
    assert pipe.circuits() is everything and len(calls) == 1 and calls[0]["neurons"] is None
    torch.testing.assert_close(pipe.circuits(NEURONS), everything[NEURONS])
    assert len(calls) == 1
    assert pipe.virtual_neurons(k=3) is pipe.virtual_neurons(k=3) is not pipe.virtual_neurons(k=2)
    assert len(calls) == 1


def test_defaults_are_stated_once():
    import inspect

    from puretools.widgets import prepare_explorer

    assert (pt.pipeline.DEFAULT_N_REF, pt.pipeline.DEFAULT_METHOD, pt.pipeline.DEFAULT_K) == (100, "gradient", 2)
    init = inspect.signature(pt.Pipeline).parameters
    assert init["n_ref"].default == 100 and init["method"].default == "gradient" and init["k"].default == 2
    assert init["heatmap_method"].default is None  # the heatmaps follow the circuits' rule
    evaluate = inspect.signature(pt.evaluate_toy_world).parameters
    assert evaluate["method"].default == "gradient" and evaluate["k"].default == 2
    explorer = inspect.signature(prepare_explorer).parameters
    assert explorer["method"].default == "gradient" and explorer["heatmap_method"].default is None
    assert pt.circuits.Method is pt.routing.Method  # one definition


def test_heatmap_method_follows_method_unless_given(small_toy):
    model, data = small_toy
    args = (model, data, toyworld.LAYER, toyworld.LOWER_LAYER)
    assert pt.Pipeline(*args).heatmap_method == "gradient"
    assert pt.Pipeline(*args, method="lrp").heatmap_method == "lrp"
    assert pt.Pipeline(*args, heatmap_method="lrp").heatmap_method == "lrp"


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "LRP"}, "method must be 'gradient' or 'lrp', not 'LRP'"),
    ({"heatmap_method": "grad"}, "heatmap_method must be 'gradient' or 'lrp', not 'grad'"),
    ({"references": torch.zeros(3, 2, dtype=torch.long)}, "references must be puretools.References"),
])
def test_bad_settings_are_clear_errors(small_toy, kwargs, message):
    model, data = small_toy
    with pytest.raises(pt.PuretoolsError, match=message):
        pt.Pipeline(model, data, toyworld.LAYER, toyworld.LOWER_LAYER, **kwargs)


def test_the_session_pipeline_matches_the_notebooks_settings(toy_pipeline):
    refs = toy_pipeline.references()
    assert refs.indices.shape == (8, 100) and toy_pipeline.cache_dir == cache_dir()
