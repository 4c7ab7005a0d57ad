"""Bad input across the pipeline: each case gets one clear error naming the item (issue 11).

Every test here failed on the code before the fix: a raw torch/PIL error, a wrong data-set
index in the message, or no error at all.
"""

import copy
import time

import pytest
import torch
import torchvision
from test_circuits import crp_circuits
from torch import nn
from torch.utils.data import TensorDataset

import puretools as pt
from puretools import hub
from puretools.__main__ import main as cli_main
from puretools.data import image_folder, make_image_folder
from puretools.virtual import activation_features

BAD = 30  # the data-set index of the bad image; never the first of a batch or chunk


def refs_through(bad: int, n_channels: int) -> torch.Tensor:
    """References [n_channels, 3] that put image ``bad`` third, after two good images."""
    return torch.tensor([[3, 11, bad]] * n_channels)


def with_image(dataset: TensorDataset, index: int, value: float) -> TensorDataset:
    images = dataset.tensors[0].clone()
    images[index] = value  # 3e38 is finite, but no convolution of it is
    return TensorDataset(images, *dataset.tensors[1:])


# --------------------------------------------------------------------------- NaN and overflow


@pytest.mark.parametrize("value", [float("nan"), 3e38])
def test_bad_pixels_in_circuits_name_the_dataset_index(vgg, small_images, value):
    data = with_image(small_images, BAD, value)
    with pytest.raises(pt.PuretoolsError, match=rf"data-set indices \[{BAD}\]"):
        pt.circuit_attributions(vgg, data, "features.9", "features.6", refs_through(BAD, 12), progress=False)


@pytest.mark.parametrize("value", [float("nan"), 3e38])
def test_bad_pixels_in_activation_features_name_the_dataset_index(vgg, small_images, value):
    data = with_image(small_images, BAD, value)
    with pytest.raises(pt.PuretoolsError, match=rf"data-set indices \[{BAD}\]"):
        activation_features(vgg, data, "features.9", refs_through(BAD, 12))


@pytest.mark.parametrize("value", [float("nan"), 3e38])
def test_bad_pixels_in_reference_heatmaps_name_the_dataset_index(vgg, small_images, value):
    data = with_image(small_images, BAD, value)
    with pytest.raises(pt.PuretoolsError, match=rf"data-set indices \[{BAD}\]"):
        pt.reference_heatmaps(vgg, data, "features.9", refs_through(BAD, 12), neurons=[0, 4])


def test_huge_finite_pixels_in_collect_references_are_caught(vgg, small_images):
    data = with_image(small_images, BAD, 3e38)  # finite: the one-sum check used to let it through
    assert torch.isfinite(data.tensors[0]).all()
    with pytest.raises(pt.PuretoolsError, match=rf"values beyond 1.8e\+19, at data-set indices \[{BAD}\]"):
        pt.collect_references(vgg, data, "features.9", n_ref=4, batch_size=16, progress=False)


def test_activations_that_overflow_are_caught_with_the_index(small_images):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    with torch.no_grad():
        model[0].weight.fill_(3e38)  # pixels are fine; the first layer overflows float32
    with pytest.raises(pt.PuretoolsError, match=r"activations of layer '2'.*data-set indices \[0, 1, 2, 3, 4\]"):
        pt.collect_references(model, small_images, "2", n_ref=4, batch_size=16, progress=False)


# --------------------------------------------------------------------------- files and dtypes


