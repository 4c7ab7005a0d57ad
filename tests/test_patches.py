"""Reference heatmaps against zennit-crp's CondAttribution; crops and masks checked pixel by pixel."""

import random

import pytest
import torch
from crp.attribution import CondAttribution
from torch import nn
from torch.utils.data import TensorDataset

import puretools as pt
from puretools.errors import PuretoolsError
from puretools.patches import (
    crop_box,
    crop_patch,
    masked_patch,
    patches_from_heatmaps,
    reference_heatmaps,
    reference_patches,
    relevance_map,
)


def crp_heatmaps(model, dataset, layer, refs, neuron):
    """One reference at a time through zennit-crp, as the CRP reference-image code does it."""
    attribution = CondAttribution(model)
    composite = pt.lrp_composite(model)

    def init_rel(a):
        rel = torch.zeros_like(a)
        own = a[:, neuron].flatten(1)
        pos = own.argmax(1)
        for b in range(len(a)):
            rel[b, neuron].view(-1)[pos[b]] = own[b, pos[b]]
        return rel

    out = []
    for i in refs.indices[neuron]:
        x = dataset[int(i)][0][None].clone().requires_grad_(True)
        attr = attribution(x, [{layer: [neuron]}], composite, start_layer=layer, init_rel=init_rel)
        out.append(attr.heatmap[0])
    model.requires_grad_(True)  # CondAttribution switched parameter gradients off
    return torch.stack(out)


def test_batched_heatmaps_match_crp_one_by_one(resnet18, small_images):
    refs = pt.collect_references(resnet18, small_images, "layer4", n_ref=4, batch_size=16, progress=False)
    neurons = [3, 511]
    ours = reference_heatmaps(resnet18, small_images, "layer4", refs, neurons, batch_size=5)
    assert ours.shape == (2, 4, 48, 48)
    for row, neuron in zip(ours, neurons):
        ref = crp_heatmaps(resnet18, small_images, "layer4", refs, neuron)
        scale = ref.abs().amax((1, 2), keepdim=True)
        assert (scale > 0).all()
        assert ((row - ref).abs() / scale).max() <= 1e-4


