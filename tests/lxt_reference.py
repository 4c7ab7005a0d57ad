"""Record LXT's CP-LRP relevance on a small torchvision ViT, the reference of tests/test_transformer_lrp.py.

LXT (``pip install lxt``, 2.1) imports transformers and patches torchvision's and zennit's
classes globally, so puretools does not depend on it: this script runs once, in an
environment that has it, and stores the model's weights, the input, the target classes and
LXT's input relevance in ``tests/data/lxt_vit_reference.safetensors``. LXT 2.1 needs zennit
>= 0.5 (puretools runs with 0.4.6) and transformers < 5; one way, without touching the
project's environment::

    python -m pip install --target /tmp/lxtpkgs --no-deps lxt "transformers<5" \\
        "tokenizers>=0.22,<=0.23.0" "huggingface-hub>=0.34,<1.0" "zennit>=0.5" tabulate
    PYTHONPATH=/tmp/lxtpkgs python tests/lxt_reference.py

The model is torchvision's ``VisionTransformer`` (the class of ``vit_b_16``), shrunk to two
layers of width 16 on 8x8 images (patches of 4x4) so that the file stays small; every parameter is drawn at
random (biases, LayerNorm weights, position embedding included), so that the comparison also
covers the parts of the rules that do not conserve relevance. LXT's rules are its
``cp_LRP`` map for torchvision (GELU identity rule, LayerNorm with constant std, attention
weights constant) with its gradient x input patch of zennit and zennit's ``Epsilon`` (1e-6)
on Linear and Conv2d layers, as in LXT's ViT example.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import VisionTransformer

OUT = Path(__file__).parent / "data" / "lxt_vit_reference.safetensors"
CONFIG = dict(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5)


def reference_model() -> VisionTransformer:
    """The model of the reference, with its random parameters (float64, eval mode)."""
    torch.manual_seed(0)
    model = VisionTransformer(**CONFIG)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "pos_embedding" in name or "class_token" in name:
                param.normal_(0.0, 0.1)
            elif "ln" in name.split(".")[-2] or name.endswith("ln.weight"):
                param.normal_(1.0, 0.1)  # LayerNorm weights
            else:
                param.normal_(0.0, 0.3)
    return model.double().eval()  # float32 values (stored as such), computed in float64


def main() -> None:
    import zennit.rules as z_rules
    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from safetensors.torch import save_file
    from torchvision.models import vision_transformer
    from zennit.composites import LayerMapComposite

    model = reference_model()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8).double()
    target = torch.tensor([0, 3])

    monkey_patch(vision_transformer, verbose=True)  # LXT's cp_LRP map for torchvision ViTs
    monkey_patch_zennit(verbose=True)
    composite = LayerMapComposite([(torch.nn.Conv2d, z_rules.Epsilon()), (torch.nn.Linear, z_rules.Epsilon())])
    composite.register(model)
    x_in = x.clone().requires_grad_(True)
    y = model(x_in)
    y[torch.arange(2), target].sum().backward()
    relevance = (x_in * x_in.grad).detach()  # LXT works in the gradient x input frame
    composite.remove()
    print("logits", y[torch.arange(2), target].tolist(), "relevance sums", relevance.sum((1, 2, 3)).tolist())

    tensors = {f"model.{k}": v.float().contiguous() for k, v in model.state_dict().items()}
    tensors.update(input=x.float(), target=target, relevance=relevance.contiguous())
    OUT.parent.mkdir(exist_ok=True)
    save_file(tensors, str(OUT), metadata={"lxt": "2.1", "rules": "cp_LRP + Epsilon(1e-6) on Linear and Conv2d"})
    print("wrote", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
