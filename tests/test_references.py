"""collect_references against a brute-force top-n_ref over all activations."""

import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

import puretools as pt
from puretools.forward import layer_output


def brute_force(model, dataset, layer, n_ref):
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        a = layer_output(model, x, layer).flatten(2).amax(-1).T  # [C, N]
    values, indices = torch.sort(a, dim=1, descending=True, stable=True)
    return indices[:, :n_ref], values[:, :n_ref]


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_matches_brute_force(resnet18, small_images, batch_size):
    refs = pt.collect_references(resnet18, small_images, "layer3", n_ref=10, batch_size=batch_size, progress=False)
    idx, val = brute_force(resnet18, small_images, "layer3", 10)
    assert refs.indices.shape == (256, 10) and refs.indices.dtype == torch.long
    assert torch.equal(refs.indices, idx)
    torch.testing.assert_close(refs.values, val, rtol=1e-4, atol=1e-4)  # conv numerics vary with batch size
    assert (refs.values[:, :-1] >= refs.values[:, 1:]).all()  # best first


def test_ties_go_to_lower_index(vgg):
    data = TensorDataset(torch.zeros(9, 3, 8, 8))  # all images equal: every value ties
    refs = pt.collect_references(vgg, data, "features.9", n_ref=4, batch_size=3, progress=False)
    assert torch.equal(refs.indices, torch.arange(4).expand(12, 4))


def test_n_ref_equal_to_dataset(vgg, small_images):
    refs = pt.collect_references(vgg, small_images, "features.2", n_ref=40, batch_size=16, progress=False)
    assert torch.equal(refs.indices.sort(1).values, torch.arange(40).expand(8, 40))


def test_wrong_layer_lists_valid_names(vgg, small_images):
    with pytest.raises(pt.PuretoolsError, match=r"no layer named 'featurs.9'.*Did you mean.*features.9"):
        pt.collect_references(vgg, small_images, "featurs.9", n_ref=3, progress=False)


def test_n_ref_larger_than_dataset(vgg, small_images):
    with pytest.raises(pt.PuretoolsError, match="1 <= n_ref <= 40"):
        pt.collect_references(vgg, small_images, "features.9", n_ref=41, progress=False)


def test_empty_dataset(vgg):
    with pytest.raises(pt.PuretoolsError, match="empty"):
        pt.collect_references(vgg, TensorDataset(torch.zeros(0, 3, 8, 8)), "features.9", progress=False)


@pytest.mark.parametrize("channels, word", [(1, "Grayscale"), (4, "RGBA")])
def test_grayscale_and_rgba_images(vgg, channels, word):
    data = TensorDataset(torch.zeros(4, channels, 8, 8))
    with pytest.raises(pt.PuretoolsError, match=word):
        pt.collect_references(vgg, data, "features.9", n_ref=2, progress=False)


def test_nan_images_name_the_sample(vgg):
    x = torch.zeros(6, 3, 8, 8)
    x[4, 0, 1, 1] = float("nan")
    with pytest.raises(pt.PuretoolsError, match=r"NaN or Inf.*\[4\]"):
        pt.collect_references(vgg, TensorDataset(x), "features.9", n_ref=2, batch_size=3, progress=False)


def test_training_model_is_switched_to_eval(small_images):
    from conftest import SmallVGG

    model = SmallVGG().train()
    with pytest.warns(UserWarning, match="eval mode"):
        pt.collect_references(model, small_images, "features.9", n_ref=2, progress=False)
    assert not model.training


def test_cuda_unavailable(vgg, small_images):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(pt.PuretoolsError, match="CUDA is not available"):
        pt.collect_references(vgg, small_images, "features.9", n_ref=2, device="cuda", progress=False)


