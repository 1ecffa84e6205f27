"""Per-image results of a segmentation model. Imports torch, numpy, cv2 and engines.ops only.

:class:`Detections` holds one image's objects in that image's own pixels. Its arrays are either all
torch tensors (on any device, as post-processing made them) or all numpy arrays (after ``.numpy()``).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any, cast

import cv2
import numpy as np
import torch

from engines.ops import rle
from engines.ops.crops import paste_crops
from engines.ops.polygons import mask_to_polygons, mask_window

Array = torch.Tensor | np.ndarray


Crop = tuple[int, int, Array]
"""(x0, y0, mask (h, w) bool): one object's mask inside its box, placed at frame pixel (x0, y0)."""

_FIELDS = ("boxes", "scores", "class_ids", "orig_shape", "names", "_masks", "_crops")


class Detections:
    """One image's objects (immutable).

    boxes: (n, 4) float32 xyxy, original-frame pixels. scores: (n,) float32 in [0, 1].
    class_ids: (n,) int64 indices into ``names``. masks: (n, H, W) bool over the whole frame, or None
    when masks were not computed. orig_shape: the frame's (H, W). names: class names of the model.

    Masks may be given densely (``masks=``) or as per-object box crops (``crops=``, what
    post-processing makes): then ``to_rle``, ``polygons`` and ``plot`` work from the crops and the dense
    ``masks`` array (n frame-sized masks: 92 MB for 100 objects at 720p) is only built, once, when
    something reads ``.masks``.
    """

    __slots__ = _FIELDS
    # Declared (not assigned) so mypy knows the slot fields; __init__ sets them through object.__setattr__.
    boxes: Array
    scores: Array
    class_ids: Array
    orig_shape: tuple[int, int]
    names: tuple[str, ...]
    _masks: Array | None
    _crops: tuple[Crop, ...] | None

    def __init__(self, *, boxes: Array, scores: Array, class_ids: Array, masks: Array | None = None,
                 orig_shape: tuple[int, int], names: Sequence[str],
                 crops: Sequence[Crop] | None = None) -> None:
        init = object.__setattr__
        init(self, "boxes", boxes)
        init(self, "scores", scores)
        init(self, "class_ids", class_ids)
        init(self, "orig_shape", tuple(int(v) for v in orig_shape))
        init(self, "names", tuple(names))
        init(self, "_masks", masks)
        init(self, "_crops", None if crops is None else tuple(crops))
        self._check()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Detections is immutable: cannot set {name!r}")

    def _check(self) -> None:
        kinds = {type(a) for a in (self.boxes, self.scores, self.class_ids, self._masks) if a is not None}
        _expect(len(kinds) == 1 and kinds <= {torch.Tensor, np.ndarray}, "Detections arrays",
                "all torch.Tensor or all numpy.ndarray", sorted(k.__name__ for k in kinds))
        n = self.boxes.shape[0] if self.boxes.ndim == 2 else -1
        _expect(tuple(self.boxes.shape) == (n, 4), "Detections.boxes shape", "(n, 4)", tuple(self.boxes.shape))
        _expect(_dtype(self.boxes) == "float32", "Detections.boxes dtype", "float32", _dtype(self.boxes))
        _expect(tuple(self.scores.shape) == (n,), "Detections.scores shape", f"({n},)", tuple(self.scores.shape))
        _expect(_dtype(self.scores) == "float32", "Detections.scores dtype", "float32", _dtype(self.scores))
        _expect(tuple(self.class_ids.shape) == (n,), "Detections.class_ids shape", f"({n},)",
                tuple(self.class_ids.shape))
        _expect(_dtype(self.class_ids) == "int64", "Detections.class_ids dtype", "int64", _dtype(self.class_ids))
        _expect(len(self.orig_shape) == 2 and min(self.orig_shape) > 0, "Detections.orig_shape",
                "(H, W) > 0", self.orig_shape)
        _expect(self._masks is None or self._crops is None, "Detections masks", "masks or crops, not both",
                "both")
        if self._masks is not None:
            want = (n, *self.orig_shape)
            _expect(tuple(self._masks.shape) == want, "Detections.masks shape", str(want), tuple(self._masks.shape))
            _expect(_dtype(self._masks) == "bool", "Detections.masks dtype", "bool", _dtype(self._masks))
        if self._crops is not None:
            _expect(len(self._crops) == n, "Detections.crops", f"{n} crops", len(self._crops))
            h, w = self.orig_shape
            for x0, y0, c in self._crops:
                _expect(c.ndim == 2 and 0 <= x0 and 0 <= y0 and y0 + c.shape[0] <= h and x0 + c.shape[1] <= w,
                        "Detections.crops", f"2-D crops inside the {h}x{w} frame", (x0, y0, tuple(c.shape)))

    @property
    def has_masks(self) -> bool:
        return self._masks is not None or self._crops is not None

    @property
    def masks(self) -> Array | None:
        """(n, H, W) bool frame masks (built from the crops on first use), or None without masks."""
        if self._masks is None and self._crops is not None:
            on_host = isinstance(self.boxes, np.ndarray)
            # Off the host every array is a tensor (_check allows no mix).
            crops = [(x0, y0, torch.from_numpy(c) if on_host else cast(torch.Tensor, c))
                     for x0, y0, c in self._crops]
            dense = paste_crops(crops, self.orig_shape, device=None if on_host else self.boxes.device)
            object.__setattr__(self, "_masks", dense.numpy() if on_host else dense)
            object.__setattr__(self, "_crops", None)
        return self._masks

    def _replace(self, convert: Any) -> Detections:
        crops = None if self._crops is None else [(x0, y0, convert(c)) for x0, y0, c in self._crops]
        return Detections(boxes=convert(self.boxes), scores=convert(self.scores), class_ids=convert(self.class_ids),
                          masks=None if self._masks is None else convert(self._masks), orig_shape=self.orig_shape,
                          names=self.names, crops=crops)

    def _host_crops(self) -> list[tuple[int, int, np.ndarray]] | None:
        return None if self._crops is None else [(x0, y0, _np(c)) for x0, y0, c in self._crops]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def labels(self) -> list[str]:
        """Class name of each detection."""
        ids = _np(self.class_ids).tolist()
        bad = [i for i in ids if not 0 <= i < len(self.names)]
        if bad:
            raise ValueError(f"Detections.class_ids: expected ids in [0, {len(self.names)}), got {bad[:5]}")
        return [self.names[i] for i in ids]

    def cpu(self) -> Detections:
        """The same detections with torch tensors on the CPU (numpy arrays are returned as they are)."""
        if isinstance(self.boxes, np.ndarray):
            return self
        return self._replace(lambda a: a.cpu())

    def numpy(self) -> Detections:
        """The same detections as numpy arrays (copied to the host when on a device)."""
        return self._replace(_np)

    def to_rle(self) -> list[dict[str, Any]]:
        """COCO compressed RLE of each mask (pycocotools-compatible), frame-sized. Needs masks."""
        crops = self._host_crops()
        if crops is not None:
            h, w = self.orig_shape
            return [rle.encode_crop(c, x0, y0, h, w) for x0, y0, c in crops]
        return [rle.encode(m) for m in self._host_masks("to_rle")]

    def relabelled(self, class_ids: Array, names: Sequence[str]) -> Detections:
        """The same detections under other class ids and names (boxes and masks shared, not copied)."""
        return Detections(boxes=self.boxes, scores=self.scores, class_ids=class_ids, masks=self._masks,
                          orig_shape=self.orig_shape, names=names, crops=self._crops)

    def mask_crops(self) -> list[tuple[int, int, np.ndarray]]:
        """Per detection ``(x0, y0, mask (h, w) bool numpy)``: its mask inside a box placed at frame pixel
        (x0, y0), without building the dense frame-sized masks (post-processing's crops as they are; dense
        masks cut to the box of their pixels, (0, 0) with a (0, 0) mask when empty). Needs masks."""
        crops = self._host_crops()
        if crops is not None:
            return [(x0, y0, c.astype(bool, copy=False)) for x0, y0, c in crops]
        out = []
        for m in self._host_masks("mask_crops"):
            window = mask_window(m)
            if window is None:
                out.append((0, 0, np.zeros((0, 0), bool)))
                continue
            x0, y0, x1, y1 = window
            out.append((x0, y0, m[y0:y1, x0:x1].astype(bool, copy=False)))
        return out

    def polygons(self) -> list[list[np.ndarray]]:
        """Per detection, its outer contours as (k, 2) float32 (x, y) arrays in frame pixels, largest
        first (see :func:`engines.ops.polygons.mask_to_polygons`). Needs masks."""
        crops = self._host_crops()
        if crops is not None:
            return [mask_to_polygons(c, offset=(x0, y0)) for x0, y0, c in crops]
        return [mask_to_polygons(m) for m in self._host_masks("polygons")]

    def plot(self, image_bgr: np.ndarray, *, alpha: float = 0.5, line_width: int | None = None,
             track_ids: Sequence[int | None] | None = None) -> np.ndarray:
        """Draw masks (translucent), boxes and "label score" captions on a copy of the frame.

        image_bgr: (H, W, 3) uint8 BGR with (H, W) == orig_shape. Returns a new (H, W, 3) uint8 BGR image;
        the input is not modified. Each class gets its own colour. track_ids (one per detection, None for
        an untracked one): captions start "#id", and a tracked object is coloured by its id, so it keeps
        its colour from frame to frame and stands apart from its neighbours of the same class.
        """
        img = np.asarray(image_bgr)
        _expect(img.ndim == 3 and img.shape[2] == 3 and img.shape[:2] == self.orig_shape, "plot image shape",
                f"({self.orig_shape[0]}, {self.orig_shape[1]}, 3)", img.shape)
        _expect(img.dtype == np.uint8, "plot image dtype", "uint8", img.dtype)
        out = img.copy()
        if not len(self):
            return out
        boxes, scores, ids = _np(self.boxes), _np(self.scores), _np(self.class_ids)
        if track_ids is not None and len(track_ids) != len(self):
            raise ValueError(f"Detections.plot: {len(track_ids)} track ids for {len(self)} detections")
        tracks = list(track_ids) if track_ids is not None else [None] * len(self)
        colors = [class_color(int(c) if t is None else t) for c, t in zip(ids, tracks, strict=True)]
        crops = self._host_crops()
        if crops is None and self._masks is not None:
            crops = [(0, 0, m) for m in _np(self._masks)]
        for (x0, y0, m), color in zip(crops or [], colors, strict=False):
            view = out[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
            region = view[m].astype(np.float32)
            view[m] = (region * (1 - alpha) + np.array(color, np.float32) * alpha).round().astype(np.uint8)
        lw = line_width or max(round(sum(self.orig_shape) / 2 * 0.003), 2)
        names = self.labels
        for box, score, name, color, t in zip(boxes, scores, names, colors, tracks, strict=True):
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            cv2.rectangle(out, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
            tag = "" if t is None else f"#{t} "
            _caption(out, f"{tag}{name} {float(score):.2f}", (x1, y1), color, lw)
        return out

    def _host_masks(self, what: str) -> np.ndarray:
        masks = self.masks
        if masks is None:
            raise ValueError(f"Detections.{what}: these detections have no masks (post-processed with masks=False)")
        return _np(masks)


def class_color(class_id: int) -> tuple[int, int, int]:
    """A distinct, stable BGR colour for a class id (golden-ratio hue steps, bright and saturated)."""
    h = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def _caption(img: np.ndarray, text: str, corner: tuple[int, int], color: tuple[int, int, int], lw: int) -> None:
    """Filled label box above the box corner (inside the image when the box touches the top)."""
    font_scale, thickness = lw / 3, max(lw - 1, 1)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    x, y = corner
    above = y - th - base >= 0
    y_top = y - th - base if above else y
    cv2.rectangle(img, (x, y_top), (x + tw, y_top + th + base), color, -1, cv2.LINE_AA)
    luminance = 0.299 * color[2] + 0.587 * color[1] + 0.114 * color[0]
    txt_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(img, text, (x, y_top + th), cv2.FONT_HERSHEY_SIMPLEX, font_scale, txt_color, thickness,
                cv2.LINE_AA)


def _np(a: Array) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _dtype(a: Array) -> str:
    return str(a.dtype).removeprefix("torch.")


def _expect(cond: bool, what: str, expected: str, actual: Any) -> None:
    if not cond:
        raise ValueError(f"{what}: expected {expected}, got {actual!r}")


def empty_detections(orig_shape: tuple[int, int], names: Sequence[str], *, masks: bool = True,
                     device: torch.device | str | None = None) -> Detections:
    """No objects in an (H, W) frame: zero-length arrays of the right shapes and dtypes."""
    return Detections(boxes=torch.zeros((0, 4), dtype=torch.float32, device=device),
                      scores=torch.zeros((0,), dtype=torch.float32, device=device),
                      class_ids=torch.zeros((0,), dtype=torch.int64, device=device),
                      masks=torch.zeros((0, *orig_shape), dtype=torch.bool, device=device) if masks else None,
                      orig_shape=orig_shape, names=tuple(names))
