"""Training plots: the train split's labels (``labels.jpg``), curves from ``results.csv`` and grids of
augmented training batches.

Imports matplotlib lazily, through its object-oriented API only (no pyplot global state, no backend
switching); batch grids reuse the validation drawing helpers (``engines.val.plots``)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engines.data.batch import TrainBatch
    from engines.data.labels import ImageLabels

MAX_LABEL_BOXES = 100_000  # boxes behind labels.jpg's histograms; a larger split is sampled (~1 s to draw)
_OUTLINES = 500  # box outlines drawn, as Ultralytics
_NAMED_CLASSES = 30  # class names under the bars below this many classes, as Ultralytics


@dataclass(frozen=True, slots=True)
class LabelStats:
    """What ``labels.jpg`` shows of a split. counts: (nc,) int64 instances per class, all of them.
    boxes: (k, 4) float32 normalised centre-x, centre-y, width, height and cls: (k,) int64 of every
    instance, or of a fixed random sample of ``MAX_LABEL_BOXES`` when there are more."""

    counts: np.ndarray
    boxes: np.ndarray
    cls: np.ndarray


def label_stats(labels: Sequence[ImageLabels], nc: int, *, max_boxes: int = MAX_LABEL_BOXES) -> LabelStats:
    """Instance counts per class and a box sample of a split's labels as loaded (after any class
    selection: ``SegDataset.labels``). Class ids must be below ``nc``."""
    cls = np.concatenate([lab.cls for lab in labels]).astype(np.int64) if labels else np.zeros(0, np.int64)
    boxes = (np.concatenate([lab.boxes for lab in labels]).astype(np.float32) if labels
             else np.zeros((0, 4), np.float32)).reshape(-1, 4)
    counts = np.bincount(cls, minlength=nc)
    if len(counts) != nc:
        raise ValueError(f"class ids up to {len(counts) - 1} in labels of {nc} classes")
    if len(cls) > max_boxes:
        pick = np.sort(np.random.default_rng(0).choice(len(cls), max_boxes, replace=False))
        boxes, cls = boxes[pick], cls[pick]
    return LabelStats(counts=counts, boxes=boxes, cls=cls)


def plot_labels(stats: LabelStats, names: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """``labels.jpg`` (Ultralytics' plot_labels): instances per class, box outlines centred on one
    canvas (their sizes), and 2-D histograms of box centres (x, y) and sizes (w, h), image-normalised."""
    import cv2
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    from engines.structures import class_color

    nc = len(names)
    rgb = [tuple(v / 255 for v in class_color(c)[::-1]) for c in range(nc)]
    fig = Figure(figsize=(8, 8), tight_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, 2).ravel()
    bars = ax[0].bar(np.arange(nc), stats.counts, width=0.8, color=rgb)
    ax[0].set_ylabel("instances")
    if nc < _NAMED_CLASSES:
        ax[0].set_xticks(np.arange(nc), list(names), rotation=90, fontsize=10)
        ax[0].bar_label(bars)
    else:
        ax[0].set_xlabel("classes")
    canvas = np.full((1000, 1000, 3), 255, np.uint8)
    step = max(1, len(stats.cls) // _OUTLINES)
    for c, (_, _, w, h) in zip(stats.cls[::step][:_OUTLINES], stats.boxes[::step][:_OUTLINES], strict=True):
        x0, y0, x1, y1 = (round(v * 1000) for v in (0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2))
        cv2.rectangle(canvas, (x0, y0), (x1, y1), class_color(int(c))[::-1], 1)
    ax[1].imshow(canvas)
    ax[1].axis("off")
    white_blue = LinearSegmentedColormap.from_list("white_blue", ["white", "blue"])
    whole = None if len(stats.cls) else [[0, 1], [0, 1]]  # an empty split still draws its axes
    b = stats.boxes
    for a, (i, j), (xl, yl) in ((ax[2], (0, 1), ("x", "y")), (ax[3], (2, 3), ("width", "height"))):
        a.hist2d(b[:, i], b[:, j], bins=50, cmap=white_blue, range=whole)
        a.set(xlabel=xl, ylabel=yl)
    for a in ax:
        for side in ("top", "right", "left", "bottom"):
            a.spines[side].set_visible(False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=200)
    return path


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

