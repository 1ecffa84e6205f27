"""One dataset sample, one training/validation batch, and ``collate``. Imports nothing from pipeline/.

``Sample`` holds numpy arrays (cheap to pickle out of DataLoader workers); ``collate`` turns a list
of samples into a ``TrainBatch`` of torch tensors, still in the worker, so the main process only
receives shared-memory tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engines.ops.letterbox import LetterboxInfo


@dataclass(frozen=True, slots=True)
class Sample:
    """One image after loading and augmentation.

    image: (3, H, W) uint8, RGB, the network input. cls: (n,) int64. bboxes: (n, 4) float32
    normalised xywh of the input image. masks: (n, H/r, W/r) uint8 {0,1}, r = mask_ratio.
    im_file: source image (the first of a mosaic). ori_shape: its (H0, W0).
    info: how the image was letterboxed (val mode), None after train-mode augmentation.
    """

    image: np.ndarray
    cls: np.ndarray
    bboxes: np.ndarray
    masks: np.ndarray
    im_file: str
    ori_shape: tuple[int, int]
    info: LetterboxInfo | None

    def __post_init__(self) -> None:
        n = len(self.cls)
        img = self.image
        if img.ndim != 3 or img.shape[0] != 3 or img.dtype != np.uint8:
            raise ValueError(f"Sample.image: expected (3, H, W) uint8, got {img.shape} {img.dtype}")
        if self.bboxes.shape != (n, 4) or self.masks.ndim != 3 or len(self.masks) != n:
            raise ValueError(f"Sample: {n} classes but bboxes {self.bboxes.shape}, masks {self.masks.shape}")


@dataclass(frozen=True, slots=True)
class TrainBatch:
    """A batch of B images with M instances in all (``engines.data`` contract).

    images: (B, 3, H, W) uint8 RGB network input (divide by 255 for the model).
    cls: (M,) int64 class ids. bboxes: (M, 4) float32 normalised xywh of the input.
    batch_idx: (M,) int64 index of each instance's image in the batch.
    masks: (M, H/r, W/r) uint8 {0,1}, one per instance (r = mask_ratio, 4 by default).
    im_files: B source paths. ori_shapes: B original (H0, W0). infos: B ``LetterboxInfo`` (val
    mode: maps predictions back to the original image) or None (train mode).
    """

    images: torch.Tensor
    cls: torch.Tensor
    bboxes: torch.Tensor
    batch_idx: torch.Tensor
    masks: torch.Tensor
    im_files: tuple[str, ...]
    ori_shapes: tuple[tuple[int, int], ...]
    infos: tuple[LetterboxInfo | None, ...]

    def __post_init__(self) -> None:
        b, m = len(self.images), len(self.cls)
        if self.images.ndim != 4 or self.images.shape[1] != 3 or self.images.dtype != torch.uint8:
            raise ValueError(f"TrainBatch.images: expected (B, 3, H, W) uint8, got "
                             f"{tuple(self.images.shape)} {self.images.dtype}")
        if self.bboxes.shape != (m, 4) or self.batch_idx.shape != (m,) or len(self.masks) != m:
            raise ValueError(f"TrainBatch: {m} classes but bboxes {tuple(self.bboxes.shape)}, batch_idx "
                             f"{tuple(self.batch_idx.shape)}, masks {tuple(self.masks.shape)}")
        if not len(self.im_files) == len(self.ori_shapes) == len(self.infos) == b:
            raise ValueError(f"TrainBatch: {b} images but {len(self.im_files)} files, "
                             f"{len(self.ori_shapes)} shapes, {len(self.infos)} infos")

    def __len__(self) -> int:
        return len(self.images)

    def _map(self, fn) -> TrainBatch:  # noqa: ANN001 - tensor -> tensor
        return TrainBatch(images=fn(self.images), cls=fn(self.cls), bboxes=fn(self.bboxes),
                          batch_idx=fn(self.batch_idx), masks=fn(self.masks), im_files=self.im_files,
                          ori_shapes=self.ori_shapes, infos=self.infos)

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> TrainBatch:
        """The same batch with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TrainBatch:
        """Page-locked copy; DataLoader(pin_memory=True) calls this."""
        return self._map(lambda t: t.pin_memory())


def collate(samples: Sequence[Sample]) -> TrainBatch:
    """Stack samples of one input size into a ``TrainBatch`` (instances concatenated in order)."""
    if not samples:
        raise ValueError("collate: empty batch")
    shapes = {s.image.shape for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"collate: images of different sizes {sorted(shapes)}; with rect=True the loader "
                         "must use the dataset's batch_size and no shuffling")
    counts = [len(s.cls) for s in samples]
    mh, mw = samples[0].masks.shape[1:]
    return TrainBatch(
        images=torch.from_numpy(np.stack([s.image for s in samples])),
        cls=torch.from_numpy(np.concatenate([s.cls for s in samples]).astype(np.int64)),
        bboxes=torch.from_numpy(np.concatenate([s.bboxes for s in samples]).astype(np.float32).reshape(-1, 4)),
        batch_idx=torch.from_numpy(np.repeat(np.arange(len(samples), dtype=np.int64), counts)),
        masks=torch.from_numpy(np.concatenate([s.masks for s in samples]).reshape(-1, mh, mw)),
        im_files=tuple(s.im_file for s in samples),
        ori_shapes=tuple(s.ori_shape for s in samples),
        infos=tuple(s.info for s in samples),
    )
