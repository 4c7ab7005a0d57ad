"""Layer layouts (puretools.layouts) on CNNs, ViTs of three libraries, ConvNeXt and a sequence-first model,
and the cut (puretools.subnet) through timm blocks."""

import pytest
import timm
import torch
import torchvision
from open_clip.transformer import VisionTransformer as OpenClipViT
from torch import nn

from puretools.errors import PuretoolsError
from puretools.forward import layer_output
from puretools.layouts import Layout, layer_layout, prefix_tokens, token_grid
from puretools.subnet import subnetwork


def tiny_timm_vit(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3, **kw).eval()


def tiny_open_clip_vit():
    torch.manual_seed(0)  # the class of open_clip's ViT-B-32 visual tower, small
    return OpenClipViT(image_size=32, patch_size=8, width=16, layers=2, heads=2, mlp_ratio=4.0, output_dim=8).eval()


def tiny_torchvision_vit():
    torch.manual_seed(0)  # the class of torchvision's vit_b_16, small
    return torchvision.models.VisionTransformer(32, 16, 2, 2, 16, 32).eval()


class SequenceFirst(nn.Module):
    """Patches -> tokens [T, B, C] (nn.MultiheadAttention with batch_first=False) -> MLP -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.attn = nn.MultiheadAttention(8, 2)
        self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).permute(2, 0, 1)  # [T, B, C]
        t = t + self.attn(t, t, t, need_weights=False)[0]
        t = t + self.fc2(self.act(self.fc1(t)))
        return self.head(t.mean(0))


class Ambiguous(nn.Module):
    """A conv, then a permute and a linear layer on [B, H, W, C] with H = W = C = 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 4, 1), nn.ReLU()
        self.lin, self.act2 = nn.Linear(4, 4), nn.ReLU()

    def forward(self, x):
        return self.act2(self.lin(self.act(self.conv(x)).permute(0, 2, 3, 1)))


@pytest.mark.parametrize("kind, shape", [("channels_first", (2, 3, 4, 5)), ("channels_first", (2, 3)),
                                         ("channels_last", (2, 4, 5, 3)), ("tokens", (2, 7, 3)),
                                         ("sequence_first", (7, 2, 3))])  # fmt: skip
def test_canonical_view_round_trips_and_reduces_like_brute_force(kind, shape):
    x = torch.randn(shape)
    lay = Layout(kind)
    flat = lay.to_channels(x)
    assert flat.shape[:2] == (2, 3)
    assert torch.equal(lay.from_channels(flat, x.shape), x)
    # brute force: move the channel axis to 1, the batch to 0, flatten the rest
    moved = {"channels_first": lambda: x, "channels_last": lambda: x.permute(0, 3, 1, 2),
             "tokens": lambda: x.transpose(1, 2), "sequence_first": lambda: x.permute(1, 2, 0)}[kind]()  # fmt: skip
    brute = moved.reshape(2, 3, -1)
    assert torch.equal(lay.reduce(x), brute.amax(-1))
    assert torch.allclose(lay.reduce(x, "mean"), brute.mean(-1))
    assert lay.channels(x) == 3 and lay.batch_size(x) == 2


def test_channels_first_reduce_is_exactly_the_cnn_spatial_max():
    x = torch.randn(3, 5, 6, 7)
    assert torch.equal(Layout("channels_first").reduce(x), x.flatten(2).amax(-1))


def test_cls_reduce_needs_a_class_token():
    x = torch.randn(2, 5, 3)
    assert torch.equal(Layout("tokens", prefix_tokens=1).reduce(x, "cls"), x[:, 0])
    with pytest.raises(PuretoolsError, match="class token"):
        Layout("channels_first").reduce(torch.randn(2, 3, 4, 4), "cls")
    with pytest.raises(PuretoolsError, match="token_reduce='sum'"):
        Layout("tokens").reduce(x, "sum")
    with pytest.raises(PuretoolsError, match="not a layout"):
        Layout("nhwc")


def test_cnn_layers_are_channels_first(vgg):
    x = torch.randn(2, 3, 16, 16)
    for layer in ("features.0", "features.2", "features.9", "pool", "classifier"):
        assert layer_layout(vgg, layer, x).kind == "channels_first"


@pytest.mark.parametrize("make, layers, prefix, grid", [
    (tiny_timm_vit, ["blocks.1", "blocks.1.mlp.act", "blocks.2.norm1", "norm"], 1, (2, 2)),
    (tiny_open_clip_vit, ["transformer.resblocks.1", "transformer.resblocks.1.mlp.gelu"], 1, (4, 4)),
    (tiny_torchvision_vit, ["encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_1.mlp.1"], 1, (2, 2)),
])  # fmt: skip
def test_vit_token_layers_are_tokens_with_the_family_prefix_and_grid(make, layers, prefix, grid):
    model = make()
    x = torch.randn(2, 3, 32, 32)
    assert prefix_tokens(model) == prefix and token_grid(model, (32, 32)) == grid
    for layer in layers:
        lay = layer_layout(model, layer, x)
        assert lay == Layout("tokens", prefix_tokens=prefix, grid=grid), layer
        out = layer_output(model, x, layer)
        assert lay.channels(out) == out.shape[-1]
        tokens = out.shape[1]
        heat = lay.spatial(lay.to_channels(out)[:, 0])
        assert torch.equal(heat.flatten(1), out[:, prefix:, 0]) and heat.shape == (2, *grid)
        assert tokens == prefix + grid[0] * grid[1]


