"""Edits compose: LRP calls inside an LRP edit, nested edits, exceptions; nothing leaks.

After every scenario a walk over every module checks that no hook and no replaced ``forward``
is left, and the model's outputs, input gradients and gradient circuits equal those of a
fresh copy that no edit ever touched.
"""

import copy
import warnings

import pytest
import torch

import puretools as pt
from puretools import toyworld
from puretools.editing import HOOK_DICTS, private_copy

LAYER, LOWER = toyworld.LAYER, toyworld.LOWER_LAYER


@pytest.fixture(scope="module")
def toy():
    model = pt.load_model("toy")
    fresh = copy.deepcopy(model)
    data = toyworld.ToyWorld("test", n=120)
    refs = pt.collect_references(model, data, LAYER, n_ref=12, progress=False)
    circuits = pt.circuit_attributions(model, data, LAYER, LOWER, refs, neurons=[1, 4], method="lrp", progress=False)
    vn = pt.VirtualNeurons().fit(circuits, k=2, neurons=[1, 4], layer=LAYER, lower_layer=LOWER)
    images = toyworld.ToyWorld("test", n=132).images[120:]  # 12 images the fit never saw
    return model, fresh, data, refs, vn, images


def leftovers(model):
    """Every hook and replaced forward left on any module of ``model``."""
    found = []
    for name, module in model.named_modules():
        for attr in HOOK_DICTS:
            if getattr(module, attr, None):
                found.append((name, attr))
        if "forward" in module.__dict__:
            found.append((name, "forward"))
    return found


def input_gradient(model, images):
    x = images.clone().requires_grad_(True)
    model(x).sum().backward()
    return x.grad


def assert_untouched(model, fresh, data, refs, images):
    assert leftovers(model) == []
    with torch.no_grad():
        assert torch.equal(model(images), fresh(images))
    assert torch.equal(input_gradient(model, images), input_gradient(fresh, images))
    ours = pt.circuit_attributions(model, data, LAYER, LOWER, refs, neurons=[1, 4], progress=False)
    theirs = pt.circuit_attributions(fresh, data, LAYER, LOWER, refs, neurons=[1, 4], progress=False)
    assert torch.equal(ours, theirs)


def test_lrp_calls_inside_an_lrp_edit_work_and_leave_nothing(toy):
    model, fresh, data, refs, vn, images = toy
    alone = pt.virtual_activations(model, images, LAYER, LOWER, vn, method="lrp")
    with torch.no_grad():
        plain = model(images)
    edit = pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0], 4: [1]}, method="lrp")
    with edit as edited:
        with torch.no_grad():
            out = edited(images)
        hit1, hit4 = edit.last_suppressed[1].clone(), edit.last_suppressed[4].clone()
        inside = pt.virtual_activations(model, images, LAYER, LOWER, vn, method="lrp")
        heat = pt.virtual_heatmaps(model, images, LAYER, LOWER, vn, 4, method="lrp")
        circuits = pt.circuit_attributions(model, data, LAYER, LOWER, refs, neurons=[1, 4], method="lrp",
                                           progress=False)  # fmt: skip
        assert leftovers(model) != []  # the edit's own three hooks (model input, lower layer, layer), nothing more
        assert len(leftovers(model)) == 3
    # inside the edit, the edited virtual neurons are silent and the others keep their activations
    assert (inside[:, 0, 0] == 0).all() and (inside[:, 1, 1] == 0).all()
    assert torch.equal(inside[:, 0, 1], alone[:, 0, 1]) and torch.equal(inside[:, 1, 0], alone[:, 1, 0])
    assert heat.shape[:2] == (2, len(images)) and torch.isfinite(heat).all()
    assert circuits.shape[:2] == (2, refs.indices.shape[1]) and torch.isfinite(circuits).all()
    unrouted = ~(hit1 | hit4)
    assert torch.equal(out[unrouted], plain[unrouted])
    assert_untouched(model, fresh, data, refs, images)


def test_nested_edits_compose_like_one_edit(toy):
    model, fresh, data, refs, vn, images = toy
    with pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0], 4: [1]}, method="lrp") as edited:
        with torch.no_grad():
            both = edited(images)
    with pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0]}, method="lrp"):
        with pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {4: [1]}, method="gradient"):
            with pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {4: [1]}, method="lrp") as edited:
                with torch.no_grad():
                    nested = edited(images)
                pt.virtual_heatmaps(model, images, LAYER, LOWER, vn, 1, method="lrp")
    gradient_edit = pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {4: [1]}, method="gradient")
    gradient_edit.remove()
    # the gradient edit routes with gradient circuits, so it may suppress other inputs; the
    # LRP edits alone must give exactly the combined edit
    with pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0]}, method="lrp"):
        with pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {4: [1]}, method="lrp") as edited:
            with torch.no_grad():
                nested_lrp = edited(images)
    assert torch.equal(nested_lrp, both)
    assert nested.shape == both.shape
    assert_untouched(model, fresh, data, refs, images)


