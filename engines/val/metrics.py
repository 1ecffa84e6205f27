"""Dataset-level metrics: COCO AP (box and mask) and Ultralytics-style precision/recall.

Imports nothing from ``pipeline``. ``MetricsAccumulator`` collects ``ImageEval``s and reduces them
the way pycocotools' ``COCOeval.accumulate`` + ``summarize`` do (area ``all``, maxDets 100,
101-point interpolated precision envelope), vectorised over IoU thresholds and detections with one
small loop over classes. Precision and recall are reported as Ultralytics does: per class at the
confidence that maximises the smoothed class-mean F1, at IoU 0.5, then averaged over classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.val.matching import IOU_THRESHOLDS, ImageEval

REC_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
_CONF_GRID = np.linspace(0, 1, 1000)  # confidence axis of the P/R/F1 curves (as Ultralytics)
_EPS = 1e-16


@dataclass(frozen=True, slots=True, eq=False)
class Curves:
    """Per-class curves for plots; row k belongs to class ``ap_class[k]``.

    recall (101,) and pr (K, 101): COCO interpolated precision vs recall at IoU 0.5.
    conf (1000,) and p, r, f1 (K, 1000): precision, recall and F1 vs confidence at IoU 0.5.
    """

    recall: np.ndarray
    pr: np.ndarray
    conf: np.ndarray
    p: np.ndarray
    r: np.ndarray
    f1: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class MetricSet:
    """Box or mask metrics over a dataset (all values in 0-1).

    map: mAP@0.5:0.95, map50, map75: COCO AP averaged over classes that have instances.
    maps: (nc,) per-class mAP@0.5:0.95; a class without instances reads ``map`` (as Ultralytics).
    precision, recall: class means at the max-F1 confidence. ap_class: classes with instances;
    ap (K, 10) their AP per IoU threshold; p, r (K,) their precision/recall at that confidence.
    """

    map: float
    map50: float
    map75: float
    maps: tuple[float, ...]
    precision: float
    recall: float
    ap_class: tuple[int, ...]
    ap: np.ndarray
    p: np.ndarray
    r: np.ndarray
    curves: Curves = field(repr=False)

    def as_dict(self, prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}.map": self.map,
            f"{prefix}.map50": self.map50,
            f"{prefix}.map75": self.map75,
            f"{prefix}.maps": list(self.maps),
            f"{prefix}.precision": self.precision,
            f"{prefix}.recall": self.recall,
        }


@dataclass(frozen=True, slots=True)
class Speed:
    """Milliseconds per image for each stage of validation."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0


