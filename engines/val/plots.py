"""Validation plots: precision-recall and F1-confidence curves, the confusion matrix, image grids of
labels and predictions.

Imports nothing from ``pipeline``. Figures are drawn on matplotlib's Agg canvas directly (no
pyplot, so no global figure state); image grids with OpenCV.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engines.structures import Detections, class_color
from engines.val.confusion import normalize_columns
from engines.val.metrics import MetricSet
from engines.val.truth import ImageTruth

_MAX_NAMED = 20  # past this many classes the per-class curves go unlabelled, as in Ultralytics
# Confusion matrix, Ultralytics' limits (rows/columns counting the background): cell values written
# below 30, class names on the axes below 99, every k-th class only from 100 classes on.
_CM_VALUES, _CM_NAMES, _CM_THIN = 30, 99, 100


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=150)
    return path


def plot_pr_curve(ms: MetricSet, names: Sequence[str], path: str | os.PathLike[str], title: str) -> Path:
    """Interpolated precision vs recall at IoU 0.5, one thin line per class and the class mean."""
    fig = Figure(figsize=(9, 6), tight_layout=True)
    ax = fig.add_subplot()
    c = ms.curves
    named = len(ms.ap_class) <= _MAX_NAMED
    for k, cls in enumerate(ms.ap_class):
        label = f"{names[cls]} {ms.ap[k, 0]:.3f}" if named else None
        ax.plot(c.recall, c.pr[k], linewidth=1, label=label, color=None if named else "grey")
    if len(ms.ap_class):
        ax.plot(c.recall, c.pr.mean(0), linewidth=3, color="blue", label=f"all classes {ms.map50:.3f} mAP@0.5")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left", fontsize="small")
    return _save(fig, Path(path))


def plot_f1_curve(ms: MetricSet, names: Sequence[str], path: str | os.PathLike[str], title: str) -> Path:
    """F1 vs confidence at IoU 0.5 per class and the class mean, best point marked."""
    fig = Figure(figsize=(9, 6), tight_layout=True)
    ax = fig.add_subplot()
    c = ms.curves
    named = len(ms.ap_class) <= _MAX_NAMED
    for k, cls in enumerate(ms.ap_class):
        ax.plot(c.conf, c.f1[k], linewidth=1, label=names[cls] if named else None,
                color=None if named else "grey")
    if len(ms.ap_class):
        mean = c.f1.mean(0)
        i = int(mean.argmax())
        ax.plot(c.conf, mean, linewidth=3, color="blue", label=f"all classes {mean[i]:.2f} at {c.conf[i]:.3f}")
    ax.set(xlabel="Confidence", ylabel="F1", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left", fontsize="small")
    return _save(fig, Path(path))


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], path: str | os.PathLike[str], *,
                          normalize: bool) -> Path:
    """A confusion matrix (nc + 1, nc + 1) counts, rows predicted, columns true, background last
    (``engines.val.confusion``) as a heat map; ``normalize`` divides each column by its sum (the true
    instances of that class). Cells under 0.005 stay blank, as in Ultralytics."""
    nc = len(names)
    array = normalize_columns(matrix) if normalize else matrix.astype(np.float64)
    array = np.where(array < 0.005, np.nan, array)
    labels = [*names, "background"]
    if nc >= _CM_THIN:
        keep = np.r_[0:nc:max(2, nc // 60), nc]
        array, labels = array[np.ix_(keep, keep)], [labels[i] for i in keep]
    n = len(labels)
    fig = Figure(figsize=(12, 9))
    ax = fig.add_subplot()
    im = ax.imshow(array, cmap="Blues", vmin=0.0, interpolation="none")
    if n < _CM_VALUES:
        finite = array[np.isfinite(array)]
        dark = 0.45 * (1.0 if normalize or not finite.size else float(finite.max()))  # white text above
        for (i, j), v in np.ndenumerate(array):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=10,
                        color="white" if v > dark else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.05)
    small = max(6.0, 12 - 0.1 * n)
    ax.set_xlabel("True", fontsize=small, labelpad=10)
    ax.set_ylabel("Predicted", fontsize=small, labelpad=10)
    ax.set_title("Confusion Matrix" + " Normalized" * normalize, fontsize=small, pad=20)
    if n < _CM_NAMES:
        ticks = np.arange(n)
        ax.set_xticks(ticks, labels, fontsize=max(6.0, 15 - 0.1 * n), rotation=90, ha="center")
        ax.set_yticks(ticks, labels, fontsize=max(6.0, 15 - 0.1 * n))
    for side in ("left", "right", "bottom", "top"):
        ax.spines[side].set_visible(False)
    fig.subplots_adjust(left=0, right=0.84, top=0.94, bottom=max(0.1, 0.25 - 0.001 * n))
    return _save(fig, Path(path))


def draw_truth(image_bgr: np.ndarray, truth: ImageTruth, names: Sequence[str], *, alpha: float = 0.5) -> np.ndarray:
    """Ground-truth masks (translucent), boxes and class names on a copy of an (H, W, 3) uint8 BGR frame."""
    out = image_bgr.copy()
    lw = max(round(sum(truth.shape) / 2 * 0.003), 2)
    for j in range(len(truth)):
        color = np.array(class_color(int(truth.cls[j])), np.float32)
        x0, y0, x1, y1 = (int(v) for v in truth.windows[j])
        crop = truth.mask_crop(j)
        region = out[y0:y1, x0:x1]
        region[crop] = (region[crop] * (1 - alpha) + color * alpha).round().astype(np.uint8)
        x, y, w, h = truth.boxes[j]
        col = tuple(int(v) for v in color)
        cv2.rectangle(out, (round(x), round(y)), (round(x + w), round(y + h)), col, lw, cv2.LINE_AA)
        c = int(truth.cls[j])
        cv2.putText(out, names[c] if c < len(names) else str(c), (round(x), max(round(y) - 3, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, lw / 4, col, max(lw // 2, 1), cv2.LINE_AA)
    return out


def image_grid(images_bgr: Sequence[np.ndarray], path: str | os.PathLike[str], *, tile: int = 320) -> Path:
    """Tile (H_i, W_i, 3) uint8 BGR images, each fitted into ``tile`` x ``tile`` (grey border), into
    a near-square grid written as an image file."""
    n = len(images_bgr)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    grid = np.full((rows * tile, cols * tile, 3), 114, np.uint8)
    for i, img in enumerate(images_bgr):
        h, w = img.shape[:2]
        r = tile / max(h, w)
        small = cv2.resize(img, (max(1, round(w * r)), max(1, round(h * r))), interpolation=cv2.INTER_AREA)
        y, x = (i // cols) * tile, (i % cols) * tile
        grid[y:y + small.shape[0], x:x + small.shape[1]] = small
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid):
        raise OSError(f"could not write {path}")
    return path


def plot_val_batch(
    files: Sequence[str | os.PathLike[str]],
    truths: Sequence[ImageTruth],
    detections: Sequence[Detections],
    names: Sequence[str],
    out_dir: str | os.PathLike[str],
    index: int,
    *,
    conf: float = 0.25,
) -> tuple[Path, Path]:
    """Write ``val_batch{index}_labels.jpg`` and ``val_batch{index}_pred.jpg`` for one batch:
    ground truth and predictions (score >= conf) drawn on the original images."""
    frames = [cv2.imread(os.fspath(f)) for f in files]
    labels, preds = [], []
    for img, t, d in zip(frames, truths, detections, strict=True):
        if img is None:
            img = np.full((*t.shape, 3), 114, np.uint8)
        labels.append(draw_truth(img, t, names))
        d = d.numpy()
        keep = d.scores >= conf
        shown = Detections(boxes=d.boxes[keep], scores=d.scores[keep], class_ids=d.class_ids[keep],
                           masks=None if d.masks is None else d.masks[keep], orig_shape=d.orig_shape,
                           names=d.names)
        preds.append(shown.plot(img))
    out = Path(out_dir)
    return (image_grid(labels, out / f"val_batch{index}_labels.jpg"),
            image_grid(preds, out / f"val_batch{index}_pred.jpg"))
