"""CP-LRP on vision transformers (puretools.transformer_lrp) and the refusal of uncovered LRP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from zennit.composites import LayerMapComposite

from conftest import zero_biases
from puretools import PuretoolsError, canonizer_report, lrp_composite
from puretools.transformer_lrp import CPLRPComposite, lrp_block, lrp_coverage, lrp_sum

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE = Path(__file__).parent / "data" / "lxt_vit_reference.safetensors"


def _hooks_and_forwards(model: nn.Module) -> list[tuple[str, str]]:
    """Everything a composite may leave behind: hooks, and attributes shadowing class methods."""
    left = []
    for name, module in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if getattr(module, kind, None):
                left.append((name, kind))
        for attr in ("forward", "_pos_embed", "pool", "_embeds", "_global_pool", "puretools_cp_lrp", "canonizer_sum"):
            if attr in vars(module):
                left.append((name, attr))
    return left


def _conservation(model: nn.Module, inner: nn.Module, x: torch.Tensor, epsilon: float = 1e-6) -> float:
    """Relative error |sum R_in - sum R_out| / sum |R_out| of CP-LRP through ``inner`` (float64)."""
    model.double().eval()
    x = x.double().requires_grad_(True)
    composite = CPLRPComposite(epsilon=epsilon)
    assert lrp_coverage(model, composite) == []
    with composite.context(model):
        y = inner(x)
        start = y.detach().clamp(min=0)  # relu of the output: a positive starting relevance
        (relevance,) = torch.autograd.grad(y, x, start)
    assert _hooks_and_forwards(model) == []
    return float((relevance.sum() - start.sum()).abs() / start.abs().sum())


def _timm_vit():
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32)


def _torchvision_vit():
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model


def _open_clip_vit():
    from open_clip.transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16)


@pytest.mark.parametrize(
    "build, part, shape",
    [
        (_timm_vit, "blocks", (2, 5, 192)),
        (_timm_vit, "", (2, 3, 32, 32)),
        (_torchvision_vit, "encoder.layers", (2, 17, 32)),
        (_torchvision_vit, "", (2, 3, 32, 32)),
        (_open_clip_vit, "transformer", (2, 17, 32)),
        (_open_clip_vit, "", (2, 3, 32, 32)),
    ],
)
def test_cp_lrp_conserves_relevance_withzero_biases(build, part, shape):
    torch.manual_seed(0)
    model = zero_biases(build())
    inner = model.get_submodule(part) if part else model
    x = torch.randn(shape)
    # with the epsilon rule's stabiliser almost off, only the rounding is left
    assert _conservation(model, inner, x, epsilon=1e-12) <= 1e-5
    if part:  # a stack of blocks with the default epsilon (1e-6) too
        assert _conservation(model, inner, x) <= 1e-5


def test_cp_lrp_is_not_gradient_times_input_and_is_conservative_where_that_is_not():
    """A LayerNorm without its rule makes relevance vanish; CP-LRP keeps it (the issue's 1e-5 symptom)."""
    torch.manual_seed(0)
    model = zero_biases(_timm_vit()).double().eval()
    x = torch.randn(2, 5, 192, dtype=torch.float64, requires_grad=True)
    y = model.blocks(x)
    start = y.detach().clamp(min=0)
    (grad,) = torch.autograd.grad(y, x, start)
    plain = float((grad * x).detach().sum() / start.sum())
    assert abs(plain - 1) > 1e-2  # gradient x input through LayerNorm and softmax does not conserve
    assert _conservation(model, model.blocks, x.detach()) <= 1e-5


def test_multihead_attention_no_longer_crashes_and_context_restores_everything():
    torch.manual_seed(0)
    model = _torchvision_vit().eval()
    before = _hooks_and_forwards(model)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    with lrp_composite(model).context(model):
        assert _hooks_and_forwards(model) != []  # applied while the context is open
        y = model(x)
        (relevance,) = torch.autograd.grad(y, x, torch.eye(1000)[[1, 2]] * y)
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    assert _hooks_and_forwards(model) == before == []
    # the model computes exactly what it did before
    torch.testing.assert_close(model(x), y.detach(), rtol=1e-4, atol=1e-4)


def test_canonized_forwards_compute_the_original_outputs():
    torch.manual_seed(0)
    for build in (_timm_vit, _torchvision_vit, _open_clip_vit):
        model = build().eval()
        x = torch.randn(2, 3, 32, 32)
        expected = model(x)
        with CPLRPComposite().context(model) as modified:
            torch.testing.assert_close(modified(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_open_clip_vit_b_32_is_covered():
    open_clip = pytest.importorskip("open_clip")
    model = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval()
    assert lrp_coverage(model, lrp_composite(model)) == []
    assert canonizer_report(model).complete


def test_matches_lxt_cp_lrp_on_a_torchvision_vit():
    """LXT 2.1's cp_LRP (tensors recorded by tests/lxt_reference.py) equals puretools' CP-LRP to 1e-6."""
    from safetensors.torch import load_file
    from torchvision.models import VisionTransformer

    config = dict(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5)

    stored = load_file(str(REFERENCE))
    model = VisionTransformer(**config)  # tests/lxt_reference.py's CONFIG
    model.load_state_dict({k[len("model.") :]: v for k, v in stored.items() if k.startswith("model.")})
    model.double().eval()
    x = stored["input"].double().requires_grad_(True)
    target = stored["target"]
    with lrp_composite(model).context(model):
        y = model(x)
        start = torch.zeros_like(y)
        start[torch.arange(len(x)), target] = y.detach()[torch.arange(len(x)), target]
        (relevance,) = torch.autograd.grad(y, x, start)
    reference = stored["relevance"]
    assert reference.abs().sum() > 0
    error = float((relevance - reference).abs().max() / reference.abs().max())
    assert error <= 1e-6, error
    # and a perturbed model no longer matches: the comparison can fail
    with torch.no_grad():
        model.encoder.layers[0].ln_1.weight.mul_(1.01)
    with lrp_composite(model).context(model):
        y = model(x)
        (other,) = torch.autograd.grad(y, x, start)
    assert float((other - reference).abs().max() / reference.abs().max()) > 1e-4


def test_lrp_block_is_the_epsilon_rule_of_an_affine_map():
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    out = lrp_block(lambda t: weight @ t + bias, x)
    upper = torch.randn(3, dtype=torch.float64)
    (relevance,) = torch.autograd.grad(out, x, upper)
    z = weight * x.detach()  # contributions z_ji = w_ji x_i
    expected = (z * (upper / (z.sum(1) + bias))[:, None]).sum(0)  # LRP-epsilon written out
    torch.testing.assert_close(relevance, expected, rtol=1e-6, atol=1e-9)
    a, b = torch.randn(5, dtype=torch.float64, requires_grad=True), torch.randn(5, dtype=torch.float64, requires_grad=True)
    ra, rb = torch.autograd.grad(lrp_sum(a, b), (a, b), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(ra + rb, torch.ones(5, dtype=torch.float64))


def _cnn_zero_bias(model: nn.Module) -> nn.Module:
    """Zero biases and BatchNorm means; BatchNorm variances from the data (mean 0, so the merged
    biases stay 0): with random weights the activations would otherwise shrink to 1e-14 and the
    stabilisers, not the rules, would decide."""
    model = zero_biases(model).double().eval()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.running_mean.zero_()
    hooks = [bn.register_forward_pre_hook(lambda bn, i: (bn.running_var.copy_(i[0].pow(2).mean((0, 2, 3))), None)[1])
             for bn in norms]  # fmt: skip
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64, dtype=torch.float64))
    for hook in hooks:
        hook.remove()
    return model


def _cnn_ratio(model: nn.Module, part: nn.Module, composite) -> float:
    """sum of the input relevance / sum of the starting relevance relu(output of ``part``)."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    with composite.context(model):
        y = part(x)
        start = y.detach().clamp(min=0)
        (relevance,) = torch.autograd.grad(y, x, start)
    assert _hooks_and_forwards(model) == []
    return float(relevance.sum() / start.sum())


def test_convnext_and_efficientnet_lrp_conserve_withzero_biases():
    import timm
    import torchvision
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.rules import Epsilon, Norm, Pass
    from zennit.types import Activation, AvgPool, Convolution

    from puretools.cnn_lrp import ModernCNNCanonizer
    from puretools.transformer_lrp import TransformerCanonizer

    torch.manual_seed(0)
    convnext = _cnn_zero_bias(timm.create_model("convnext_atto", pretrained=False))
    assert abs(_cnn_ratio(convnext, convnext, lrp_composite(convnext)) - 1) <= 1e-3
    assert canonizer_report(convnext).complete
    for build in (torchvision.models.efficientnet_b0, torchvision.models.mobilenet_v2):
        model = _cnn_zero_bias(build())
        lrp_composite(model)  # covered: no refusal
        # the canonizers conserve: with the epsilon rule on every layer nothing is lost
        # (the default z+ rule drops outputs without positive input, often in depthwise convs)
        composite = LayerMapComposite(
            [(Activation, Pass()), (AvgPool, Norm()), (Convolution, Epsilon(1e-9)), (nn.Linear, Epsilon(1e-9))],
            canonizers=[SequentialMergeBatchNorm(), ModernCNNCanonizer(), TransformerCanonizer()],
        )
        assert abs(_cnn_ratio(model, model.features, composite) - 1) <= 1e-3
        # and without the canonizers relevance is not conserved: the check can fail
        plain = LayerMapComposite(composite.layer_map, canonizers=[SequentialMergeBatchNorm()])
        assert abs(_cnn_ratio(model, model.features, plain) - 1) > 1e-2


def test_uncovered_cnns_are_refused_with_the_modules_named():
    import timm

    with pytest.raises(PuretoolsError, match=r"module .blocks\.0\.0\.se. \(SqueezeExcite\)"):
        lrp_composite(timm.create_model("efficientnet_b0", pretrained=False))  # timm's blocks: no canonizer
    with pytest.raises(PuretoolsError, match=r"'1' \(_Residual\): adds two activations"):
        lrp_composite(nn.Sequential(nn.Conv2d(3, 4, 1), _Residual()))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return x + self.conv(x)


def test_uncovered_layer_norm_and_residual_in_a_small_model_are_named():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.fc(x)

    with pytest.raises(PuretoolsError, match=r"module '1' \(Residual\): adds two activations"):
        lrp_composite(nn.Sequential(nn.Linear(4, 4), Residual()))
    with pytest.raises(PuretoolsError, match=r"module '1' \(LayerNorm\): no LRP rule"):
        lrp_composite(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    assert lrp_coverage(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), lrp_composite(nn.Sequential(nn.Conv2d(3, 4, 3))))  == []


def test_canonizer_report_is_never_complete_on_zero_blocks():
    import timm

    report = canonizer_report(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    assert (report.residual_blocks, report.complete) == (0, False)
    report = canonizer_report(timm.create_model("efficientnet_b0", pretrained=False))  # timm's: not recognised
    assert (report.residual_blocks, report.complete) == (0, False)
    report = canonizer_report(_timm_vit())
    assert (report.residual_blocks, report.canonized_blocks, report.complete) == (2, 2, True)


def test_lrp_subnetwork_between_two_vit_blocks_conserves_relevance():
    """The circuits' backward (subnetwork, lrp_composite) on a torchvision ViT: the relevance at
    the lower block sums to the starting relu(a_k) of one feature of the upper block."""
    from puretools.subnet import subnetwork

    torch.manual_seed(0)
    model = zero_biases(_torchvision_vit()).double().eval()
    sub = subnetwork(model, "encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_0")
    x = torch.randn(2, 17, 32, dtype=torch.float64, requires_grad=True)
    with lrp_composite(model).context(model):
        y = sub(x)
        start = torch.zeros_like(y)
        start[..., 7] = y.detach()[..., 7].clamp(min=0)  # one feature, all tokens
        (relevance,) = torch.autograd.grad(y, x, start)
    assert float((relevance.sum() - start.sum()).abs() / start.sum()) <= 1e-5
