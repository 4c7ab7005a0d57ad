"""A data set that fails part-way through a resumable run (shared by the one-process and the torchrun tests).

A module of its own, not conftest: spawned torch.distributed workers import it by name, and
``conftest`` there would be the repository root's.
"""

import torch


class FailAfterCheckpoint(torch.utils.data.Dataset):
    """The images of ``data``; reading fails once a file matching ``pattern`` exists (a checkpoint),
    as a disk error would part-way through a resumable run."""

    def __init__(self, data, pattern):
        self.data, self.pattern = data, pattern

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if any(self.pattern.parent.glob(self.pattern.name)):
            raise OSError(f"disk error reading item {i}")
        return self.data[i]
