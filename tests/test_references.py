"""collect_references against a brute-force top-n_ref over all activations."""

import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

import puretools as pt
from puretools.references import layer_output


def brute_force(model, dataset, layer, n_ref):
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        a = layer_output(model, layer, x).flatten(2).amax(-1).T  # [C, N]
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
