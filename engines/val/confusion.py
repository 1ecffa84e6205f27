"""Detection confusion matrix: which class each true instance was detected as, or missed.

Imports nothing from ``pipeline``. Follows Ultralytics 8.4.190 (``ConfusionMatrix.process_batch`` as
its detect and segment validators call it), so the numbers compare one to one:

- detections scoring above ``conf`` count; Ultralytics passes its val ``conf`` (0.001 by default),
  so every detection NMS kept is counted;
- overlap is class-agnostic *box* IoU, for segmentation models too (their masks are not used);
- in descending score order (ties: earlier first), each detection takes the unclaimed truth it
  overlaps most, if that IoU is above ``iou`` (0.45); a truth is claimed once;
- a matched pair adds 1 at ``[predicted, true]`` (off the diagonal: a class confusion), an
  unmatched truth at ``[background, true]`` (missed), an unmatched detection at
  ``[predicted, background]`` (false positive).

Crowd truths (``ImageTruth.crowd``; YOLO labels have none) are left out: neither counted nor matched,
as the instance counts of ``metrics`` leave them out.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engines.val.matching import box_iou_xywh
from engines.val.truth import ImageTruth

IOU_THRESHOLD = 0.45  # Ultralytics' matching threshold for the matrix (not the NMS IoU)


def match_greedy(iou: np.ndarray, scores: np.ndarray, threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """One-to-one matching: iou (m truths, n detections) float, scores (n,) -> (m,) int64 detection
    index matched to each truth, -1 where none. See the module docstring for the rule."""
    iou = np.array(iou, np.float64, copy=True).reshape(len(iou), len(scores))
    gt_match = np.full(len(iou), -1, np.int64)
    if iou.size == 0:
        return gt_match
    candidates = np.flatnonzero((iou > threshold).any(0))
    for d in candidates[np.argsort(-np.asarray(scores)[candidates], kind="stable")]:
        g = int(iou[:, d].argmax())
        if iou[g, d] > threshold:
            gt_match[g] = d
            iou[g] = 0.0  # claimed
    return gt_match


def normalize_columns(matrix: np.ndarray) -> np.ndarray:
    """A confusion matrix (nc + 1, nc + 1) counts with every column divided by its sum (the true
    instances of that class), as Ultralytics plots it: float64, empty columns all 0."""
    return matrix / (matrix.sum(0, keepdims=True) + 1e-9)


class ConfusionMatrix:
    """Counts over a split, ``matrix`` (nc + 1, nc + 1) int64: rows predicted class, columns true
    class, index ``nc`` the background. Column ``c`` sums to the (non-crowd) instances of class
    ``c``; the background column sums to the false positives, the background row to the misses."""

    def __init__(self, nc: int, *, conf: float = 0.001, iou: float = IOU_THRESHOLD) -> None:
        self.nc, self.conf, self.iou = nc, conf, iou
        self.matrix = np.zeros((nc + 1, nc + 1), np.int64)

    def add(self, boxes_xywh: np.ndarray, scores: np.ndarray, cls: np.ndarray, truth: ImageTruth) -> None:
        """One image: detections as boxes (n, 4) COCO ``[x, y, w, h]`` frame pixels, scores (n,) and
        class ids (n,), against its ground truth (same frame)."""
        keep = np.asarray(scores) > self.conf
        boxes, scores = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)[keep], np.asarray(scores)[keep]
        det_cls = np.asarray(cls, np.int64)[keep]
        regular = ~truth.crowd
        gt_boxes, gt_cls = truth.boxes[regular], truth.cls[regular]
        iou = box_iou_xywh(boxes, gt_boxes, np.zeros(len(gt_cls), bool)).T  # (m, n)
        gt_match = match_greedy(iou, scores, self.iou)
        hit = gt_match >= 0
        np.add.at(self.matrix, (det_cls[gt_match[hit]], gt_cls[hit]), 1)
        np.add.at(self.matrix[self.nc], gt_cls[~hit], 1)  # missed (views: added in place)
        unmatched = np.ones(len(det_cls), bool)
        unmatched[gt_match[hit]] = False
        np.add.at(self.matrix[:, self.nc], det_cls[unmatched], 1)  # false positives

    def normalized(self) -> np.ndarray:
        """The matrix with every column divided by its sum (:func:`normalize_columns`)."""
        return normalize_columns(self.matrix)

    def write_csv(self, path: str | os.PathLike[str], names: Sequence[str]) -> Path:
        """Raw counts as CSV: a header ``predicted, <names...>, background``, then one row per
        predicted class (its name first) and a last ``background`` row. Written whole (tmp + rename)."""
        if len(names) != self.nc:
            raise ValueError(f"{len(names)} names for a {self.nc}-class confusion matrix")
        labels = [*names, "background"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["predicted", *labels])
            w.writerows([label, *row] for label, row in zip(labels, self.matrix.tolist(), strict=True))
        os.replace(tmp, path)
        return path


def read_csv(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """A ``write_csv`` file back: (labels with ``background`` last, counts (nc + 1, nc + 1) int64)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0][1:], np.array([[int(v) for v in r[1:]] for r in rows[1:]], np.int64).reshape(len(rows) - 1, -1)