def test_an_exception_inside_the_block_still_restores_every_module(toy):
    model, fresh, data, refs, vn, images = toy
    with pytest.raises(RuntimeError, match="inside"):
        with pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0]}, method="lrp"):
            pt.virtual_activations(model, images, LAYER, LOWER, vn, method="lrp")
            raise RuntimeError("inside")
    with pytest.raises(pt.PuretoolsError):  # a bad call inside an edit: a clear error, then clean
        with pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0]}, method="lrp"):
            pt.virtual_heatmaps(model, images, LAYER, LOWER, vn, 3, method="lrp")
    edit = pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0]}, method="lrp")
    edit.remove()
    edit.remove()  # twice is fine
    assert_untouched(model, fresh, data, refs, images)


def test_gradient_edit_inside_an_lrp_computation_routes_with_gradients(toy):
    """The edit's circuits never see the rules of an LRP call running around it."""
    model, fresh, data, refs, vn, images = toy
    edit = pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {4: [1]}, method="gradient")
    with edit:
        with torch.no_grad():
            model(images)
        routes_plain = edit.last_routes[4].clone()
        pt.virtual_activations(model, images, LAYER, LOWER, vn, method="lrp")  # runs the edit under LRP rules
        routes_under_lrp = edit.last_routes[4].clone()
    assert torch.equal(routes_plain, routes_under_lrp)
    assert_untouched(model, fresh, data, refs, images)


def test_private_copy_has_no_hooks_and_the_same_outputs(toy):
    model, _, _, _, vn, images = toy
    with pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0]}, method="lrp"):
        copy_ = private_copy(model)
        assert leftovers(copy_) == [] and len(leftovers(model)) == 3  # the edit's three hooks
    with torch.no_grad():
        assert torch.equal(copy_(images), model(images))


def _replace_weights(model):
    """Every conv weight of ``LAYER`` replaced by another tensor (not in place): its negation."""
    for n, m in model.named_modules():
        if n.startswith(LAYER) and isinstance(m, torch.nn.Conv2d):
            m.weight = torch.nn.Parameter(-m.weight.detach())  # another object under the same name


@pytest.mark.parametrize("method", ["gradient", "lrp"])
def test_weights_replaced_wholesale_inside_the_edit_are_used(toy, method):
    """Routing after ``conv.weight = nn.Parameter(...)`` inside the block equals a new edit of the changed model."""
    model, _, _, _, vn, images = toy
    model = copy.deepcopy(model)
    edit = pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0], 4: [1]}, method=method)
    with edit:
        with torch.no_grad():
            model(images)
        before = {n: r.clone() for n, r in edit.last_routes.items()}
        _replace_weights(model)  # no in-place version bump
        with torch.no_grad():
            inside = model(images)
        after = {n: r.clone() for n, r in edit.last_routes.items()}
    again = pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0], 4: [1]}, method=method)
    with again as edited:
        with torch.no_grad():
            expected = edited(images)
    assert torch.equal(inside, expected)
    assert all(torch.equal(after[n], again.last_routes[n]) for n in (1, 4))
    assert any(not torch.equal(before[n], after[n]) for n in (1, 4))  # the change mattered for the routes
    assert leftovers(model) == []


def test_replacing_an_edited_module_inside_the_edit_is_refused(toy):
    model, _, _, _, vn, images = toy
    model = copy.deepcopy(model)
    with pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0]}):
        parent, name = LAYER.rpartition(".")[0], LAYER.rpartition(".")[2]
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, name, private_copy(getattr(holder, name)))  # a new module, without the hooks
        with pytest.raises(pt.PuretoolsError, match=f"module '{LAYER}' was replaced inside"):
            model(images)
    assert leftovers(model) == []


def test_lrp_inside_an_edit_still_checks_conservation(toy):
    """The coverage check traces the model without the edit's hooks (they would see torch.fx proxies)."""
    model, _, _, _, vn, images = toy
    with pt.edit_virtual_neurons(model, LAYER, LOWER, vn, {1: [0]}, method="lrp"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Could not check that LRP conserves relevance ..." would raise
            pt.virtual_activations(model, images, LAYER, LOWER, vn, method="lrp")
    assert leftovers(model) == []
