"""Subprocess used by test_cache.py: a slow, deterministic collection/attribution run it can kill."""

import sys
import time

import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

import puretools as pt
from conftest import SmallVGG, randomize_batchnorm


class SlowImages(Dataset):
    """Deterministic random images; each item takes a while, so a run can be killed mid-way."""

    def __init__(self, n=120, delay=0.0):
        self.x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(5))
        self.delay = delay

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.x[i], i


def main(what, cache_dir, out, delay):
    torch.manual_seed(0)
    model = randomize_batchnorm(SmallVGG()).eval()
    data = SlowImages(delay=float(delay))
    refs = pt.collect_references(model, data, "features.9", n_ref=20, batch_size=4, cache_dir=cache_dir,
                                 checkpoint_every=2, progress=False)
    tensors = {"indices": refs.indices, "values": refs.values}
    if what == "circuits":
        tensors["circuits"] = pt.circuit_attributions(
            model, data, "features.9", "features.6", refs, image_chunk=4, batch_size=8,
            cache_dir=cache_dir, checkpoint_every=1, progress=False)
    save_file(tensors, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