@dataclass(frozen=True, slots=True, eq=False)
class SegMetrics:
    """Result of one validation run: box and mask metrics, counts and timings.

    names: class names (nc). images: images evaluated. instances, images_per_class: (nc,) int64
    counts of non-crowd ground truth instances, and of images holding at least one, per class.
    """

    box: MetricSet
    seg: MetricSet
    speed: Speed
    names: tuple[str, ...]
    images: int
    instances: np.ndarray
    images_per_class: np.ndarray

    @property
    def fitness(self) -> float:
        """Model selection score: 0.1 mAP50 + 0.9 mAP50-95, summed over box and mask."""
        return sum(0.1 * m.map50 + 0.9 * m.map for m in (self.box, self.seg))

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: ``box.map`` ... ``seg.recall``, ``fitness``, ``speed.*``."""
        out = {**self.box.as_dict("box"), **self.seg.as_dict("seg"), "fitness": self.fitness}
        out.update({f"speed.{k}": getattr(self.speed, k) for k in Speed.__slots__})
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def table(self, per_class: bool = True) -> str:
        """The summary table: an ``all`` row and, if asked, one row per class with instances."""
        head = ("Class", "Images", "Instances", "Box(P", "R", "mAP50", "mAP50-95)",
                "Mask(P", "R", "mAP50", "mAP50-95)")
        fmt = "{:>22}" + "{:>11}" * 10
        rows = [fmt.format(*head)]
        nums = "{:>22}{:>11}{:>11}" + "{:>11.3g}" * 8
        b, s = self.box, self.seg
        rows.append(nums.format("all", self.images, int(self.instances.sum()), b.precision,
                                b.recall, b.map50, b.map, s.precision, s.recall, s.map50, s.map))
        if per_class:
            for k, c in enumerate(b.ap_class):
                name = self.names[c] if c < len(self.names) else str(c)
                rows.append(nums.format(
                    name, int(self.images_per_class[c]), int(self.instances[c]),
                    b.p[k], b.r[k], b.ap[k, 0], b.ap[k].mean(),
                    s.p[k], s.r[k], s.ap[k, 0], s.ap[k].mean(),
                ))
        return "\n".join(rows)


def coco_precision(
    scores: np.ndarray,
    cls: np.ndarray,
    image: np.ndarray,
    tp: np.ndarray,
    ignored: np.ndarray,
    npig: np.ndarray,
) -> np.ndarray:
    """COCOeval.accumulate for area ``all`` and one maxDets setting.

    scores (N,), cls (N,), image (N,) of the detections that count (the best 100 per image and
    class), listed per image in descending score order; tp, ignored (N, T) bool; npig (nc,)
    non-crowd instances per class. Returns precision (T, 101, nc) with -1 for classes without
    instances, exactly as ``COCOeval.eval['precision'][..., 0, -1]``.
    """
    T, nc, R = tp.shape[1], len(npig), len(REC_THRESHOLDS)
    precision = -np.ones((T, R, nc))
    # COCOeval concatenates images in id order then stable-sorts by score: the same as sorting by
    # (class, -score, image, position in image).
    order = np.lexsort((np.arange(len(scores)), image, -scores, cls))
    cls, tp, ignored = cls[order], tp[order], ignored[order]
    bounds = np.searchsorted(cls, np.arange(nc + 1))
    for c in np.flatnonzero(npig > 0):
        lo, hi = bounds[c], bounds[c + 1]
        t, ig = tp[lo:hi], ignored[lo:hi]
        tp_sum = np.cumsum(t & ~ig, axis=0).T.astype(float)  # (T, nd)
        fp_sum = np.cumsum(~t & ~ig, axis=0).T.astype(float)
        rc = tp_sum / npig[c]
        pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
        q = np.zeros((T, R))
        for ti in range(T):
            inds = np.searchsorted(rc[ti], REC_THRESHOLDS, side="left")
            ok = inds < hi - lo
            q[ti, ok] = pr[ti, inds[ok]]
        precision[:, :, c] = q
    return precision


def _smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box filter of fraction f (Ultralytics' ``smooth``)."""
    nf = round(len(y) * f * 2) // 2 + 1
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def f1_precision_recall(
    tp50: np.ndarray, conf: np.ndarray, cls: np.ndarray, nt: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ultralytics' ``ap_per_class`` P/R: curves over confidence, read at the max smoothed mean F1.

    tp50 (N,) bool, conf (N,), cls (N,) of all non-ignored detections; nt (nc,) instances per
    class. Returns ``p (K,), r (K,), p_curve, r_curve, f1_curve (K, 1000)`` for the K classes
    with instances, in class order.
    """
    classes = np.flatnonzero(nt > 0)
    K = len(classes)
    p_curve, r_curve = np.zeros((K, len(_CONF_GRID))), np.zeros((K, len(_CONF_GRID)))
    order = np.lexsort((-conf, cls))
    tp50, conf, cls = tp50[order], conf[order], cls[order]
    bounds = np.searchsorted(cls, np.arange(len(nt) + 1))
    for k, c in enumerate(classes):
        lo, hi = bounds[c], bounds[c + 1]
        if hi == lo:
            continue
        tpc = np.cumsum(tp50[lo:hi])
        fpc = np.cumsum(~tp50[lo:hi])
        r_curve[k] = np.interp(-_CONF_GRID, -conf[lo:hi], tpc / (nt[c] + _EPS), left=0)
        p_curve[k] = np.interp(-_CONF_GRID, -conf[lo:hi], tpc / (tpc + fpc), left=1)
    f1 = 2 * p_curve * r_curve / (p_curve + r_curve + _EPS)
    if K == 0:
        return np.zeros(0), np.zeros(0), p_curve, r_curve, f1
    i = int(_smooth(f1.mean(0), 0.1).argmax())
    return p_curve[:, i], r_curve[:, i], p_curve, r_curve, f1


class MetricsAccumulator:
    """Collects per-image matches; ``compute`` reduces them to ``(box, seg)`` ``MetricSet``s.

    ``add(ev, image_index)``: image_index orders images as COCO's sorted image ids do (use the
    image_id written to the json). Cheap to ``reset`` and reuse across epochs.
    """

    def __init__(self, nc: int) -> None:
        self.nc = nc
        self.reset()

    def reset(self) -> None:
        self._evals: list[tuple[int, ImageEval]] = []
        self._instances = np.zeros(self.nc, np.int64)
        self._images_per_class = np.zeros(self.nc, np.int64)

    @property
    def instances(self) -> np.ndarray:
        return self._instances.copy()

    @property
    def images_per_class(self) -> np.ndarray:
        return self._images_per_class.copy()

    @property
    def images(self) -> int:
        return len(self._evals)

    def add(self, ev: ImageEval, image_index: int) -> None:
        if len(ev.cls) and (ev.cls.min() < 0 or ev.cls.max() >= self.nc):
            raise ValueError(f"detection class outside 0..{self.nc - 1}: {ev.cls.max()}")
        regular = ev.gt_cls[~ev.gt_crowd]
        if len(regular) and regular.max() >= self.nc:
            raise ValueError(f"ground-truth class {regular.max()} outside 0..{self.nc - 1}")
        counts = np.bincount(regular, minlength=self.nc)
        self._instances += counts
        self._images_per_class += counts > 0
        self._evals.append((image_index, ev))

    def compute(self) -> tuple[MetricSet, MetricSet]:
        """``(box, seg)`` over every image added since the last ``reset``."""
        none = np.zeros((0, len(IOU_THRESHOLDS)), bool)

        def cat(name: str, empty: np.ndarray) -> np.ndarray:
            return np.concatenate([getattr(e, name) for _, e in self._evals] + [empty])

        image = np.concatenate([np.full(len(e.cls), i, np.int64) for i, e in self._evals] + [np.zeros(0, np.int64)])
        scores, cls, top = cat("scores", np.zeros(0)), cat("cls", np.zeros(0, np.int64)), cat("top", none[:, 0])
        box = self._reduce(scores, cls, image, top, cat("box_tp", none), cat("box_ignored", none))
        seg = self._reduce(scores, cls, image, top, cat("mask_tp", none), cat("mask_ignored", none))
        return box, seg

    def _reduce(self, scores: np.ndarray, cls: np.ndarray, image: np.ndarray, top: np.ndarray,
                tp: np.ndarray, ignored: np.ndarray) -> MetricSet:
        npig = self._instances
        precision = coco_precision(scores[top], cls[top], image[top], tp[top], ignored[top], npig)
        classes = np.flatnonzero(npig > 0)
        ap = precision[:, :, classes].mean(1).T  # (K, T)
        keep = ~ignored[:, 0]
        p, r, p_curve, r_curve, f1 = f1_precision_recall(tp[keep, 0], scores[keep], cls[keep], npig)
        mean = lambda a: float(a.mean()) if a.size else 0.0  # noqa: E731
        map_ = mean(ap)
        maps = np.full(self.nc, map_)
        maps[classes] = ap.mean(1)
        curves = Curves(recall=REC_THRESHOLDS, pr=precision[0][:, classes].T, conf=_CONF_GRID,
                        p=p_curve, r=r_curve, f1=f1)
        return MetricSet(
            map=map_, map50=mean(ap[:, 0]), map75=mean(ap[:, 5]), maps=tuple(float(v) for v in maps),
            precision=mean(p), recall=mean(r), ap_class=tuple(int(c) for c in classes), ap=ap,
            p=p, r=r, curves=curves,
        )
