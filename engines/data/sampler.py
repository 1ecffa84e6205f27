"""Shuffled batches of one input shape each, for rectangular (``rect="image"``) training.

Square training pads a 16:9 camera frame to 640x640: 44 % of every input is grey border the network
still convolves. With each image at its own stride-multiple shape (640x384 for 640x360 frames) a batch
can only hold images of one shape, so this sampler shuffles within each shape and then shuffles the
order of the batches. A dataset of one aspect ratio is shuffled as fully as with ``RandomSampler``;
Ultralytics' rect training instead sorts by aspect ratio and never shuffles, so every epoch sees the
same batches in the same order.

The order is a function of ``(seed, epoch)`` only. Distributed ranks take every ``world_size``-th
batch of the same list, padded by repeating its first batches so all ranks step equally often.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np


class ShapeBatchSampler:
    """Batches of ``batch_size`` (fewer for a shape's last one) indices sharing one entry of ``shapes``.

    shapes: one hashable shape per dataset index (``SegDataset.shape_of``). Use as a DataLoader's
    ``batch_sampler``; call ``set_epoch`` before each epoch.
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.shapes, self.batch_size = list(shapes), batch_size
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        total = sum(-(-n // batch_size) for n in Counter(self.shapes).values())
        self._per_rank = -(-total // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._per_rank

    def batches(self) -> list[list[int]]:
        """Every rank's batches of this epoch, in order (before the split over ranks)."""
        rng = np.random.default_rng((self.seed, self.epoch))
        groups: dict[tuple[int, int], list[int]] = {}
        for i in rng.permutation(len(self.shapes)).tolist():
            groups.setdefault(self.shapes[i], []).append(i)
        out = [g[k:k + self.batch_size] for g in groups.values() for k in range(0, len(g), self.batch_size)]
        out = [out[i] for i in rng.permutation(len(out))]
        return out + [out[i % len(out)] for i in range(-len(out) % self.world_size)] if out else out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.rank::self.world_size])