def test_batch_size_does_not_change_heatmaps(vgg, small_images):
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=4, progress=False)
    a = reference_heatmaps(vgg, small_images, "features.9", refs, batch_size=100)
    b = reference_heatmaps(vgg, small_images, "features.9", refs, batch_size=3)
    assert a.shape == (12, 4, 48, 48) and a.abs().sum() > 0
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_heatmap_of_linear_model_is_explicit():
    """conv 1x1 with identity weights: the relevance sits on the argmax pixel of the channel only."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    conv.weight.data = torch.eye(3)[:, :, None, None]
    model = nn.Sequential(conv, nn.ReLU()).eval()
    x = torch.rand(2, 3, 5, 5)
    x[0, 1, 3, 4] = 2.0  # the argmax of channel 1 in image 0
    data = TensorDataset(x)
    heat = reference_heatmaps(model, data, "1", torch.tensor([[0], [0], [1]]), neurons=[1], composite=None)
    expected = torch.zeros(5, 5)
    expected[3, 4] = 2.0
    torch.testing.assert_close(heat[0, 0], expected, atol=1e-6, rtol=0)


def test_heatmap_cache(tmp_path, vgg, small_images):
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=3, progress=False)
    a = reference_heatmaps(vgg, small_images, "features.9", refs, [1, 2], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("heatmaps-*.safetensors"))) == 1
    b = reference_heatmaps(vgg, small_images, "features.9", refs, [1, 2], cache_dir=tmp_path)
    assert torch.equal(a, b)


def test_bad_neuron_is_a_clear_error(vgg, small_images):
    with pytest.raises(PuretoolsError, match="out of range"):
        reference_heatmaps(vgg, small_images, "features.9", torch.zeros(12, 2, dtype=torch.long), [12])


# --------------------------------------------------------------------------- crops


def random_heatmap(rng: random.Random, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    kind = rng.choice(["blob", "corner", "edge", "noise", "zero", "line", "tiny"])
    heat = torch.zeros(h, w)
    if kind == "blob":
        r, c = rng.randrange(h), rng.randrange(w)
        heat[max(0, r - rng.randrange(5)) : r + rng.randrange(1, 8), max(0, c - 3) : c + rng.randrange(1, 9)] = 1
    elif kind == "corner":
        heat[-1 if rng.random() < 0.5 else 0, -1 if rng.random() < 0.5 else 0] = -3.0
    elif kind == "edge":
        heat[:, -1] = torch.rand(h, generator=g)
    elif kind == "noise":
        heat = torch.randn(h, w, generator=g) * torch.rand(1, generator=g)
    elif kind == "line":
        heat[rng.randrange(h), :] = 1.0
    elif kind == "tiny":
        heat[rng.randrange(h), rng.randrange(w)] = 1e-30
    return heat


def test_crops_are_square_and_inside_the_image():
    rng = random.Random(0)
    for _ in range(400):
        h, w = rng.choice([(32, 32), (17, 17), (20, 31), (31, 20), (3, 3), (1, 6)])
        heat = random_heatmap(rng, h, w)
        threshold = rng.choice([0.0, 0.02, 0.5, 0.99])
        kernel = rng.choice([1, 3, 5, 9])
        top, left, size = crop_box(heat, threshold, kernel)
        assert 1 <= size <= min(h, w)
        assert 0 <= top and top + size <= h
        assert 0 <= left and left + size <= w
        relevant = relevance_map(heat, kernel) > threshold
        if relevant.any():
            rows = relevant.any(1).nonzero().flatten()
            cols = relevant.any(0).nonzero().flatten()
            box_h = int(rows[-1] - rows[0] + 1)
            box_w = int(cols[-1] - cols[0] + 1)
            assert size == min(max(box_h, box_w), h, w)
            if size >= max(box_h, box_w):  # the square holds every relevant pixel
                inside = torch.zeros_like(relevant)
                inside[top : top + size, left : left + size] = True
                assert not (relevant & ~inside).any()
        patch = crop_patch(torch.rand(3, h, w), heat, threshold, kernel)
        assert patch.shape == (3, size, size)


@pytest.mark.parametrize("heat", [torch.zeros(24, 24), torch.full((24, 24), float("nan"))])
def test_empty_heatmap_gives_whole_image(heat):
    assert crop_box(heat) == (0, 0, 24)
    image = torch.rand(3, 24, 24)
    assert torch.equal(crop_patch(image, heat), image)


def test_peak_at_border_shifts_square_inwards():
    heat = torch.zeros(32, 32)
    heat[0, 31] = 1.0  # top right corner
    top, left, size = crop_box(heat, threshold=0.02, kernel_size=5)
    assert (top, left + size) == (0, 32)
    assert size == 3  # blur spreads one pixel at threshold 0.02 and is cut at the border
    heat = torch.zeros(32, 32)
    heat[31, 10:20] = 1.0  # a line along the bottom edge: the square grows upwards
    top, left, size = crop_box(heat, kernel_size=1)
    assert (top, left, size) == (22, 10, 10)


def test_box_wider_than_a_non_square_image_is_centred():
    heat = torch.zeros(10, 40)
    heat[4, 5:35] = 1.0
    assert crop_box(heat, kernel_size=1) == (0, 15, 10)


def test_mask_dims_exactly_the_region_below_visibility():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        image = torch.rand(3, 20, 20, generator=g)
        heat = torch.randn(20, 20, generator=g) * (torch.rand(20, 20, generator=g) > 0.7)
        visibility, alpha, background = [(0.2, 0.3, 0.0), (0.5, 0.0, 1.0), (0.05, 0.7, 0.5)][trial % 3]
        top, left, size = crop_box(heat)
        out = masked_patch(image, heat, visibility=visibility, alpha=alpha, background=background)
        crop = image[:, top : top + size, left : left + size]
        visible = (relevance_map(heat) > visibility)[top : top + size, left : left + size]
        assert 0 < visible.sum() < visible.numel()
        assert torch.equal(out[:, visible], crop[:, visible])
        expected = background + alpha * (crop - background)
        torch.testing.assert_close(out[:, ~visible], expected[:, ~visible], atol=0, rtol=0)
        assert not torch.equal(out[:, ~visible], crop[:, ~visible])


def test_patches_from_heatmaps_modes_and_values():
    images = torch.rand(5, 3, 16, 16)
    heatmaps = torch.randn(5, 16, 16)
    for mode in ("crop", "mask", "full"):
        patches = patches_from_heatmaps(images, heatmaps, mode=mode, size=12)
        assert patches.shape == (5, 3, 12, 12)
        assert patches.min() >= 0 and patches.max() <= 1
    full = patches_from_heatmaps(images, heatmaps, mode="full")
    torch.testing.assert_close(full, images)
    with pytest.raises(PuretoolsError, match="mode"):
        patches_from_heatmaps(images, heatmaps, mode="blur")


def test_reference_patches_end_to_end(vgg, small_images):
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=6, progress=False)
    patches = reference_patches(vgg, small_images, "features.9", refs, neuron=4, mode="mask", size=20)
    assert patches.shape == (6, 3, 20, 20)
    assert 0 <= patches.min() and patches.max() <= 1
    heat = reference_heatmaps(vgg, small_images, "features.9", refs, [4])[0]
    again = reference_patches(vgg, small_images, "features.9", refs, 4, mode="mask", size=20, heatmaps=heat)
    assert torch.equal(patches, again)
    identity = reference_patches(
        vgg, small_images, "features.9", refs, 4, mode="full", heatmaps=heat, denormalize=lambda x: x.clamp(0, 1)
    )
    expected = torch.stack([small_images[int(i)][0] for i in refs.indices[4]]).clamp(0, 1)
    torch.testing.assert_close(identity, expected)


def test_relevance_map_batch_equals_one_by_one():
    g = torch.Generator().manual_seed(3)
    heat = torch.randn(6, 12, 9, generator=g)
    heat[2] = 0  # an all-zero map stays zero inside a batch
    batched = relevance_map(heat)
    for h, b in zip(heat, batched):
        torch.testing.assert_close(relevance_map(h), b)
    assert batched[2].abs().sum() == 0