def test_truncated_jpeg_names_the_file(tmp_path, resnet18):
    root = make_image_folder(tmp_path / "imgs", n=6, size=40)
    victim = sorted(root.glob("*/*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:600])
    data = image_folder(root, size=32)
    with pytest.raises(pt.PuretoolsError, match=rf"{victim.name}.*truncated or corrupt.*remove it"):
        pt.collect_references(resnet18, data, "layer4", n_ref=2, batch_size=4, progress=False)


def test_uint8_images_are_refused_with_the_fix(vgg, small_images):
    data = TensorDataset((torch.rand(20, 3, 16, 16) * 255).byte())
    with pytest.raises(pt.PuretoolsError, match=r"uint8.*ToTensor\(\).*Normalize"):
        pt.collect_references(vgg, data, "features.9", n_ref=4, progress=False)
    with pytest.raises(pt.PuretoolsError, match=r"uint8.*data-set index \d"):
        pt.circuit_attributions(vgg, data, "features.9", "features.6", refs_through(7, 12), progress=False)


def test_float64_images_give_the_float32_results(vgg, small_images):
    data64 = TensorDataset(small_images.tensors[0].double())
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=5, progress=False)
    refs64 = pt.collect_references(vgg, data64, "features.9", n_ref=5, progress=False)
    assert torch.equal(refs.indices, refs64.indices)
    # references carry their data set's fingerprint, so the float64 run uses its own (equal) ones
    ours = pt.circuit_attributions(vgg, data64, "features.9", "features.6", refs64, progress=False)
    ref = crp_circuits(vgg, small_images, "features.9", "features.6", refs, range(12), "gradient")
    assert (ours - ref).abs().max() <= 1e-4
    feats = activation_features(vgg, data64, "features.9", refs64)
    assert torch.allclose(feats, activation_features(vgg, small_images, "features.9", refs))


def test_half_model_gets_half_inputs(vgg, small_images):
    half = copy.deepcopy(vgg).half()
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=5, progress=False)
    refs_half = pt.collect_references(half, small_images, "features.9", n_ref=5, progress=False)
    # float16 rounding may swap near-ties; the top reference values agree to float16 precision
    torch.testing.assert_close(refs_half.values, refs.values, atol=2e-2, rtol=2e-2)
    ours = pt.circuit_attributions(half, small_images, "features.9", "features.6", refs, progress=False)
    ref = crp_circuits(vgg, small_images, "features.9", "features.6", refs, range(12), "gradient")
    assert ours.dtype == torch.float32 and (ours - ref).abs().max() <= 1e-2


# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["gpu", "cuda:banana", "tpu"])
def test_invalid_device_names_are_refused_everywhere(vgg, small_images, device):
    refs = refs_through(5, 12)
    calls = [
        lambda: pt.collect_references(vgg, small_images, "features.9", n_ref=2, device=device, progress=False),
        lambda: pt.circuit_attributions(vgg, small_images, "features.9", "features.6", refs, device=device,
                                        progress=False),
        lambda: pt.reference_heatmaps(vgg, small_images, "features.9", refs, neurons=[0], device=device),
        lambda: activation_features(vgg, small_images, "features.9", refs, device=device),
        lambda: pt.load_model("resnet18", weights=None, device=device),
    ]
    for call in calls:
        with pytest.raises(pt.PuretoolsError, match=rf"device='{device}'.*'cpu'"):
            call()


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA")
def test_cuda_without_cuda_is_refused(vgg, small_images):
    with pytest.raises(pt.PuretoolsError, match="CUDA is not available"):
        pt.collect_references(vgg, small_images, "features.9", n_ref=2, device="cuda", progress=False)
    with pytest.raises(pt.PuretoolsError, match="CUDA is not available"):
        pt.load_model("resnet18", weights=None, device="cuda")


def test_cli_device_errors_name_the_flag(capsys):
    args = ["collect", "--model", "resnet18", "--weights", "none", "--device"]
    bad = ["gpu"] if torch.cuda.is_available() else ["gpu", "cuda"]
    for device in bad:
        with pytest.raises(SystemExit) as info:
            cli_main([*args, device])
        assert f"--device {device}" in str(info.value) and "device=" not in str(info.value)


# --------------------------------------------------------------------------- models and weights


def test_unknown_timm_model_says_unknown_not_download():
    with pytest.raises(pt.PuretoolsError, match=r"no model called 'not_a_model'.*timm.list_models") as info:
        pt.load_model("timm/not_a_model")
    assert not isinstance(info.value, pt.WeightsNotFoundError)
    with pytest.raises(pt.PuretoolsError, match=r"no pretrained weights 'nope' for 'resnet18'.*a1_in1k"):
        pt.load_model("timm/resnet18.nope")


