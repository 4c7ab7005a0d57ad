"""A battery of bad inputs: every exported function and every subcommand of the command line.

Each case calls one function (or ``python -m puretools``, in-process) with one bad argument and
asserts the error type and a phrase of its message: the argument, the bad value or the fix.
Everything is tiny and built once per module, so the whole battery runs in seconds after the
fixtures. The last test checks that every function in ``puretools.__all__`` has a case here.
"""

from __future__ import annotations

import inspect
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import puretools as pt
from puretools import toyworld
from puretools.__main__ import main
from puretools.checks import (
    check_batch,
    check_choice,
    check_ids,
    check_int,
    check_names,
    check_number,
)

LAYER, LOWER = toyworld.LAYER, toyworld.LOWER_LAYER
E = pt.PuretoolsError


class Ctx:
    """Everything a case needs, built once: the toy model, a small data set, references,
    circuits, fitted virtual neurons, a planted model, a tiny SAE, a distance table."""


@pytest.fixture(scope="module")
def c():
    torch.manual_seed(0)
    ctx = Ctx()
    ctx.model = pt.load_model("toy")
    ctx.data = toyworld.ToyWorld("test", n=48)
    ctx.images = ctx.data.images[:4]
    ctx.refs = pt.collect_references(ctx.model, ctx.data, LAYER, n_ref=6, progress=False)
    ctx.circuits = pt.circuit_attributions(ctx.model, ctx.data, LAYER, LOWER, ctx.refs, neurons=[1, 4],
                                           progress=False)  # fmt: skip
    ctx.vn = pt.VirtualNeurons().fit(ctx.circuits, k=2, neurons=[1, 4], layer=LAYER, lower_layer=LOWER)
    ctx.n_channels = ctx.refs.indices.shape[0]
    ctx.vn_unnamed = pt.VirtualNeurons().fit(ctx.circuits[1:], k=2)  # neuron 4's circuits, rows named 0
    ctx.vn_other_pair = pt.VirtualNeurons().fit(ctx.circuits, k=2, neurons=[1, 4], layer="layer3",
                                                lower_layer="layer2")  # fmt: skip
    ctx.vn_wide = pt.VirtualNeurons().fit(torch.rand(2, 6, 3), k=2, neurons=[1, 4])  # 3 lower channels
    ctx.vn_big = pt.VirtualNeurons().fit(torch.rand(1, 6, ctx.circuits.shape[-1]), k=2, neurons=[500])
    ctx.planted = pt.plant_neurons(ctx.model, LAYER, pt.class_activation_units(ctx.model.fc), [(2, 10)])
    ctx.prefs = pt.collect_references(ctx.planted.model, ctx.data, ctx.planted.layer, n_ref=5, progress=False)
    ctx.other_data = toyworld.ToyWorld("test", n=48, seed=3)
    ctx.emb = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    ctx.labels = torch.tensor([0, 1] * 6)
    ctx.emb3 = ctx.emb[None].expand(2, -1, -1)  # [N=2 neurons, n_ref=12, D=5]
    ctx.table = pt.evaluate_clusterings(ctx.emb3, {"a": ctx.labels[None].expand(2, -1)})
    ctx.patches = torch.rand(6, 3, 8, 8)
    ctx.heat = torch.rand(16, 16)
    ctx.tensor_data = TensorDataset(torch.randn(10, 3, 32, 32))
    return ctx


def _sae(c):
    if not hasattr(c, "sae"):
        c.sae = pt.train_layer_sae(c.model, c.data, LAYER, epochs=1, n_images=8)
    return c.sae


def nan_images(c):
    x = c.images.clone()
    x[1, 0, 0, 0] = float("nan")
    return x


