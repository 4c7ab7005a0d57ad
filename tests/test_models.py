"""load_model, layer addressing and canonizers (ours for timm, zennit's for torchvision)."""

import pytest
import torch
from zennit.composites import EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer

import puretools as pt
from puretools.models import TimmResNetCanonizer


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_torchvision_random(name):
    model = pt.load_model(name, weights=None)
    assert not model.training
    assert {"layer3", "layer4"} <= set(pt.layer_names(model))
    report = pt.canonizer_report(model)
    assert report.residual_blocks == {"resnet18": 8, "resnet34": 16, "resnet50": 16, "resnet101": 33}[name]
    assert report.complete


def test_timm_resnet_needs_our_canonizer():
    model = pt.load_model("timm/resnet18", weights=None)
    assert not model.training
    zennit_only = pt.canonizer_report(model, [ResNetCanonizer()])
    assert zennit_only.residual_blocks == 8 and zennit_only.canonized_blocks == 0
    assert pt.canonizer_report(model).canonized_blocks == 8
    assert isinstance(pt.canonizers_for(model)[-1], TimmResNetCanonizer)


@pytest.mark.parametrize("name", ["timm/resnet18", "timm/resnet50"])
def test_timm_canonized_block_conserves_relevance(name):
    """LRP through one canonized residual block: relevance in == relevance out (no biases)."""
    torch.manual_seed(0)
    model = pt.load_model(name, weights=None)
    for m in model.modules():  # timm zero-inits the last BN of each block: make every branch count
        if isinstance(m, torch.nn.BatchNorm2d):  # bias-free after merging, so LRP must conserve
            m.weight.data.uniform_(0.5, 1.5)
            m.running_var.uniform_(0.5, 1.5)
    block = model.layer2[1]
    x = torch.rand(2, block.conv1.in_channels, 8, 8, requires_grad=True)

    def relevance_ratio(canonizers):
        with EpsilonPlusFlat(canonizers=canonizers).context(block) as modified:
            y = modified(x)
            (g,) = torch.autograd.grad(y, x, y.clamp(min=0))
        return (g.sum() / y.clamp(min=0).sum()).item()

    assert relevance_ratio(pt.canonizers_for(model)) == pytest.approx(1.0, abs=0.02)
    # without our canonizer the in-place residual add splits nothing: relevance is not conserved
    assert abs(relevance_ratio([ResNetCanonizer()]) - 1.0) > 0.1


def test_canonized_forward_is_unchanged():
    torch.manual_seed(0)
    model = pt.load_model("timm/resnet18", weights=None)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
        with EpsilonPlusFlat(canonizers=pt.canonizers_for(model)).context(model) as modified:
            y2 = modified(x)
    torch.testing.assert_close(y, y2, atol=1e-4, rtol=1e-4)


def test_unknown_model_name():
    with pytest.raises(pt.PuretoolsError, match="Unknown model name 'resnet5'.*resnet50"):
        pt.load_model("resnet5")


def test_missing_weights_name_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(pt.WeightsNotFoundError, match=r"resnet50-[0-9a-f]+\.pth.*TORCH_HOME"):
        pt.load_model("resnet50")


def test_missing_timm_weights_name_the_repo(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(pt.WeightsNotFoundError, match=r"timm/resnet18.a1_in1k.*model.safetensors"):
        pt.load_model("timm/resnet18.a1_in1k")


def test_weights_from_local_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = pt.load_model("resnet18", weights=None)
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        model = pt.load_model("resnet18", weights=tmp_path / f)
        assert torch.equal(model.fc.weight, src.fc.weight)
    with pytest.raises(pt.WeightsNotFoundError, match="does not exist"):
        pt.load_model("resnet18", weights=tmp_path / "missing.pth")
