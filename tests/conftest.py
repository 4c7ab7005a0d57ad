"""Shared fixtures: tiny seeded models and data sets that run in seconds on a 2-core CPU."""

import os

import pytest
import torch
from notebook_runs import NotebookRuns
from torch import nn
from torch.utils.data import TensorDataset

import puretools as pt
from puretools import toyworld
from puretools.config import cache_dir

torch.set_num_threads(min(2, os.cpu_count() or 1))


def zero_biases(model: nn.Module) -> nn.Module:
    """Biases (LayerNorm shifts too), position embeddings and class tokens set to zero, in place:
    then LRP must conserve relevance exactly (the LRP tests' set-up)."""
    constant = ("pos_embed", "pos_embedding", "positional_embedding", "cls_token", "class_token", "class_embedding")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.split(".")[-1] in constant or name.endswith("bias"):
                param.zero_()
    return model


@pytest.fixture
def one_thread():
    """torch on one thread for the test (exact float comparisons; a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics, so canonizers have something to merge."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


class SmallVGG(nn.Module):
    """A VGG-style network: plain conv/bn/relu/pool stack, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),  # 0 1 2
            nn.MaxPool2d(2),  # 3
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),  # 4 5 6
            nn.Conv2d(16, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),  # 7 8 9
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(12, 5)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="session")
def resnet18():
    torch.manual_seed(0)
    return randomize_batchnorm(pt.load_model("resnet18", weights=None))


@pytest.fixture(scope="session")
def small_images():
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(40, 3, 48, 48, generator=g), torch.arange(40))


@pytest.fixture(scope="session")
def vgg():
    torch.manual_seed(0)
    return randomize_batchnorm(SmallVGG()).eval()


@pytest.fixture(scope="session")
def notebook_run():
    """``notebook_run("06")``: that notebook executed once this session (see notebook_runs.py)."""
    return NotebookRuns()


@pytest.fixture(scope="session")
def toy_pipeline():
    """The shipped toy model on the whole test split, as the notebooks use it: a Pipeline with the
    library's defaults (n_ref 100, gradient circuits) caching in the session's temporary cache,
    which the notebooks and evaluate_toy_world read. References and circuits are computed once
    per session, on first use."""
    return pt.Pipeline(pt.load_model("toy"), toyworld.ToyWorld("test"), toyworld.LAYER, toyworld.LOWER_LAYER,
                       cache_dir=cache_dir())