def _with_env(name, value, fn):
    """``fn()`` with the environment variable ``name`` set to ``value`` (restored afterwards)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        return fn()
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def vn_with(c, **changes):
    vn = pt.VirtualNeurons().fit(c.circuits, k=2, neurons=[1, 4], layer=LAYER, lower_layer=LOWER)
    for k, v in changes.items():
        setattr(vn, k, v)
    return vn


# (id, call, exception type, phrase of the message). Calls take the context ``c``.
def _reference_cases(name, fn):
    """The four bad-reference cases of a function called as ``fn(model, data, layer, references, ...)``."""
    return [
        (f"{name}-neurons", lambda c: fn(c.model, c.data, LAYER, c.refs, neurons=[99]), E, "99"),
        (f"{name}-layer", lambda c: fn(c.model, c.data, "layer3", c.refs), E, "collected at layer"),
        (f"{name}-batch", lambda c: fn(c.model, c.data, LAYER, c.refs, batch_size=0), E, "batch_size"),
        (f"{name}-dataset", lambda c: fn(c.model, c.other_data, LAYER, c.refs), E, "another data set"),
    ]


CASES = [
    # ---------------------------------------------------------------- checks (the shared layer)
    ("check_int-float", lambda c: check_int(2.5, "n_ref"), E, "not truncated"),
    ("check_int-bool", lambda c: check_int(True, "n_ref"), E, "must be an integer"),
    ("check_int-str", lambda c: check_int("3", "n_ref"), E, "must be an integer"),
    ("check_int-low", lambda c: check_int(0, "batch_size", low=1), E, "at least 1"),
    ("check_number-nan", lambda c: check_number(float("nan"), "lr", 0, low_open=True), E, "must be in"),
    ("check_number-str", lambda c: check_number("0.1", "lr"), E, "must be a number"),
    ("check_choice", lambda c: check_choice("LRP", "method", ("gradient", "lrp")), E, "'gradient' or 'lrp'"),
    ("check_ids-dup", lambda c: check_ids([1, 1], "neurons", 4), E, "more than once"),
    ("check_ids-float", lambda c: check_ids([0.7], "ids", 4), E, "not an integer id"),
    ("check_ids-str", lambda c: check_ids("01", "ids", 4), E, "not a string"),
    ("check_ids-range", lambda c: check_ids([4], "ids", 4), E, "out of range"),
    ("check_ids-empty", lambda c: check_ids([], "ids", 4), E, "is empty"),
    ("check_ids-float-tensor", lambda c: check_ids(torch.tensor([1.0]), "ids", 4), E, "dtype torch.float32"),
    ("check_names-str", lambda c: check_names("disc", "words"), E, "letter by letter"),
    ("check_batch-empty", lambda c: check_batch(torch.zeros(0, 3, 4, 4)), E, "is empty"),
    ("check_batch-2d", lambda c: check_batch(torch.zeros(4, 4)), E, "[B, C, H, W]"),
    ("check_batch-uint8", lambda c: check_batch(torch.zeros(1, 3, 4, 4, dtype=torch.uint8)), E, "ConvertImageDtype"),
    # ---------------------------------------------------------------- models
    ("load_model-unknown", lambda c: pt.load_model("resnet5"), E, "Unknown model name"),
    ("load_model-name-int", lambda c: pt.load_model(50), E, "must be a model name"),
    ("load_model-weights-int", lambda c: pt.load_model("toy", weights=3), E, "weights=3"),
    ("load_model-missing-file", lambda c: pt.load_model("resnet18", weights="/nonexistent/w.pth"), E, "does not exist"),
    ("load_model-device", lambda c: pt.load_model("toy", device="gpu"), E, "not a device name"),
    ("load_model-corrupt", lambda c: pt.load_model("toy", weights=c.corrupt), E, "could not be loaded"),
    ("load_model-corrupt-pth", lambda c: pt.load_model("resnet18", weights=c.corrupt_pth), E, "could not be loaded"),
    ("get_module-unknown", lambda c: pt.get_module(c.model, "layer9"), E, "layer9"),
    ("get_module-int", lambda c: pt.get_module(c.model, 4), E, "4"),
    ("layer_names-not-module", lambda c: pt.layer_names("toy"), E, "nn.Module"),
    ("canonizers_for-not-module", lambda c: pt.canonizers_for("toy"), E, "nn.Module"),
    ("canonizer_report-not-module", lambda c: pt.canonizer_report(None), E, "nn.Module"),
    ("lrp_composite-not-module", lambda c: pt.lrp_composite([1]), E, "nn.Module"),
    # ---------------------------------------------------------------- references
    ("collect-n_ref-float", lambda c: pt.collect_references(c.model, c.data, LAYER, n_ref=2.5), E, "n_ref"),
    ("collect-n_ref-zero", lambda c: pt.collect_references(c.model, c.data, LAYER, n_ref=0), E, "n_ref"),
    ("collect-n_ref-too-many", lambda c: pt.collect_references(c.model, c.data, LAYER, n_ref=49), E, "n_ref"),
    ("collect-batch_size-zero", lambda c: pt.collect_references(c.model, c.data, LAYER, n_ref=5, batch_size=0), E, "batch_size"),
    ("collect-batch_size-float", lambda c: pt.collect_references(c.model, c.data, LAYER, n_ref=5, batch_size=8.0), E, "batch_size"),
    ("collect-layer", lambda c: pt.collect_references(c.model, c.data, "layer9", n_ref=5), E, "layer9"),
    ("collect-device", lambda c: pt.collect_references(c.model, c.data, LAYER, n_ref=5, device="gpu"), E, "not a device name"),
    ("collect-empty", lambda c: pt.collect_references(c.model, TensorDataset(torch.zeros(0, 3, 32, 32)), LAYER), E, "empty"),
    ("collect-uint8", lambda c: pt.collect_references(
        c.model, TensorDataset((c.images * 50).clamp(0, 255).to(torch.uint8)), LAYER, n_ref=2, progress=False), E,
     "ConvertImageDtype"),
    ("collect-nan", lambda c: pt.collect_references(c.model, TensorDataset(nan_images(c)), LAYER, n_ref=2,
                                                    progress=False), E, "NaN"),  # fmt: skip
    ("collect-workers", lambda c: pt.collect_references(c.model, c.data, LAYER, n_ref=5, num_workers=-1), E, "num_workers"),
    ("check_references-shape", lambda c: pt.check_references(torch.zeros(3, dtype=torch.long)), E, "[channels, n_ref]"),
    ("check_references-float", lambda c: pt.check_references(torch.zeros(2, 3)), E, "integer data-set indices"),
    ("check_references-layer", lambda c: pt.check_references(c.refs, layer="layer3"), E, "collected at layer"),
    ("check_references-range", lambda c: pt.check_references(c.refs.indices + 100, c.data), E, "holds 48 images"),
    ("check_references-dataset", lambda c: pt.check_references(c.refs, c.other_data, LAYER), E, "another data set"),
    ("check_references-neurons", lambda c: pt.check_references(c.refs, c.data, LAYER, neurons=[99]), E, "99"),
    ("check_references-neurons-dup", lambda c: pt.check_references(c.refs, c.data, LAYER, neurons=[1, 1]), E,
     "repeats"),
    ("check_references-neurons-float", lambda c: pt.check_references(c.refs, c.data, LAYER, neurons=[1.5]), E, "1.5"),
    # ---------------------------------------------------------------- circuits
    ("circuits-method", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LOWER, c.refs, method="lpr"), E,
     "method"),
    ("circuits-batch_size", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LOWER, c.refs, batch_size=0), E,
     "batch_size"),
    ("circuits-batch_size-float", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LOWER, c.refs,
                                                                    batch_size=2.5), E, "batch_size"),  # fmt: skip
    ("circuits-image_chunk", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LOWER, c.refs, image_chunk=-1),
     E, "image_chunk"),
    ("circuits-neurons-empty", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LOWER, c.refs, neurons=[]), E,
     "empty"),
    ("circuits-neurons-range", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LOWER, c.refs,
                                                                 neurons=[c.n_channels]), E, "out of range"),  # fmt: skip
    ("circuits-neurons-dup", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LOWER, c.refs, neurons=[1, 1]),
     E, "repeats"),
    ("circuits-refs-layer", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LOWER,
                                                              pt.References(c.refs.indices, c.refs.values, "layer3")),
     E, "collected at layer"),
    ("circuits-refs-dataset", lambda c: pt.circuit_attributions(c.model, c.other_data, LAYER, LOWER, c.refs), E,
     "another data set"),
    ("circuits-lower-same", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LAYER, c.refs), E,
     "lower_layer"),
    ("circuits-precision", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LOWER, c.refs, precision="fp16"),
     E, "precision"),
    ("circuits-max_memory", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LOWER, c.refs, max_memory=-1),
     E, "max_memory"),
    ("circuits-checkpoint_every", lambda c: pt.circuit_attributions(c.model, c.data, LAYER, LOWER, c.refs,
                                                                    checkpoint_every=-2), E, "checkpoint_every"),
    ("memory_plan-negative", lambda c: pt.memory_plan(c.model, c.images[0], LAYER, LOWER, max_memory=-1), E,
     "max_memory"),
    ("memory_plan-nan", lambda c: pt.memory_plan(c.model, c.images[0], LAYER, LOWER, max_memory=float("nan")), E,
     "max_memory"),
    ("memory_plan-precision", lambda c: pt.memory_plan(c.model, c.images[0], LAYER, LOWER, 1.0, precision="x"), E,
     "precision"),
    ("subnetwork-same", lambda c: pt.subnetwork(c.model, LAYER, LAYER), E, "lower_layer must be a layer below"),
    ("subnetwork-unknown", lambda c: pt.subnetwork(c.model, "layer9", LAYER), E, "layer9"),
    # (model, layer, lower_layer) is the house order; the old (lower, layer) order warns (test_circuits)
    ("subnetwork-cut-is-lower", lambda c: pt.subnetwork(c.model, LAYER, LOWER, cut=LOWER), E,
     "must be a layer below lower_layer"),
    ("subnetwork-cut-unknown", lambda c: pt.subnetwork(c.model, LAYER, LOWER, cut="layer9"), E, "layer9"),
    # ---------------------------------------------------------------- virtual neurons
    ("fit-neurons-empty", lambda c: pt.VirtualNeurons().fit(c.circuits, k=2, neurons=[]), E, "is empty"),
    ("fit-neurons-float", lambda c: pt.VirtualNeurons().fit(c.circuits, k=2, neurons=[1.0, 4.0]), E, "not an integer"),
    ("fit-neurons-dup", lambda c: pt.VirtualNeurons().fit(c.circuits, k=2, neurons=[1, 1]), E, "more than once"),
    ("fit-neurons-count", lambda c: pt.VirtualNeurons().fit(c.circuits, k=2, neurons=[1]), E, "one id per row"),
    ("fit-neurons-negative", lambda c: pt.VirtualNeurons().fit(c.circuits, k=2, neurons=[-1, 4]), E, "out of range"),
    ("fit-k-float", lambda c: pt.VirtualNeurons().fit(c.circuits, k=2.0), E, "k"),
    ("fit-k-zero", lambda c: pt.VirtualNeurons().fit(c.circuits, k=0), E, "k=0"),
    ("fit-k-too-big", lambda c: pt.VirtualNeurons().fit(c.circuits, k=7), E, "1 <= k <= 6"),
    ("fit-k-list-len", lambda c: pt.VirtualNeurons().fit(c.circuits, k=[2]), E, "values of k"),
    ("fit-k-str", lambda c: pt.VirtualNeurons().fit(c.circuits, k="two"), E, "'auto'"),
    ("fit-nan", lambda c: pt.VirtualNeurons().fit(torch.full((1, 4, 3), float("nan")), k=2), E, "NaN"),
    ("fit-empty", lambda c: pt.VirtualNeurons().fit(torch.zeros(1, 0, 3), k=1), E, "empty"),
    ("fit-1d", lambda c: pt.VirtualNeurons().fit(torch.zeros(5), k=1), E, "Expected features"),
    ("VirtualNeurons-n_init", lambda c: pt.VirtualNeurons(n_init=0), E, "n_init"),
    ("VirtualNeurons-k_range", lambda c: pt.VirtualNeurons(k_range=(5, 2)), E, "k_range"),
    ("VirtualNeurons-seed", lambda c: pt.VirtualNeurons(seed=1.5), E, "seed"),
    *_reference_cases("activation_features", lambda *a, **kw: pt.activation_features(*a, **kw)),
    # ---------------------------------------------------------------- routing
    ("route-vn-other-pair", lambda c: pt.route_images(c.model, c.images, LAYER, LOWER, c.vn_other_pair), E,
     "fitted for layer 'layer3'"),
    ("route-vn-lower-channels", lambda c: pt.route_images(c.model, c.images, LAYER, LOWER, c.vn_wide), E,
     "centroids have 3 values"),
    ("route-vn-neuron-range", lambda c: pt.route_images(c.model, c.images, LAYER, LOWER, c.vn_big), E, "[500]"),
    ("route-vn-unnamed", lambda c: pt.route_images(c.model, c.images, LAYER, LOWER, c.vn_unnamed), E,
     "fitted without neurons="),
    ("route-vn-unfitted", lambda c: pt.route_images(c.model, c.images, LAYER, LOWER, pt.VirtualNeurons()), E,
     "not fitted yet"),
    ("route-vn-type", lambda c: pt.route_images(c.model, c.images, LAYER, LOWER, c.circuits), E, "VirtualNeurons"),
    ("route-empty", lambda c: pt.route_images(c.model, c.images[:0], LAYER, LOWER, c.vn), E, "is empty"),
    ("route-empty-dataset", lambda c: pt.route_images(c.model, TensorDataset(torch.zeros(0, 3, 32, 32)), LAYER, LOWER,
                                                      c.vn), E, "empty data set"),  # fmt: skip
    ("route-uint8", lambda c: pt.route_images(c.model, c.images.to(torch.uint8), LAYER, LOWER, c.vn), E,
     "ConvertImageDtype"),
    ("route-nan", lambda c: pt.route_images(c.model, nan_images(c), LAYER, LOWER, c.vn), E, "NaN"),
    ("route-2d", lambda c: pt.route_images(c.model, c.images[0, 0], LAYER, LOWER, c.vn), E, "[B, C, H, W]"),
    ("route-method", lambda c: pt.route_images(c.model, c.images, LAYER, LOWER, c.vn, method="crp"), E, "method"),
    ("route-device", lambda c: pt.route_images(c.model, c.images, LAYER, LOWER, c.vn, device="gpu"), E,
     "not a device name"),
    ("route-grayscale", lambda c: pt.route_images(c.model, c.images[:, :1], LAYER, LOWER, c.vn), E, "channel"),
    ("virtual_activations-temperature", lambda c: pt.virtual_activations(c.model, c.images, LAYER, LOWER, c.vn,
                                                                         soft=True, temperature=0), E, "temperature"),
    ("virtual_activations-temperature-nan", lambda c: pt.virtual_activations(
        c.model, c.images, LAYER, LOWER, c.vn, soft=True, temperature=float("nan")), E, "temperature"),
    ("virtual_activations-soft-str", lambda c: pt.virtual_activations(c.model, c.images, LAYER, LOWER, c.vn,
                                                                      soft="yes"), E, "True or False"),
    ("virtual_activations-vn-wide", lambda c: pt.virtual_activations(c.model, c.images, LAYER, LOWER, c.vn_wide), E,
     "centroids have 3 values"),
    ("virtual_activations-empty", lambda c: pt.virtual_activations(c.model, c.images[:0], LAYER, LOWER, c.vn), E,
     "is empty"),
    ("virtual_heatmaps-neuron-unfitted", lambda c: pt.virtual_heatmaps(c.model, c.images, LAYER, LOWER, c.vn, 3), E,
     "was not fitted"),
    ("virtual_heatmaps-neuron-float", lambda c: pt.virtual_heatmaps(c.model, c.images, LAYER, LOWER, c.vn, 1.5), E,
     "not truncated"),
    ("virtual_heatmaps-vn-other-pair", lambda c: pt.virtual_heatmaps(c.model, c.images, LAYER, LOWER, c.vn_other_pair,
                                                                     1), E, "fitted for layer"),  # fmt: skip
    ("virtual_heatmaps-vn-wide", lambda c: pt.virtual_heatmaps(c.model, c.images, LAYER, LOWER, c.vn_wide, 1), E,
     "centroids have 3 values"),
    ("virtual_heatmaps-empty", lambda c: pt.virtual_heatmaps(c.model, c.images[:0], LAYER, LOWER, c.vn, 1), E,
     "is empty"),
    ("virtual_heatmaps-uint8", lambda c: pt.virtual_heatmaps(c.model, c.images.to(torch.uint8), LAYER, LOWER, c.vn, 1),
     E, "ConvertImageDtype"),
    ("virtual_heatmaps-conditions", lambda c: pt.virtual_heatmaps(c.model, c.images, LAYER, LOWER, c.vn, 1,
                                                                  conditions=torch.ones(2, 3)), E, "conditions"),
    ("virtual_heatmaps-method", lambda c: pt.virtual_heatmaps(c.model, c.images, LAYER, LOWER, c.vn, 1, method="x"), E,
     "method"),
    ("virtual_heatmaps-return_full", lambda c: pt.virtual_heatmaps(c.model, c.images, LAYER, LOWER, c.vn, 1,
                                                                   return_full="yes"), E, "True or False"),
    # ---------------------------------------------------------------- editing
    ("edit-suppress-id-float", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn, {1: [0.7]}), E,
     "not an integer id"),
    ("edit-suppress-key-float", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn, {1.5: [0]}), E,
     "not truncated"),
    ("edit-suppress-key-str", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn, {"1": [0]}), E,
     "must be an integer"),
    ("edit-suppress-id-range", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn, {1: [2]}), E,
     "2 virtual neurons of neuron 1"),
    ("edit-suppress-id-negative", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn, {1: [-1]}), E,
     "out of range"),
    ("edit-suppress-id-dup", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn, {1: [0, 0]}), E,
     "more than once"),
    ("edit-suppress-neuron", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn, {7: [0]}), E,
     "was not fitted for"),
    ("edit-suppress-empty", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn, {}), E, "is empty"),
    ("edit-suppress-list", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn, [1, 0]), E, "must be a dict"),
    ("edit-suppress-ids-empty", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn, {1: []}), E,
     "is empty"),
    ("edit-method", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn, {1: [0]}, method="LRP"), E,
     "method"),
    ("edit-vn-other-pair", lambda c: pt.edit_virtual_neurons(c.model, LAYER, LOWER, c.vn_other_pair, {1: [0]}), E,
     "fitted for layer"),
    ("edit-layer", lambda c: pt.edit_virtual_neurons(c.model, "layer9", LOWER, c.vn, {1: [0]}), E, "layer9"),
    ("edit-vn-wide-forward", lambda c: _edit_forward(c, c.vn_wide), E, "centroids have 3 values"),
    ("edit-vn-unnamed-forward", lambda c: _edit_forward(c, c.vn_unnamed), E, "fitted without neurons="),
    # ---------------------------------------------------------------- labels
    ("concept_labels-names-str", lambda c: pt.concept_labels(c.vn, c.concept_mix, "abcdefghijklmnop"[:16]), E,
     "letter by letter"),
    ("concept_labels-min_share-zero", lambda c: pt.concept_labels(c.vn, c.concept_mix, c.concept_names, min_share=0),
     E, "min_share=0"),
    ("concept_labels-min_share-big", lambda c: pt.concept_labels(c.vn, c.concept_mix, c.concept_names, min_share=1.5),
     E, "min_share"),
    ("concept_labels-shape", lambda c: pt.concept_labels(c.vn, c.concept_mix[:1], c.concept_names), E,
     "reference_labels must have shape"),
    ("concept_labels-count", lambda c: pt.concept_labels(c.vn, c.concept_mix, c.concept_names[:3]), E,
     "concept_names"),
    ("concept_labels-unfitted", lambda c: pt.concept_labels(pt.VirtualNeurons(), c.concept_mix, c.concept_names), E,
     "not fitted yet"),
    ("concept_labels-nan", lambda c: pt.concept_labels(c.vn, c.concept_mix * float("nan"), c.concept_names), E,
     "finite"),
    ("clip_text_labels-words-str", lambda c: pt.clip_text_labels([c.patches], "disc", pretrained=None), E,
     "letter by letter"),
    ("clip_text_labels-template", lambda c: pt.clip_text_labels([c.patches], ["disc"], pretrained=None,
                                                                template="a photo"), E, "template"),
    ("clip_text_labels-words-empty", lambda c: pt.clip_text_labels([c.patches], [], pretrained=None), E, "empty"),
    ("clip_text_labels-words-dup", lambda c: pt.clip_text_labels([c.patches], ["a", "a"], pretrained=None), E,
     "more than once"),
    ("clip_text_labels-images-tensor", lambda c: pt.clip_text_labels(c.patches, ["disc"], pretrained=None), E,
     "one batch"),
    ("clip_text_labels-images-empty", lambda c: pt.clip_text_labels([], ["disc"], pretrained=None), E, "one non-empty"),
    # ---------------------------------------------------------------- planted
    ("class_activation_units-conv", lambda c: pt.class_activation_units(nn.Conv2d(3, 3, 1)), E, "nn.Linear"),
    ("plant_neurons-one-unit", lambda c: pt.plant_neurons(c.model, LAYER, c.units, [(0,)]), E, ">= 2 units"),
    ("plant_neurons-unit-range", lambda c: pt.plant_neurons(c.model, LAYER, c.units, [(0, 99)]), E, "out of range"),
    ("plant_neurons-unit-float", lambda c: pt.plant_neurons(c.model, LAYER, c.units, [(0, 1.5)]), E, "not an integer"),
    ("plant_neurons-unit-dup", lambda c: pt.plant_neurons(c.model, LAYER, c.units, [(2, 2)]), E, "more than once"),
    ("plant_neurons-groups-str", lambda c: pt.plant_neurons(c.model, LAYER, c.units, "02"), E, "groups"),
    ("plant_neurons-name", lambda c: pt.plant_neurons(c.model, LAYER, c.units, [(0, 1)], name="a.b"), E, "name"),
    ("plant_neurons-layer", lambda c: pt.plant_neurons(c.model, "layer9", c.units, [(0, 1)]), E, "layer9"),
    ("plant_neurons-layout", lambda c: pt.plant_neurons(c.model, LAYER, c.units, [(0, 1)], layout="rows"), E,
     "not a layout"),
    ("plant_neurons-layout-misfit", lambda c: pt.plant_neurons(c.model, LAYER, c.units, [(0, 1)], layout="tokens"), E,
     "layout 'tokens'"),
    ("plant_neurons-units", lambda c: pt.plant_neurons(c.model, LAYER, "fc", [(0, 1)]), E, "units must be"),
    ("planted_sources-index-negative", lambda c: pt.planted_sources(c.planted, c.data, torch.full((1, 5), -1)), E,
     "data-set index -1"),
    ("planted_sources-refs-layer", lambda c: pt.planted_sources(c.planted, c.data, c.refs), E, "collected at layer"),
    ("planted_sources-refs-dataset", lambda c: pt.planted_sources(c.planted, c.other_data, c.prefs), E,
     "another data set"),
    ("planted_sources-rows", lambda c: pt.planted_sources(c.planted, c.data, torch.zeros(3, 5, dtype=torch.long)), E,
     "one row per planted neuron"),
    ("planted_sources-float", lambda c: pt.planted_sources(c.planted, c.data, torch.zeros(1, 5)), E, "integer"),
    ("planted_sources-batch_size", lambda c: pt.planted_sources(c.planted, c.data, c.prefs, batch_size=0), E,
     "batch_size"),
    # ---------------------------------------------------------------- SAE
    ("train_layer_sae-epochs-negative", lambda c: pt.train_layer_sae(c.model, c.data, LAYER, epochs=-1), E, "epochs"),
    ("train_layer_sae-epochs-float", lambda c: pt.train_layer_sae(c.model, c.data, LAYER, epochs=1.5), E, "epochs"),
    ("train_layer_sae-nan", lambda c: pt.train_layer_sae(c.model, TensorDataset(nan_images(c)), LAYER, epochs=1), E,
     "NaN"),
    ("train_layer_sae-top_k", lambda c: pt.train_layer_sae(c.model, c.data, LAYER, top_k=0), E, "top_k"),
    ("train_layer_sae-top_k-big", lambda c: pt.train_layer_sae(c.model, c.data, LAYER, n_latents=4, top_k=5,
                                                               n_images=2, epochs=1), E, "top_k"),  # fmt: skip
    ("train_layer_sae-n_latents", lambda c: pt.train_layer_sae(c.model, c.data, LAYER, n_latents=0), E, "n_latents"),
    ("train_layer_sae-lr", lambda c: pt.train_layer_sae(c.model, c.data, LAYER, lr=0), E, "lr"),
    ("train_layer_sae-batch_size", lambda c: pt.train_layer_sae(c.model, c.data, LAYER, batch_size=0), E,
     "batch_size"),
    ("train_layer_sae-n_images", lambda c: pt.train_layer_sae(c.model, c.data, LAYER, n_images=0), E, "n_images"),
    ("train_layer_sae-layer", lambda c: pt.train_layer_sae(c.model, c.data, "layer9"), E, "layer9"),
    ("train_layer_sae-empty", lambda c: pt.train_layer_sae(c.model, TensorDataset(torch.zeros(0, 3, 32, 32)), LAYER),
     E, "empty"),
    ("sae_split-readout-range", lambda c: pt.sae_split(_sae(c), torch.rand(4, 8), readout=99), E, "not a channel"),
    ("sae_split-readout-float", lambda c: pt.sae_split(_sae(c), torch.rand(4, 8), readout=1.5), E, "not truncated"),
    ("sae_split-h-shape", lambda c: pt.sae_split(_sae(c), torch.rand(4, 3), readout=1), E, "h must have shape"),
    ("sae_split-h-nan", lambda c: pt.sae_split(_sae(c), torch.full((4, 8), float("nan")), readout=1), E, "NaN"),
    ("sae_split-not-sae", lambda c: pt.sae_split("sae", torch.rand(4, 8), readout=1), E, "LayerSAE"),
    # ---------------------------------------------------------------- disentangle
    ("compare_on_toy-n_pairs-negative", lambda c: pt.compare_on_toy(c.model, c.data, c.data, n_pairs=-1), E,
     "n_pairs"),
    ("compare_on_toy-n_pairs-float", lambda c: pt.compare_on_toy(c.model, c.data, c.data, n_pairs=1.5), E, "n_pairs"),
    ("compare_on_toy-min_share-zero", lambda c: pt.compare_on_toy(c.model, c.data, c.data, min_share=0), E,
     "min_share"),
    ("compare_on_toy-n_ref", lambda c: pt.compare_on_toy(c.model, c.data, c.data, n_ref=1), E, "n_ref"),
    ("compare_on_toy-dataset", lambda c: pt.compare_on_toy(c.model, c.tensor_data, c.data), E, "ToyWorld"),
    ("render_without-duplicate-slots", lambda c: c.data.render_without(0, [c.slot, c.slot]), E, "more than once"),
    ("render_without-slots-int", lambda c: c.data.render_without(0, c.slot), E, "list of slot numbers"),
    ("render_without-empty-slot", lambda c: c.data.render_without(0, [7]), E, "no object in slot 7"),
    # ---------------------------------------------------------------- patches
    ("crop_box-threshold", lambda c: pt.crop_box(c.heat, threshold=-0.1), E, "threshold"),
    ("crop_box-kernel", lambda c: pt.crop_box(c.heat, kernel_size=4), E, "kernel_size"),
    ("crop_box-kernel-float", lambda c: pt.crop_box(c.heat, kernel_size=2.5), E, "kernel_size"),
    ("crop_box-shape", lambda c: pt.crop_box(torch.rand(2, 3, 4, 4)), E, "heatmap"),
    ("crop_patch-mismatch", lambda c: pt.crop_patch(torch.rand(3, 8, 8), c.heat), E, "heatmap"),
    ("crop_patch-image-shape", lambda c: pt.crop_patch(torch.rand(8, 8), c.heat), E, "image"),
    ("masked_patch-visibility", lambda c: pt.masked_patch(torch.rand(3, 16, 16), c.heat, visibility=2), E,
     "visibility"),
    ("masked_patch-alpha", lambda c: pt.masked_patch(torch.rand(3, 16, 16), c.heat, alpha=-1), E, "alpha"),
    ("masked_patch-mismatch", lambda c: pt.masked_patch(torch.rand(3, 8, 8), c.heat), E, "heatmap"),
    ("relevance_map-kernel", lambda c: pt.relevance_map(c.heat, kernel_size=-3), E, "kernel_size"),
    ("relevance_map-shape", lambda c: pt.relevance_map(torch.rand(5)), E, "heatmap"),
    ("patches_from_heatmaps-mode", lambda c: pt.patches_from_heatmaps(torch.rand(2, 3, 16, 16), torch.rand(2, 16, 16),
                                                                      mode="blur"), E, "mode"),  # fmt: skip
    ("patches_from_heatmaps-count", lambda c: pt.patches_from_heatmaps(torch.rand(2, 3, 16, 16),
                                                                       torch.rand(3, 16, 16)), E, "heatmaps"),
    ("patches_from_heatmaps-size", lambda c: pt.patches_from_heatmaps(torch.rand(2, 3, 16, 16), torch.rand(2, 16, 16),
                                                                      size=0), E, "size"),  # fmt: skip
    ("patches_from_heatmaps-alpha", lambda c: pt.patches_from_heatmaps(torch.rand(2, 3, 16, 16),
                                                                       torch.rand(2, 16, 16), alpha=2), E, "alpha"),
    *_reference_cases("reference_heatmaps", lambda *a, **kw: pt.reference_heatmaps(*a, **kw)),
    ("reference_patches-neuron", lambda c: pt.reference_patches(c.model, c.data, LAYER, c.refs, neuron=99), E, "99"),
    ("reference_patches-neuron-float", lambda c: pt.reference_patches(c.model, c.data, LAYER, c.refs, neuron=1.5), E,
     "1.5"),
    ("reference_patches-mode", lambda c: pt.reference_patches(c.model, c.data, LAYER, c.refs, neuron=1, mode="x"), E,
     "mode"),
    # ---------------------------------------------------------------- evaluation, polysemanticity
    ("cluster_distances-len", lambda c: pt.cluster_distances(c.emb, c.labels[:5]), E, "labels"),
    ("cluster_distances-average", lambda c: pt.cluster_distances(c.emb, c.labels, average="mean"), E, "average"),
    ("cluster_distances-nan", lambda c: pt.cluster_distances(c.emb * float("nan"), c.labels), E, "NaN"),
    ("cluster_distances-float-labels", lambda c: pt.cluster_distances(c.emb, c.labels + 0.5), E, "labels"),
    ("evaluate_clusterings-empty", lambda c: pt.evaluate_clusterings(c.emb3, {}), E, "clusterings"),
    ("evaluate_clusterings-len", lambda c: pt.evaluate_clusterings(c.emb3, {"a": c.labels[None, :3]}), E, "a"),
    ("evaluate_clusterings-2d", lambda c: pt.evaluate_clusterings(c.emb, {"a": c.labels}), E, "[N, n_ref, D]"),
    ("evaluate_clusterings-float", lambda c: pt.evaluate_clusterings(c.emb3, {"a": torch.rand(2, 12)}), E, "integer"),
    ("distance_correlation-n_subsets", lambda c: pt.distance_correlation(c.emb3, {"a": c.emb3}, n_subsets=0), E,
     "n_subsets"),
    ("distance_correlation-subset_size", lambda c: pt.distance_correlation(c.emb3, {"a": c.emb3}, subset_size=9), E,
     "subset_size=9"),
    ("distance_correlation-rows", lambda c: pt.distance_correlation(c.emb3, {"a": c.emb3[:, :5]}), E, "a"),
    ("distance_correlation-empty", lambda c: pt.distance_correlation(c.emb3, {}), E, "method_spaces"),
    ("evaluate_toy_world-k", lambda c: pt.evaluate_toy_world(k=0), E, "k"),
    ("evaluate_toy_world-k-float", lambda c: pt.evaluate_toy_world(k=2.5), E, "k"),
    ("evaluate_toy_world-method", lambda c: pt.evaluate_toy_world(method="x"), E, "method"),
    ("polysemanticity_scores-k", lambda c: pt.polysemanticity_scores(torch.rand(2, 6, 4), k=1), E, "k"),
    ("polysemanticity_scores-kind", lambda c: pt.polysemanticity_scores(torch.rand(2, 6, 4), kind="x"), E, "kind"),
    ("polysemanticity_scores-shape", lambda c: pt.polysemanticity_scores(torch.rand(6)), E, "eval_space"),
    ("polysemanticity_scores-nan", lambda c: pt.polysemanticity_scores(torch.full((2, 6, 4), float("nan"))), E, "NaN"),
    ("rank_polysemantic-neurons-len", lambda c: pt.rank_polysemantic(torch.rand(3), neurons=[0, 1]), E, "neuron ids"),
    ("rank_polysemantic-neurons-float", lambda c: pt.rank_polysemantic(torch.rand(2), neurons=[0.5, 1]), E,
     "not an integer"),
    ("rank_polysemantic-neurons-dup", lambda c: pt.rank_polysemantic(torch.rand(2), neurons=[1, 1]), E,
     "more than once"),
    # ---------------------------------------------------------------- embedders
    ("embed_dataset-indices", lambda c: pt.embed_dataset(pt.ConceptEmbedder(c.data.labels), c.data,
                                                         torch.tensor([[99]])), E, "0..47"),
    ("embed_dataset-float-indices", lambda c: pt.embed_dataset(pt.ConceptEmbedder(c.data.labels), c.data,
                                                               torch.tensor([[1.5]])), E, "integer"),
    ("embed_dataset-batch", lambda c: pt.embed_dataset(pt.ConceptEmbedder(c.data.labels), c.data, c.refs.indices,
                                                       batch_size=0), E, "batch_size"),  # fmt: skip
    ("embed_dataset-not-embedder", lambda c: pt.embed_dataset("clip", c.data, c.refs.indices), E, "Embedder"),
    # ---------------------------------------------------------------- plots
    ("patch_grid-ncols", lambda c: pt.patch_grid(c.patches, ncols=0), E, "ncols"),
    ("patch_grid-shape", lambda c: pt.patch_grid(torch.rand(6, 8, 8)), E, "patches"),
    ("patch_grid-ncols-float", lambda c: pt.patch_grid(c.patches, ncols=2.5), E, "not truncated"),
    ("virtual_neuron_grids-labels", lambda c: pt.virtual_neuron_grids(c.patches, c.labels[:3]), E, "labels"),
    ("virtual_neuron_grids-per_cluster", lambda c: pt.virtual_neuron_grids(c.patches, c.labels[:6], per_cluster=0), E,
     "per_cluster"),
    ("plot_concept_mix-names", lambda c: pt.plot_concept_mix(torch.rand(2, 3), "abc"), E, "letter by letter"),
    ("plot_concept_mix-count", lambda c: pt.plot_concept_mix(torch.rand(2, 3), ["a", "b"]), E, "concept_names"),
    ("plot_umap-labels", lambda c: pt.plot_umap(np.zeros((5, 2)), labels=torch.zeros(3)), E, "labels"),
    ("plot_umap-shape", lambda c: pt.plot_umap(np.zeros((5, 3))), E, "coords"),
    ("umap_embedding-n_neighbors", lambda c: pt.umap_embedding(c.emb, n_neighbors=0), E, "n_neighbors"),
    ("umap_embedding-nan", lambda c: pt.umap_embedding(c.emb * float("nan")), E, "NaN"),
    ("umap_embedding-min_dist", lambda c: pt.umap_embedding(c.emb, min_dist=-1), E, "min_dist"),
    ("plot_cluster_distances-table", lambda c: pt.plot_cluster_distances({"a": 1}), E, "DistanceTable"),
    ("plot_distance_correlation-empty", lambda c: pt.plot_distance_correlation({}), E, "correlations"),
    ("plot_distance_correlation-nan", lambda c: pt.plot_distance_correlation({"a": float("nan")}), E, "finite"),
    # ---------------------------------------------------------------- configuration, data, layouts, registry
    ("cache_dir-file", lambda c: _with_env("PURETOOLS_CACHE", __file__, lambda: pt.cache_dir()), E, "it is a file"),
    ("cache_dir-empty", lambda c: _with_env("PURETOOLS_CACHE", " ", lambda: pt.cache_dir()), E, "set it to a folder"),
    ("smoke-typo", lambda c: _with_env("PURETOOLS_SMOKE", "maybe", lambda: pt.smoke()), E, "'maybe' is not understood"),
    ("aggregate-not-a-list", lambda c: pt.aggregate_comparisons("results"), E, "non-empty list of ToyComparison"),
    ("aggregate-empty", lambda c: pt.aggregate_comparisons([]), E, "non-empty list of ToyComparison"),
    ("aggregate-wrong-items", lambda c: pt.aggregate_comparisons([{"PURE": 1}]), E, "non-empty list of ToyComparison"),
    ("format_table-not-a-dict", lambda c: pt.format_comparison_table([1, 2]), E, "dict that aggregate() returns"),
    ("format_table-empty", lambda c: pt.format_comparison_table({}), E, "dict that aggregate() returns"),
    ("format_protocol_table-not-a-dict", lambda c: pt.format_protocol_table("x", [0.8]), E, "non-empty dict"),
    ("denormalize-str", lambda c: pt.denormalize("x"), E, "floating-point Tensor"),
    ("denormalize-uint8", lambda c: pt.denormalize(torch.zeros(3, 2, 2, dtype=torch.uint8)), E, "torch.uint8"),
    ("denormalize-channels", lambda c: pt.denormalize(torch.zeros(2, 4, 8, 8)), E, "do not have 3 channels"),
    ("denormalize-mean-std", lambda c: pt.denormalize(torch.zeros(3, 2, 2), std=(1.0, 1.0)), E, "one value per channel"),
    ("image_folder-missing", lambda c: pt.image_folder("/nonexistent/puretools-folder"), E, "does not exist"),
    ("image_folder-size-0", lambda c: pt.image_folder("/nonexistent/puretools-folder", size=0), E, "size=0"),
    ("image_folder-resize-float", lambda c: pt.image_folder("/tmp", resize=1.5), E, "resize=1.5"),
    ("make_image_folder-n-0", lambda c: pt.make_image_folder("/nonexistent/puretools-folder", n=0), E, "n=0"),
    ("make_image_folder-classes-0", lambda c: pt.make_image_folder("/nonexistent/puretools-folder", classes=0), E,
     "classes=0"),
    ("make_image_folder-seed", lambda c: pt.make_image_folder("/nonexistent/puretools-folder", seed=-1), E, "seed=-1"),
    ("layer_layout-kind", lambda c: pt.layer_layout(c.model, LAYER, c.images, layout="bogus"), E, "'bogus'"),
    ("layer_layout-model", lambda c: pt.layer_layout("toy", LAYER, c.images), E, "nn.Module"),
    ("layer_layout-empty", lambda c: pt.layer_layout(c.model, LAYER, c.images[:0]), E, "non-empty batch"),
    ("layer_layout-unknown", lambda c: pt.layer_layout(c.model, "layer9", c.images), E, "layer9"),
    ("layer_output-unknown", lambda c: pt.layer_output(c.model, c.images, "layer9"), E, "layer9"),
    ("load_benchmark_results-unknown", lambda c: pt.load_benchmark_results("nope"), E, "'nope'"),
    ("prefix_tokens-model", lambda c: pt.prefix_tokens("toy"), E, "nn.Module"),
    ("token_grid-model", lambda c: pt.token_grid("toy", (32, 32)), E, "nn.Module"),
    ("token_grid-size", lambda c: pt.token_grid(c.model, (0,)), E, "image_size=(0,)"),
    ("token_grid-size-neg", lambda c: pt.token_grid(c.model, (32, -4)), E, "two positive integers"),
    ("register_model-timm", lambda c: pt.register_model("timm/x", lambda w: c.model), E, "without 'timm/'"),
    ("register_model-empty", lambda c: pt.register_model("", lambda w: c.model), E, "non-empty name"),
]


def _edit_forward(c, vn):
    with pt.edit_virtual_neurons(c.model, LAYER, LOWER, vn, {vn.neurons[0]: [0]}) as edited:
        edited(c.images)


@pytest.fixture(scope="module")
def ready(c, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    c.corrupt = folder / "model.safetensors"
    c.corrupt.write_bytes(b"\x00" * 64)
    c.corrupt_pth = folder / "model.pth"
    c.corrupt_pth.write_bytes(b"not a pickle")
    c.units = pt.class_activation_units(c.model.fc)
    c.slot = c.data.objects(0)[0][0]
    n_concepts = len(toyworld.CONCEPTS)
    c.concept_names = list(toyworld.CONCEPTS)
    c.concept_mix = torch.randint(0, 2, (2, 6, n_concepts))
    return c


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_bad_input_gives_a_clear_error(ready, name):
    _, call, error, phrase = next(case for case in CASES if case[0] == name)
    with pytest.raises(error) as info:
        call(ready)
    assert phrase in str(info.value), str(info.value)


def test_names_are_unique():
    names = [case[0] for case in CASES]
    assert len(set(names)) == len(names)


# ----------------------------------------------------------------------------- the command line


def cli(argv, capsys):
    """Run ``python -m puretools argv`` in this process; (exit code, what it said)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    code = info.value.code
    said = code if isinstance(code, str) else out.err
    return (1 if isinstance(code, str) else code), said + out.out