def test_cache_hit_and_weight_change(small_images, tmp_path):
    from conftest import SmallVGG

    torch.manual_seed(0)
    model = SmallVGG().eval()
    a = pt.collect_references(model, small_images, "features.9", n_ref=5, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("references-*.safetensors")
    b = pt.collect_references(model, small_images, "features.9", n_ref=5, cache_dir=tmp_path, progress=False)
    assert torch.equal(a.indices, b.indices)
    with torch.no_grad():
        model.features[7].weight[0, 0, 0, 0] += 1.0  # one weight changes: the fingerprint must too
    pt.collect_references(model, small_images, "features.9", n_ref=5, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("references-*.safetensors"))) == 2


def test_corrupt_cache_is_recomputed_with_warning(vgg, small_images, tmp_path):
    a = pt.collect_references(vgg, small_images, "features.9", n_ref=5, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("references-*.safetensors")
    path.write_bytes(path.read_bytes()[:50])  # truncated
    with pytest.warns(RuntimeWarning, match="corrupt or truncated"):
        b = pt.collect_references(vgg, small_images, "features.9", n_ref=5, cache_dir=tmp_path, progress=False)
    assert torch.equal(a.indices, b.indices)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: a clean hit now
        pt.collect_references(vgg, small_images, "features.9", n_ref=5, cache_dir=tmp_path, progress=False)


def test_images_of_the_wrong_size_for_the_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)).eval()
    data = TensorDataset(torch.randn(4, 3, 12, 12))  # the model expects 8 x 8
    with pytest.raises(pt.PuretoolsError, match=r"images of shape \(3, 12, 12\).*Resize the images"):
        pt.collect_references(model, data, "2", n_ref=2, progress=False)


def test_images_of_mixed_sizes(vgg):
    class Mixed(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(3, 8 + i, 8), i

    with pytest.raises(pt.PuretoolsError, match="different sizes.*Resize"):
        pt.collect_references(vgg, Mixed(), "features.9", n_ref=2, progress=False)


def test_items_that_are_not_tensors(vgg):
    from PIL import Image

    class Pil(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return Image.new("RGB", (8, 8)), i

    with pytest.raises(pt.PuretoolsError, match="ToTensor"):
        pt.collect_references(vgg, Pil(), "features.9", n_ref=1, progress=False)


# --------------------------------------------------------------------------- issue 11: references checked

from puretools.reference_type import References, check_neurons, check_references  # noqa: E402


def _circuits(model, data, refs, **kw):
    return pt.circuit_attributions(model, data, "features.9", "features.6", refs, progress=False, **kw)


def _heatmaps(model, data, refs, **kw):
    return pt.reference_heatmaps(model, data, "features.9", refs, **kw)


USERS = [_circuits, _heatmaps]


def test_references_carry_layer_channels_and_dataset(vgg, small_images):
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=3, progress=False)
    assert (refs.layer, refs.channels) == ("features.9", 12)
    assert refs.dataset == pt.cache.dataset_fingerprint(small_images)


@pytest.mark.parametrize("user", USERS)
def test_references_of_another_layer(vgg, small_images, user):
    refs = pt.collect_references(vgg, small_images, "features.6", n_ref=3, progress=False)  # 16 channels
    with pytest.raises(pt.PuretoolsError, match=r"collected at layer 'features.6' but this call is for layer 'features.9'"):
        user(vgg, small_images, refs)
    # bare indices of the wider layer: the layer's channel count catches them
    with pytest.raises(pt.PuretoolsError, match=r"16 rows \(channels\) but layer 'features.9' of this model has 12"):
        user(vgg, small_images, refs.indices)


@pytest.mark.parametrize("user", USERS)
def test_references_of_another_data_set_of_the_same_length(vgg, small_images, user):
    other = TensorDataset(small_images.tensors[0].flip(0))  # the same 40 images in another order
    refs = pt.collect_references(vgg, other, "features.9", n_ref=3, progress=False)
    with pytest.raises(pt.PuretoolsError, match="collected on another data set"):
        user(vgg, small_images, refs)
    user(vgg, other, refs, neurons=[0])  # the right data set: fine


@pytest.mark.parametrize("user", USERS)
def test_reference_index_out_of_range_names_it(vgg, small_images, user):
    idx = torch.zeros(12, 2, dtype=torch.long)
    idx[5, 1] = 40
    with pytest.raises(pt.PuretoolsError, match=r"Reference 1 of channel 5 is data-set index 40 .* holds 40"):
        user(vgg, small_images, idx)


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("neurons, message", [
    ([], "neurons is empty"),
    ([1.7], r"neurons\[0\] = 1.7 is not an integer"),
    ([0, 2.5], r"neurons\[1\] = 2.5 is not an integer"),
    ([3, 1, 3], r"neurons\[2\] = 3 repeats neurons\[0\]"),
    ([0, 12], r"neurons\[1\] = 12 is out of range: layer 'features.9' has 12 channels"),
    ([-1], r"neurons\[0\] = -1 is out of range"),
])
def test_bad_neurons_are_named(vgg, small_images, user, neurons, message):
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=2, progress=False)
    with pytest.raises(pt.PuretoolsError, match=message):
        user(vgg, small_images, refs, neurons=neurons)


