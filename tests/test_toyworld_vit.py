"""Tests of the toy ViT (puretools/toyworld/vit.py): architecture, shipped checkpoint, training."""

import json
import subprocess
import sys

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import puretools as pt
from puretools import layer_output
from puretools import toyworld as tw
from puretools.errors import PuretoolsError, WeightsNotFoundError
from puretools.toyworld import training

TINY = {"dim": 12, "heads": 2, "depth": 2, "mlp_ratio": 1.0, "layer_width": 4}
TINY_RUN = dict(n_train=128, batch_size=64, verbose=False, threads=1, arch="vit", vit_config=TINY)


@pytest.fixture(scope="module")
def vit_record():
    return json.loads((tw.DATA_DIR / "vit_record.json").read_text())


@pytest.fixture(scope="module")
def toy_vit():
    return pt.load_model("toy-vit")


def test_toy_vit_shapes_and_layers():
    torch.manual_seed(0)
    model = tw.build_vit().eval()
    assert isinstance(model, VisionTransformer) and model.num_prefix_tokens == 1  # CLS
    x = tw.ToyWorld("test", n=3).images
    assert model(x).shape == (3, len(tw.CONCEPTS))
    # the layer of interest: [B, 1 CLS + 4 x 4 patches, 8 neurons]; fewer neurons than concepts
    assert layer_output(model, x, tw.VIT_LAYER).shape == (3, 17, 8) and 8 < len(tw.CONCEPTS)
    assert layer_output(model, x, tw.VIT_LOWER_LAYER).shape == (3, 17, tw.DEFAULT_VIT["dim"])
    assert isinstance(pt.models.get_module(model, tw.VIT_LAYER), torch.nn.GELU)
    # the head reads the mean of the patch tokens only (not CLS), so every patch token counts
    feats = model.forward_features(x)
    assert torch.allclose(model.forward_head(feats), model.head(model.fc_norm(feats[:, 1:].mean(1))), atol=1e-6)


def test_build_vit_rejects_bad_settings():
    with pytest.raises(PuretoolsError, match="unknown settings"):
        tw.build_vit(width=3)
    with pytest.raises(PuretoolsError, match="patch size dividing 32"):
        tw.build_vit(patch_size=5)
    with pytest.raises(PuretoolsError, match="arch must be one of"):
        tw.train("/nonexistent", arch="vgg")


def test_shipped_toy_vit_matches_its_record(toy_vit, vit_record):
    path = tw.DATA_DIR / "vit.safetensors"
    assert training._sha256(path) == vit_record["sha256"]
    assert path.stat().st_size < 5e6
    assert not toy_vit.training and isinstance(toy_vit, VisionTransformer)
    config = vit_record["config"]
    assert config["architecture"] == "ToyViT" and config["layer"] == tw.VIT_LAYER
    assert config["lower_layer"] == tw.VIT_LOWER_LAYER
    assert toy_vit.blocks[-1].mlp.fc1.out_features == config["layer_width"] < len(tw.CONCEPTS)
    # the budget, "5 minutes or less on 2 CPU cores", in core-seconds: 2 x 300 s. The shipped
    # training took 352 s of CPU on one thread (rendering the 24,000 images included), so on 2 cores it
    # fits only with some speed-up from a second thread: measured on one thread, not on two.
    assert vit_record["threads"] == 1 and vit_record["cpu_time_s"] < 2 * 300


def test_shipped_toy_vit_accuracy_is_the_recorded_one(toy_vit, vit_record):
    metrics = training._evaluate(toy_vit, tw.ToyWorld("test"))  # the whole test split, as recorded
    for key in ("mean_per_concept_accuracy", "exact_match_accuracy", "macro_f1", "all_absent_per_concept_accuracy"):
        assert vit_record[key] == pytest.approx(metrics[key], abs=2e-3), key
    # better than predicting "absent" everywhere
    assert vit_record["mean_per_concept_accuracy"] > vit_record["all_absent_per_concept_accuracy"]


def test_load_model_toy_vit_and_the_wrong_loader_are_clear(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="toy train --arch vit"):
        tw.load_toy_vit(tmp_path / "nothing.safetensors")
    with pytest.raises(PuretoolsError, match="does not hold a toy ViT"):
        tw.load_toy_vit(tw.DATA_DIR / "model.safetensors")
    with pytest.raises(PuretoolsError, match="load_toy_vit"):
        tw.load_toy_model(tw.DATA_DIR / "vit.safetensors")
    with pytest.raises(PuretoolsError, match="'toy-vit'"):
        pt.load_model("toy-vitt")


def test_tiny_vit_training_moves_the_weights_and_writes_a_loadable_checkpoint(tmp_path):
    record = tw.train(tmp_path, max_batches=6, **{**TINY_RUN, "n_train": 384})
    history = record["loss_history"]
    # the head starts at the share of present concepts, so the first loss is already near the
    # all-absent baseline's (about 0.29) and six steps need not lower it
    assert len(history) == 6 and all(0.1 < v < 0.7 for v in history)
    torch.manual_seed(0)
    initial = tw.build_vit(**TINY).state_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit.safetensors", "vit_record.json"]
    saved = json.loads((tmp_path / "vit_record.json").read_text())
    assert saved["sha256"] == training._sha256(tmp_path / "vit.safetensors") == record["sha256"]
    assert saved["config"]["dim"] == 12 and saved["config"]["layer"] == "blocks.1.mlp.act" and saved["steps"] == 6
    a = tw.load_toy_vit(tmp_path / "vit.safetensors")
    b = pt.load_model("toy-vit", weights=tmp_path / "vit.safetensors")
    x = tw.ToyWorld("test", n=4).images
    assert torch.equal(a(x), b(x)) and a.blocks[-1].mlp.fc1.out_features == 4
    moved = [k for k, v in a.state_dict().items() if not torch.equal(v, initial[k])]
    assert "head.weight" in moved and "blocks.1.mlp.fc1.weight" in moved and "patch_embed.proj.0.weight" in moved


def test_vit_training_never_overwrites_a_checkpoint_unless_asked(tmp_path):
    first = tw.train(tmp_path, max_batches=1, **TINY_RUN)
    with pytest.raises(PuretoolsError, match="overwrite"):
        tw.train(tmp_path, seed=5, max_batches=1, **TINY_RUN)
    assert training._sha256(tmp_path / "vit.safetensors") == first["sha256"]
    assert tw.train(tmp_path, seed=5, overwrite=True, max_batches=1, **TINY_RUN)["sha256"] != first["sha256"]
    # a ViT beside a ResNet checkpoint does not touch it (and the reverse)
    resnet = tw.train(tmp_path, n_train=64, max_batches=1, batch_size=64, verbose=False, widths=(4, 4, 8, 4))
    assert training._sha256(tmp_path / "vit.safetensors") != resnet["sha256"]
    with pytest.raises(PuretoolsError, match="vit_config only applies"):
        tw.train(tmp_path / "x", vit_config=TINY)


def test_command_line_refuses_to_overwrite_the_shipped_vit(vit_record):
    shipped = tw.DATA_DIR / "vit.safetensors"
    result = subprocess.run([sys.executable, "-m", "puretools", "toy", "train", "--arch", "vit", "--epochs", "1"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0 and "--force" in result.stderr and "already exists" in result.stderr
    assert "vit.safetensors" in result.stderr
    assert training._sha256(shipped) == vit_record["sha256"]