CLI_CASES = [
    ("collect-n-ref-zero", ["collect", "--n-ref", "0"], "positive integer"),
    ("collect-n-ref-float", ["collect", "--n-ref", "2.5"], "positive integer"),
    ("collect-batch-size-zero", ["collect", "--batch-size", "0"], "positive integer"),
    ("collect-out-suffix", ["collect", "--out", "refs.pt"], "must end in .safetensors"),
    ("collect-out-directory", ["collect", "--out", "{tmp}/dir.safetensors"], "is a directory"),
    ("collect-out-unwritable", ["collect", "--out", "/proc/refs.safetensors"], "not writable"),
    ("collect-out-parent-file", ["collect", "--out", "{tmp}/file.txt/refs.safetensors"], "is a file"),
    ("collect-device", ["collect", "--device", "gpu"], "--device gpu"),
    ("collect-model", ["collect", "--model", "resnet5"], "Unknown model name"),
    ("collect-weights-corrupt", ["collect", "--weights", "{tmp}/corrupt.safetensors"], "could not be loaded"),
    ("collect-weights-missing", ["collect", "--weights", "{tmp}/missing.safetensors"], "does not exist"),
    ("collect-layer", ["collect", "--layer", "layer9"], "layer9"),
    ("collect-data", ["collect", "--data", "toy:valid"], "split 'valid'"),
    ("collect-size", ["collect", "--size", "0"], "positive integer"),
    ("collect-timeout", ["collect", "--timeout", "0"], "positive number"),
    ("collect-workers", ["collect", "--workers", "-1", "--n-ref", "2"], "--workers"),
    ("attribute-method", ["attribute", "--method", "crp"], "invalid choice"),
    ("attribute-neurons", ["attribute", "--neurons", "1,x"], "comma-separated integers"),
    ("attribute-neurons-range", ["attribute", "--neurons", "999", "--n-ref", "2"], "999"),
    ("attribute-neurons-dup", ["attribute", "--neurons", "1,1", "--n-ref", "2"], "repeats"),
    ("attribute-pair-batch-size", ["attribute", "--pair-batch-size", "0"], "positive integer"),
    ("attribute-max-memory", ["attribute", "--max-memory", "-1"], "positive number"),
    ("attribute-precision", ["attribute", "--precision", "fp16"], "invalid choice"),
    ("attribute-lower-layer", ["attribute", "--lower-layer", "layer9", "--n-ref", "2"], "layer9"),
    ("attribute-out-directory", ["attribute", "--out", "{tmp}/dir.safetensors"], "is a directory"),
    ("toy-train-epochs-zero", ["toy", "train", "--epochs", "0", "--out", "{tmp}/toy"], "positive integer"),
    ("toy-train-epochs-negative", ["toy", "train", "--epochs", "-3", "--out", "{tmp}/toy"], "positive integer"),
    ("toy-train-out-file", ["toy", "train", "--out", "{tmp}/file.txt"], "is a file"),
    ("toy-train-out-unwritable", ["toy", "train", "--out", "/proc/toy"], "not writable"),
    ("toy-train-existing", ["toy", "train", "--out", "{tmp}/trained"], "already exists"),
    ("toy-no-subcommand", ["toy"], "required"),
    ("demo-out-file", ["demo", "--out", "{tmp}/file.txt"], "is a file"),
    ("no-command", [], "required"),
    ("unknown-command", ["train"], "invalid choice"),
]