def test_timm_prefix_tokens_count_registers():
    model = tiny_timm_vit(reg_tokens=2)
    lay = layer_layout(model, "blocks.0", torch.randn(2, 3, 32, 32))
    assert lay.prefix_tokens == 3 and lay.grid == (2, 2)


def test_convnext_channels_last_mlp():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, conv_mlp=False).eval()
    x = torch.randn(2, 3, 32, 32)
    assert layer_layout(model, "stages.1.blocks.0.mlp.act", x).kind == "channels_last"
    assert layer_layout(model, "stages.1.blocks.0.norm", x).kind == "channels_last"
    assert layer_layout(model, "stages.1.blocks.0.conv_dw", x).kind == "channels_first"
    assert layer_layout(model, "stages.1.blocks.0", x).kind == "channels_first"
    torch.manual_seed(0)
    conv_mlp = timm.create_model("convnext_atto", pretrained=False, conv_mlp=True).eval()
    assert layer_layout(conv_mlp, "stages.1.blocks.0.mlp.act", x).kind == "channels_first"


def test_sequence_first_tokens():
    torch.manual_seed(0)
    model = SequenceFirst().eval()
    x = torch.randn(3, 3, 16, 16)
    lay = layer_layout(model, "act", x)
    assert lay.kind == "sequence_first"
    out = layer_output(model, x, "act")  # [16 tokens, 3 images, 16 features]
    assert torch.equal(lay.reduce(out), out.amax(0))
    assert layer_layout(model, "patch", x).kind == "channels_first"


def test_ambiguous_layout_raises_and_names_the_fix():
    model = Ambiguous().eval()
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(PuretoolsError, match="layout="):
        layer_layout(model, "act2", x)
    assert layer_layout(model, "act2", x, layout="channels_last").kind == "channels_last"
    assert layer_layout(model, "conv", x).kind == "channels_first"  # its own type settles it
    with pytest.raises(PuretoolsError, match="does not have the layout 'tokens'"):
        layer_layout(model, "act2", x, layout="tokens")


def test_cut_through_timm_blocks_ignores_optional_arguments():
    model = tiny_timm_vit()
    x = torch.randn(2, 3, 32, 32)
    for layer, lower in [("blocks.2", "blocks.1"), ("blocks.2.mlp.act", "blocks.1"), ("blocks.2.mlp.act", "blocks.2.norm2")]:
        sub = subnetwork(model, layer, lower)
        assert torch.equal(sub(layer_output(model, x, lower)), layer_output(model, x, layer))


def test_cut_still_refuses_the_real_skip_across_the_residual():
    model = tiny_timm_vit()
    with pytest.raises(PuretoolsError, match="skips 'blocks.1.mlp.act'"):
        subnetwork(model, "blocks.2.mlp.act", "blocks.1.mlp.act")
    with pytest.raises(PuretoolsError, match="skips 'blocks.1.mlp.act'"):
        subnetwork(model, "blocks.2", "blocks.1.mlp.act")


def test_cut_below_a_lower_layer_inside_the_previous_block_reads_it_on_the_way():
    model = tiny_timm_vit().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with pytest.raises(PuretoolsError, match="cut='blocks.0'"):  # the skip error names the cut that works
        subnetwork(model, "blocks.2.mlp.act", "blocks.1.mlp.act")
    sub = subnetwork(model, "blocks.2.mlp.act", "blocks.1.mlp.act", cut="blocks.0")
    y, low = sub(layer_output(model, x, "blocks.0").requires_grad_(True))
    grad = torch.autograd.grad(y[:, :, 3].clamp(min=0).sum(), low)[0]
    store = {}  # full-model autograd, the reference
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o))
             for n in ("blocks.1.mlp.act", "blocks.2.mlp.act")]  # fmt: skip
    model(x)
    for h in hooks:
        h.remove()
    ref = torch.autograd.grad(store["blocks.2.mlp.act"][:, :, 3].clamp(min=0).sum(), store["blocks.1.mlp.act"])[0]
    assert torch.equal(low, store["blocks.1.mlp.act"]) and grad.abs().sum() > 0
    assert (grad - ref).abs().max() <= 1e-12
    with pytest.raises(PuretoolsError, match="not a cut"):
        subnetwork(model, "blocks.2.mlp.act", "blocks.1.mlp.act", cut="blocks.1.norm2")