def test_reference_patches_checks_neuron_and_layer(vgg, small_images):
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=2, progress=False)
    with pytest.raises(pt.PuretoolsError, match="neuron=1.7 must be an integer"):
        pt.reference_patches(vgg, small_images, "features.9", refs, neuron=1.7)
    with pytest.raises(pt.PuretoolsError, match="collected at layer 'features.9'"):
        pt.reference_patches(vgg, small_images, "features.6", refs, neuron=1, heatmaps=torch.zeros(2, 48, 48))


def test_neuron_forms_that_are_fine():
    assert torch.equal(check_neurons(None, 3), torch.arange(3))
    assert torch.equal(check_neurons(2, 3), torch.tensor([2]))
    assert torch.equal(check_neurons(torch.tensor([2, 0]), 3), torch.tensor([2, 0]))
    assert torch.equal(check_neurons(range(1, 3), 3), torch.tensor([1, 2]))
    import numpy as np

    assert torch.equal(check_neurons(np.array([1, 0]), 3), torch.tensor([1, 0]))


def test_hand_made_references_without_layer_information_still_work(vgg, small_images):
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=3, progress=False)
    old = References(refs.indices, refs.values, "features.9")  # the 3-field form of earlier versions
    idx, neurons = check_references(old, small_images, "features.9", [1], vgg)
    assert torch.equal(idx, refs.indices) and neurons.tolist() == [1]
    torch.testing.assert_close(_circuits(vgg, small_images, old, neurons=[1]), _circuits(vgg, small_images, refs, neurons=[1]))


@pytest.mark.parametrize(
    ("old", "module", "new"),
    [
        ("layer_output", "puretools.forward", "layer_output"),
        ("prepare_model", "puretools.forward", "prepare_model"),
        ("forward_to", "puretools.forward", "forward_to"),
        ("collate_images", "puretools.forward", "collate_images"),
        ("_capture", "puretools.forward", "capture_output"),
        ("check_references", "puretools.reference_type", "check_references"),
        ("check_neurons", "puretools.reference_type", "check_neurons"),
    ],
)
def test_names_moved_out_of_references_still_import_with_a_warning(old, module, new):
    """references.py was split (issue 21): the old names work for one release and say where they went."""
    import importlib

    import puretools.references as old_home

    with pytest.warns(DeprecationWarning, match=f"{module}.{new}"):
        found = getattr(old_home, old)
    assert found is getattr(importlib.import_module(module), new)
    with pytest.raises(AttributeError):
        old_home.no_such_name  # noqa: B018


def test_layer_output_takes_model_data_layer_and_the_old_order_warns():
    model = pt.load_model("toy")
    x = pt.toyworld.ToyWorld("test", n=3).images
    new = pt.layer_output(model, x, "layer3")
    with pytest.warns(DeprecationWarning, match=r"layer_output\(model, images, 'layer3'\)"):
        old = pt.layer_output(model, "layer3", x)
    assert torch.equal(new, old) and new.shape[:2] == (3, 64)
