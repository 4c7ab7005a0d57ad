"""Embedders: CLIP and DINOv2 with random weights end to end, ground-truth concepts, missing weights."""

import huggingface_hub.constants
import pytest
import torch
from torch.utils.data import TensorDataset

from puretools.data import denormalize
from puretools.embed import (
    ClipEmbedder,
    ConceptEmbedder,
    DinoEmbedder,
    Embedder,
    embed_dataset,
    resize_center_crop,
)
from puretools.errors import PuretoolsError, WeightsNotFoundError


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache: every download fails at once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return ClipEmbedder(pretrained=None)


def test_clip_projected_end_to_end(clip):
    images = torch.rand(3, 3, 40, 56)
    out = clip(images)
    assert clip.dim == 512 and out.shape == (3, 512) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # the same as open_clip's own image tower on the resized, normalised pixels
    pixels = resize_center_crop(images, 224)
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = clip.visual((pixels - mean) / std)
    torch.testing.assert_close(out, direct, atol=1e-5, rtol=1e-5)
    # one image alone gives the same embedding as in a batch
    torch.testing.assert_close(clip(images[1:2])[0], out[1], atol=1e-4, rtol=1e-4)


def test_clip_tokens_pooling_is_the_mean_of_last_hidden_tokens():
    torch.manual_seed(0)
    emb = ClipEmbedder(pretrained=None, pooling="tokens")
    images = torch.rand(2, 3, 32, 32)
    out = emb(images)
    assert emb.dim == 768 and out.shape == (2, 768)
    visual = emb.visual
    with torch.no_grad():
        tokens = visual.transformer(visual._embeds(emb.preprocess(images)))  # [B, 50, 768]
    assert tokens.shape == (2, 50, 768)
    torch.testing.assert_close(out, tokens.mean(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "tokens"])
def test_dino_random_weights_small_size(pooling):
    torch.manual_seed(0)
    emb = DinoEmbedder(pretrained=False, img_size=56, pooling=pooling)
    assert emb.image_size == 56 and emb.dim == 768
    images = torch.rand(2, 3, 70, 70)
    out = emb(images)
    assert out.shape == (2, 768) and torch.isfinite(out).all()
    with torch.no_grad():
        feats = emb.model.forward_features(emb.preprocess(images))  # [B, 1 + 16, 768]
    assert feats.shape == (2, 17, 768)
    expected = feats[:, 0] if pooling == "cls" else feats.mean(1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_missing_clip_weights_name_the_file(offline):
    with pytest.raises(WeightsNotFoundError) as info:
        ClipEmbedder("ViT-B-32", pretrained="openai")
    message = str(info.value)
    assert "open_clip_pytorch_model.bin" in message
    assert "timm/vit_base_patch32_clip_224.openai" in message
    assert "HF_HOME" in message and str(offline / "hf") in message
    assert isinstance(info.value, FileNotFoundError)  # WeightsNotFoundError is one


def test_missing_dino_weights_name_the_file(offline):
    with pytest.raises(WeightsNotFoundError, match="model.safetensors") as info:
        DinoEmbedder(pretrained=True, img_size=28)
    assert "timm/vit_base_patch14_dinov2.lvd142m" in str(info.value)
    assert "HF_HOME" in str(info.value)


def test_missing_weights_file_and_bad_tag(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        ClipEmbedder(pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        DinoEmbedder(pretrained=tmp_path / "nope.safetensors")
    with pytest.raises(PuretoolsError, match="openai"):
        ClipEmbedder(pretrained="no-such-tag")
    with pytest.raises(PuretoolsError, match="pooling"):
        ClipEmbedder(pretrained=None, pooling="cls")


def test_images_outside_unit_range_are_refused(clip):
    with pytest.raises(PuretoolsError, match=r"\[0, 1\]"):
        clip(torch.randn(2, 3, 16, 16) * 3)
    with pytest.raises(PuretoolsError, match="RGB"):
        clip(torch.rand(2, 1, 16, 16))


class MeanColour(Embedder):
    name, dim, image_size = "mean colour", 3, 8

    def encode(self, pixels):
        return pixels.mean((2, 3))


def test_embed_batches_and_keeps_leading_dims():
    emb = MeanColour()
    images = torch.rand(2, 5, 3, 12, 12)
    out = emb.embed(images, batch_size=3)
    assert out.shape == (2, 5, 3)
    torch.testing.assert_close(out[1, 4], emb(images[1, 4:5])[0])


def test_embed_dataset_embeds_each_image_once_and_scatters():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(10, 3, 8, 8, generator=g))
    calls = []

    class Counting(MeanColour):
        def encode(self, pixels):
            calls.append(len(pixels))
            return super().encode(pixels)

    emb = Counting()
    idx = torch.tensor([[3, 3, 7], [0, 7, 9]])
    out = embed_dataset(emb, data, idx, batch_size=2)
    assert out.shape == (2, 3, 3) and sum(calls) == 4  # images 0, 3, 7, 9
    expected = emb(denormalize(data.tensors[0][7:8]))[0]
    torch.testing.assert_close(out[0, 2], expected)
    torch.testing.assert_close(out[1, 1], expected)


def test_concept_embedder_looks_up_labels():
    labels = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]])
    emb = ConceptEmbedder(labels)
    assert emb.dim == 4
    out = embed_dataset(emb, TensorDataset(torch.zeros(3, 3, 4, 4)), torch.tensor([[2, 0], [1, 1]]))
    assert torch.equal(out, labels[torch.tensor([[2, 0], [1, 1]])].float())
    with pytest.raises(PuretoolsError, match="embed_indices"):
        emb(torch.rand(1, 3, 4, 4))
    with pytest.raises(PuretoolsError, match="0..2"):
        emb.embed_indices(torch.tensor([3]))