@pytest.fixture(scope="module")
def cli_tmp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "dir.safetensors").mkdir()
    (folder / "file.txt").write_text("x")
    (folder / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    (folder / "trained").mkdir()
    (folder / "trained" / "model.safetensors").write_bytes(b"x")
    return folder


@pytest.mark.parametrize("name", [case[0] for case in CLI_CASES])
def test_bad_command_line_gives_a_clear_error(cli_tmp, capsys, monkeypatch, name):
    monkeypatch.setenv("PURETOOLS_CACHE", str(cli_tmp / "cache"))
    _, argv, phrase = next(case for case in CLI_CASES if case[0] == name)
    argv = [a.replace("{tmp}", str(cli_tmp)) for a in argv]
    if argv and argv[0] in ("collect", "attribute") and "--cache-dir" not in argv:
        argv += ["--cache-dir", str(cli_tmp / "cache")]
    code, said = cli(argv, capsys)
    assert code != 0
    assert "Traceback" not in said
    assert phrase in said, said


def test_the_battery_is_big_enough_and_covers_every_function_and_command():
    assert len(CASES) + len(CLI_CASES) >= 150
    source = inspect.getsource(sys.modules[__name__])
    functions = [n for n in pt.__all__ if inspect.isfunction(getattr(pt, n))]
    missing = [n for n in functions if f"pt.{n}(" not in source]
    assert not missing, missing
    commands = {case[1][0] for case in CLI_CASES if case[1]}
    assert {"collect", "attribute", "toy", "demo"} <= commands


def test_float64_images_work_where_float32_do(ready):
    c = ready
    x32 = c.images
    x64 = x32.double()
    r32 = pt.route_images(c.model, x32, LAYER, LOWER, c.vn)
    r64 = pt.route_images(c.model, x64, LAYER, LOWER, c.vn)
    assert torch.equal(r32.routes, r64.routes)
    assert torch.allclose(r32.circuits, r64.circuits, atol=1e-6)
    h32 = pt.virtual_heatmaps(c.model, x32, LAYER, LOWER, c.vn, 1)
    h64 = pt.virtual_heatmaps(c.model, x64, LAYER, LOWER, c.vn, 1)
    assert h64.dtype == torch.float32 and torch.allclose(h32, h64, atol=1e-6)
    a64 = pt.virtual_activations(c.model, x64, LAYER, LOWER, c.vn)
    assert torch.allclose(a64, pt.virtual_activations(c.model, x32, LAYER, LOWER, c.vn))


def test_fit_without_neurons_for_all_channels_still_routes(ready):
    """Rows 0..N-1 are unambiguous when they cover the layer: that use keeps working."""
    c = ready
    circuits = torch.rand(c.n_channels, 6, c.circuits.shape[-1], generator=torch.Generator().manual_seed(0))
    vn = pt.VirtualNeurons().fit(circuits, k=2)
    assert pt.route_images(c.model, c.images, LAYER, LOWER, vn).routes.shape == (c.n_channels, len(c.images))

