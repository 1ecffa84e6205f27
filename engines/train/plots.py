"""Training plots: curves from ``results.csv`` and grids of augmented training batches.

Imports matplotlib lazily, through its object-oriented API only (no pyplot global state, no backend
switching); batch grids reuse the validation drawing helpers (``engines.val.plots``)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engines.data.batch import TrainBatch


def read_results(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """``results.csv`` as ``{column: float array}`` (blank cells read as NaN)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k.strip(): np.array([float(r[k]) if r[k].strip() else math.nan for r in rows]) for k in rows[0]}


def _smooth(y: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Gaussian-smoothed copy (NaN-aware) to show the trend under noisy per-epoch values."""
    ok = np.isfinite(y)
    if ok.sum() < 5:
        return y
    idx = np.arange(len(y))
    w = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2) * ok[None, :]  # (n, n), n = epochs
    return np.where(ok, (w @ np.where(ok, y, 0.0)) / np.maximum(w.sum(1), 1e-12), np.nan)


def plot_results(csv_path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """One panel per column of ``results.csv`` (losses, metrics, learning rates) against epoch.

    Returns the PNG path (default ``results.png`` beside the CSV).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = read_results(csv_path)
    out = Path(out) if out else Path(csv_path).with_name("results.png")
    cols = [c for c in data if c != "epoch"]
    ncols = 5
    nrows = max(1, math.ceil(len(cols) / ncols))
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), tight_layout=True)
    FigureCanvasAgg(fig)
    x = data.get("epoch", np.arange(len(next(iter(data.values()), []))))
    for i, c in enumerate(cols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        y = data[c]
        ax.plot(x, y, marker=".", linewidth=1.5, markersize=5, label="results")
        if np.isfinite(y).sum() >= 5:
            ax.plot(x, _smooth(y), ":", linewidth=1.5, label="smooth")
        ax.set_title(c, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
    fig.savefig(out, dpi=120)
    return out


def plot_train_batch(batch: TrainBatch, names: tuple[str, ...], path: str | os.PathLike[str], *,
                     max_images: int = 16) -> Path:
    """The augmented network inputs of a batch with their label masks, boxes and names, as a grid
    (what the model is really trained on: mosaics, flips, colour jitter)."""
    import cv2

    from engines.val.plots import draw_truth, image_grid
    from engines.val.truth import ImageTruth

    images = batch.images[:max_images].permute(0, 2, 3, 1).numpy()[..., ::-1]  # RGB -> BGR
    h, w = images.shape[1:3]
    bidx, cls = batch.batch_idx.numpy(), batch.cls.numpy()
    boxes = batch.bboxes.numpy() * np.array([w, h, w, h], np.float32)
    tiles = []
    for i, img in enumerate(images):
        sel = bidx == i
        masks = batch.masks.numpy()[sel]
        full = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in masks]) \
            if len(masks) else np.zeros((0, h, w), np.uint8)
        xywh = boxes[sel].copy()
        xywh[:, :2] -= xywh[:, 2:] / 2  # centre -> top-left corner (COCO boxes)
        truth = ImageTruth.from_masks(cls[sel], xywh, full.astype(bool))
        tiles.append(draw_truth(np.ascontiguousarray(img), truth, names))
    return image_grid(tiles, path, tile=max(h, w))

