"""Anchor grids and box decoding shared by the model head, the loss and the exporters.

Leaf module: imports only torch. Everything here is traceable (no Python branching on tensor
values), so ONNX/TorchScript export keeps the batch and spatial sizes symbolic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def make_anchors(
    feats: Sequence[Tensor], strides: Tensor | Sequence[float], offset: float = 0.5, *, device_free: bool = False
) -> tuple[Tensor, Tensor]:
    """Anchor centres of every cell of every feature level, in grid units of that level.

    Args:
        feats: feature maps ``(N, C_i, h_i, w_i)``, one per level (only shape, dtype, device used).
        strides: stride of each level in input pixels, e.g. ``[8., 16., 32.]``.
        offset: offset added to the integer cell index; 0.5 puts the anchor at the cell centre.
        device_free: build the grids from the feature maps (``ones_like`` + ``cumsum``) instead of
            ``torch.arange(..., device=d)``: TorchScript tracing records ``d`` as a constant, so a
            module traced on a CPU would fail on a GPU. Same values.

    Returns:
        ``anchor_points (A, 2)`` as ``(x, y)`` in grid units, and ``stride_tensor (A, 1)`` in input
        pixels, where ``A = sum(h_i * w_i)``, levels in order, cells row-major. dtype/device of
        ``feats[0]``.
    """
    ref = feats[0]
    points, stride_cols = [], []
    for i, feat in enumerate(feats):
        h, w = feat.shape[2], feat.shape[3]
        if device_free:
            ones = torch.ones_like(feat[0, 0])  # (h, w), the features' dtype and device
            gx, gy = ones.cumsum(1) - (1 - offset), ones.cumsum(0) - (1 - offset)
            stride_cols.append((ones * float(strides[i])).view(-1, 1))
        else:
            sx = torch.arange(w, device=ref.device, dtype=ref.dtype) + offset
            sy = torch.arange(h, device=ref.device, dtype=ref.dtype) + offset
            gy, gx = torch.meshgrid(sy, sx, indexing="ij")
            stride_cols.append(torch.full((h * w, 1), float(strides[i]), device=ref.device, dtype=ref.dtype))
        points.append(torch.stack((gx, gy), -1).view(-1, 2))
    return torch.cat(points), torch.cat(stride_cols)


def dist2bbox(distance: Tensor, anchor_points: Tensor, xywh: bool = True, dim: int = -1) -> Tensor:
    """Turn (left, top, right, bottom) distances from anchor points into boxes.

    ``distance`` has size 4 along ``dim`` and ``anchor_points`` size 2 along the same ``dim``
    (broadcastable otherwise). Units are whatever both share (grid units in the head). Returns
    ``(cx, cy, w, h)`` when ``xywh`` else ``(x1, y1, x2, y2)``, size 4 along ``dim``.
    """
    lt, rb = distance.chunk(2, dim)
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    if xywh:
        return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)
    return torch.cat((x1y1, x2y2), dim)


def bbox2dist(anchor_points: Tensor, bbox: Tensor, reg_max: float) -> Tensor:
    """Inverse of :func:`dist2bbox` for xyxy boxes: ``(x1,y1,x2,y2) -> (l,t,r,b)`` along the last dim,
    clamped to ``[0, reg_max - 0.01]`` (the DFL target range). Same units as the inputs."""
    x1y1, x2y2 = bbox.chunk(2, -1)
    return torch.cat((anchor_points - x1y1, x2y2 - anchor_points), -1).clamp_(0, reg_max - 0.01)