def test_corrupt_torchvision_file_in_the_cache_says_delete_it(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    target = hub.torch_hub_file(url)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(pt.WeightsNotFoundError, match=rf"{target}.*corrupt.*Delete that file"):
        pt.load_model("resnet18")


def test_corrupt_hugging_face_file_in_the_cache_says_delete_it(monkeypatch, tmp_path):
    import huggingface_hub

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    repo = cache / "models--timm--resnet18.a1_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    weights = repo / "snapshots" / commit / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"\xff" * 64)
    t = time.monotonic()
    with pytest.raises(pt.WeightsNotFoundError, match=r"model.safetensors.*corrupt.*Delete that file"):
        pt.load_model("timm/resnet18.a1_in1k")
    assert time.monotonic() - t < 10  # offline mode while reading the cache: no retries


# --------------------------------------------------------------------------- in-place ops, layers called twice


def no_inplace(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


@pytest.mark.parametrize("method", ["gradient", "lrp"])
def test_inplace_relu_after_the_lower_layer_just_works(small_images, method):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),  # 0 1
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),  # 2 3 4
        nn.Conv2d(16, 6, 3, padding=1), nn.ReLU(inplace=True),  # 5 6
    ).eval()  # torchvision VGG style: a conv as lower layer, then ReLU(inplace=True)
    refs = pt.collect_references(model, small_images, "5", n_ref=5, progress=False)
    ours = pt.circuit_attributions(model, small_images, "5", "3", refs, method=method, progress=False)
    ref = crp_circuits(no_inplace(model), small_images, "5", "3", refs, range(6), method)
    assert ours.abs().sum() > 0 and (ours - ref).abs().max() <= 1e-4


def test_resnet_bn1_as_lower_layer_just_works(resnet18, small_images):
    refs = pt.collect_references(resnet18, small_images, "layer1", n_ref=3, progress=False)
    neurons = [0, 9, 40]
    ours = pt.circuit_attributions(resnet18, small_images, "layer1", "bn1", refs, neurons=neurons, progress=False)
    ref = crp_circuits(no_inplace(resnet18), small_images, "layer1", "bn1", refs, neurons, "gradient")
    assert ours.shape == (3, 3, 64) and (ours - ref).abs().max() <= 1e-4


class SharedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv2(self.act(self.conv1(x))))


def test_layer_called_twice_is_refused(small_images):
    model = SharedReLU().eval()
    with pytest.raises(pt.PuretoolsError, match=r"'act' is called more than once"):
        pt.collect_references(model, small_images, "act", n_ref=3, progress=False)
    with pytest.raises(pt.PuretoolsError, match=r"'act' is called more than once"):
        activation_features(model, small_images, "act", refs_through(5, 4))
    with pytest.raises(pt.PuretoolsError, match=r"'act' is called more than once"):
        pt.reference_heatmaps(model, small_images, "act", refs_through(5, 4), neurons=[1])
    refs = pt.collect_references(model, small_images, "conv2", n_ref=3, progress=False)  # once: fine
    assert refs.indices.shape == (4, 3)


# --------------------------------------------------------------------------- offline without help


@pytest.fixture
def bare_environment(monkeypatch, tmp_path):
    """No offline variables, empty torch and Hugging Face caches, a fresh network check."""
    import huggingface_hub

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hub, "_reachable", {})
    return tmp_path


LOADERS = {
    "timm": lambda: pt.load_model("timm/resnet50.a1_in1k"),
    "torchvision": lambda: pt.load_model("resnet50"),
    "clip": lambda: pt.ClipEmbedder(),
    "dino": lambda: pt.DinoEmbedder(),
}


@pytest.mark.parametrize("name", LOADERS)
def test_offline_fails_fast_without_environment_variables(bare_environment, capfd, name):
    urls = (hub.hf_endpoint(), torchvision.models.get_model_weights("resnet50").DEFAULT.url)
    if any(hub.network_available(u) for u in urls):
        pytest.skip("this machine has network; the simulated-hang test below covers it")
    hub._reachable.clear()
    t = time.monotonic()
    with pytest.raises(pt.WeightsNotFoundError, match=r"not in the local cache.*no network"):
        LOADERS[name]()
    assert time.monotonic() - t <= 10
    assert "Retry" not in capfd.readouterr().err


@pytest.mark.parametrize("name", LOADERS)
def test_a_network_that_hangs_costs_one_probe_timeout(bare_environment, monkeypatch, name):
    def hang(address, timeout=None, *args, **kwargs):
        time.sleep(timeout + 0.5)  # a firewall that drops packets: the connect never answers
        raise TimeoutError

    monkeypatch.setattr(hub.socket, "create_connection", hang)
    monkeypatch.setattr(hub, "PROBE_TIMEOUT", 1.0)
    t = time.monotonic()
    with pytest.raises(pt.WeightsNotFoundError, match=r"could not be reached within"):
        LOADERS[name]()
    assert time.monotonic() - t <= 10
