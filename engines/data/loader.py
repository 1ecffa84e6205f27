"""A seeded, epoch-aware DataLoader around ``SegDataset``. Imports nothing from pipeline/.

Why a wrapper: the shuffle order and every sample's augmentation are functions of
``(seed, epoch, index)``; a fresh torch DataLoader per epoch (no persistent workers) makes the
workers see the current epoch and the mosaic switch, so results never depend on the worker count.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch
import torch.utils.data

from engines.data.batch import TrainBatch, collate
from engines.data.dataset import SegDataset
from engines.errors import SegpipeError

T = TypeVar("T")

# torch re-raises a worker's exception as the same type, its message replaced by this and the
# worker's whole traceback; the traceback's last line is "<module>.<Type>: <original message>".
_WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def worker_errors_unwrapped(batches: Iterable[T]) -> Iterator[T]:
    """Iterate a DataLoader; a segpipe error raised in a worker process (an image that stopped
    decoding mid-run) comes out as itself with its one-line message, not torch's traceback text."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except SegpipeError as e:
            raise _unwrapped(e) from None
        yield batch


def _unwrapped(e: SegpipeError) -> SegpipeError:
    text = str(e)
    m = _WORKER_ERROR.match(text)
    prefix = f"{type(e).__module__}.{type(e).__name__}: "
    last = text.rstrip().splitlines()[-1]
    if not m or m.group(1) != type(e).__name__ or not last.startswith(prefix):
        return e
    return type(e)(last[len(prefix):])


def _worker_init(_: int) -> None:
    # Workers are the parallelism; torch threads inside each would only fight over the cores.
    # Not cv2.setNumThreads: after a fork from a parent whose cv2 pool is running, it deadlocks
    # (cv2 5.0, seen in tests); cv2 re-creates its pool in the child on first use.
    torch.set_num_threads(1)


class SegLoader:
    """Iterate ``TrainBatch``es of a ``SegDataset``.

    batch_size: images per batch (must equal the dataset's when it was built with rect=True).
    shuffle: permute images each epoch (order from ``(seed, epoch)``). workers: DataLoader worker
    processes, 0 = load in this process. drop_last: drop a final partial batch (train).
    """

    def __init__(self, dataset: SegDataset, *, batch_size: int, shuffle: bool, workers: int = 0,
                 seed: int = 0, drop_last: bool = False, pin_memory: bool = False) -> None:
        if dataset.rect and shuffle:
            raise ValueError("a rect dataset needs shuffle=False: its batches are grouped by aspect ratio")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.workers, self.seed, self.drop_last, self.pin_memory = workers, seed, drop_last, pin_memory
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch``: new shuffle order and new augmentation draws."""
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def close_mosaic(self) -> None:
        """Turn mosaic off from the next iteration on (the last ``close_mosaic`` epochs)."""
        self.dataset.close_mosaic()

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> list[int]:
        """Image indices of this epoch, in loading order."""
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        return np.random.default_rng((self.seed, self.epoch)).permutation(n).tolist()

    def __iter__(self) -> Iterator[TrainBatch]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=self.order(), num_workers=self.workers,
            collate_fn=collate, drop_last=self.drop_last, pin_memory=self.pin_memory,
            worker_init_fn=_worker_init if self.workers else None, persistent_workers=False,
        )
        return worker_errors_unwrapped(loader)
