"""Multi-scale training (Ultralytics' ``multi_scale``): each batch resized to a random size around
``imgsz``. Imports nothing from ``pipeline``.

The size of a step comes from a generator seeded by the run seed and the global batch index, not
from global random state: a run is reproducible, and every DDP rank picks the same size for a step
without talking to the others. Targets need no change: boxes are normalised xywh of the input, and
the mask loss resizes the prototypes to the ground-truth mask grid (``engines.train.loss``).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F


def multi_scale_size(*, imgsz: int, fraction: float, stride: int, seed: int, step: int) -> int:
    """The longest side of step ``step``'s input in pixels, a multiple of ``stride``: an integer drawn
    uniformly from ``[max(stride, imgsz * (1 - fraction)), imgsz * (1 + fraction) + stride)`` and rounded
    down, so the sizes run from the lower end (rounded down) to the upper end rounded up to the stride
    (Ultralytics 8.4's draw)."""
    lo = max(stride, int(imgsz * (1.0 - fraction)))
    hi = int(imgsz * (1.0 + fraction) + stride)  # exclusive
    # A str seed is hashed with SHA-512 (not Python's per-process hash): the same on every rank.
    return random.Random(f"multi_scale:{seed}:{step}").randrange(lo, hi) // stride * stride


def rescale_batch(images: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """``images`` ``(B, 3, H, W)`` float resized bilinearly so the longest side is about ``size`` and
    both sides are multiples of ``stride`` (rounded up; a rect batch keeps its aspect ratio within a
    stride). Returned unchanged when ``size`` is already the longest side."""
    h, w = images.shape[2:]
    scale = size / max(h, w)
    if scale == 1:
        return images
    new = [math.ceil(x * scale / stride) * stride for x in (h, w)]
    return F.interpolate(images, size=new, mode="bilinear", align_corners=False)
