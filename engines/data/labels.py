"""YOLO-seg label files: parsing, checks, per-split summary. Imports nothing from pipeline/.

A label file has one instance per line: ``class x1 y1 x2 y2 ...`` (a polygon, coordinates
normalised to the image, 0-1). A plain box line ``class xc yc w h`` is tolerated (mixed sets) and
becomes the box-shaped polygon. Identical lines are removed and counted. Bad content raises
DataError naming the file and line; with ``skip_corrupt`` the image is dropped and counted instead.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engines.data.polygons import segments_to_boxes
from engines.data.spec import img2label_path
from engines.errors import DataError

LOG = logging.getLogger("segpipe.data")

COORD_TOL = 0.01  # Ultralytics' tolerance: coordinates in [-0.01, 1.01] are clipped into [0, 1]
MIN_IMAGE_SIDE = 10  # pixels; smaller "images" are almost always broken files


@dataclass(frozen=True, slots=True)
class ImageLabels:
    """Ground truth of one image.

    im_file: image path. shape: (H, W) of the image as decoded (EXIF orientation applied).
    cls: (n,) int64 class ids. segments: n polygons, each (k_i, 2) float32 x,y normalised to 0-1.
    boxes: (n, 4) float32 normalised centre-x, centre-y, width, height (extent of each polygon).
    """

    im_file: Path
    shape: tuple[int, int]
    cls: np.ndarray
    segments: list[np.ndarray]
    boxes: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.cls)
        if self.cls.shape != (n,) or len(self.segments) != n or self.boxes.shape != (n, 4):
            raise ValueError(f"ImageLabels({self.im_file}): cls {self.cls.shape}, {len(self.segments)} "
                             f"segments and boxes {self.boxes.shape} disagree")

    def __len__(self) -> int:
        return len(self.cls)

    def selected(self, classes: Sequence[int] | None, single_cls: bool) -> ImageLabels:
        """Only the instances of ``classes`` (None: all), every one of them class 0 with ``single_cls``
        (``engines.data.spec.DataSpec.select``)."""
        keep = np.ones(len(self), bool) if classes is None else np.isin(self.cls, np.asarray(classes, np.int64))
        cls = np.zeros_like(self.cls[keep]) if single_cls else self.cls[keep]
        return ImageLabels(self.im_file, self.shape, cls, [s for s, k in zip(self.segments, keep, strict=True) if k],
                           self.boxes[keep])


@dataclass(frozen=True, slots=True)
class SplitStats:
    """Counts for one split: images kept, labelled (>=1 instance), background (no or empty label
    file), missing (listed in a .txt but absent), corrupt (dropped with skip_corrupt), duplicates
    (identical label lines removed). ``messages``: the first problems, one line each."""

    split: str
    images: int
    labelled: int
    background: int
    missing: int
    corrupt: int
    duplicates: int
    messages: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        return (f"{self.split}: {self.images} images, {self.labelled} labelled, {self.background} background, "
                f"{self.missing} missing, {self.corrupt} corrupt, {self.duplicates} duplicate labels removed")


def parse_label_file(path: Path, *, nc: int | None) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Read one label file -> ``(cls (n,) int64, segments [(k,2) float32 normalised], duplicates)``.

    Raises DataError ``file:line: reason`` for a malformed line, a class id outside ``[0, nc)`` or a
    coordinate outside ``[-0.01, 1.01]``; coordinates within that tolerance are clipped to 0-1.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read label file: {e}") from None
    seen: set[tuple[float, ...]] = set()
    cls: list[int] = []
    segs: list[np.ndarray] = []
    dup = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            raise DataError(f"{where}: non-numeric value in {line.strip()[:60]!r}") from None
        if not all(math.isfinite(v) for v in vals):
            raise DataError(f"{where}: nan or inf in {line.strip()[:60]!r}")
        c, xy = vals[0], vals[1:]
        if c != int(c) or c < 0 or (nc is not None and c >= nc):
            rng = f" (nc={nc}: ids 0..{nc - 1})" if nc is not None else ""
            raise DataError(f"{where}: class id {parts[0]} is not a valid class{rng}")
        if len(xy) == 4:
            xc, yc, w, h = xy
            xy = [xc - w / 2, yc - h / 2, xc + w / 2, yc - h / 2, xc + w / 2, yc + h / 2, xc - w / 2, yc + h / 2]
        elif len(xy) < 6 or len(xy) % 2:
            raise DataError(f"{where}: expected 'class x1 y1 x2 y2 x3 y3 ...' (an even number >= 6 of "
                            f"coordinates) or 'class xc yc w h', got {len(xy)} coordinates")
        lo, hi = min(xy), max(xy)
        if lo < -COORD_TOL or hi > 1 + COORD_TOL:
            bad = lo if lo < -COORD_TOL else hi
            raise DataError(f"{where}: coordinate {bad:g} outside 0-1 (labels are normalised to the image size)")
        key = (c, *xy)
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        cls.append(int(c))
        segs.append(np.clip(np.asarray(xy, np.float32).reshape(-1, 2), 0.0, 1.0))
    return np.asarray(cls, np.int64), segs, dup


def image_shape(path: Path) -> tuple[int, int]:
    """(H, W) of an image as cv2.imread returns it (EXIF rotation applied), after a real decode.

    JPEGs decode at 1/8 scale (PIL draft), enough to catch truncated or garbled data cheaply.
    Raises DataError naming the file when it cannot be decoded or is under 10 pixels on a side.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation
            im.draft("RGB", (max(w // 8, 1), max(h // 8, 1)))
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: image cannot be decoded ({type(e).__name__}: {e})") from None
    if orientation in (5, 6, 7, 8):  # rotated by 90/270 degrees: cv2 returns it transposed
        w, h = h, w
    if min(h, w) < MIN_IMAGE_SIDE:
        raise DataError(f"{path}: image is {w}x{h} pixels, under {MIN_IMAGE_SIDE} on a side")
    return h, w


def verify_pair(im_file: Path, *, nc: int | None) -> tuple[ImageLabels, int, bool]:
    """Check one image and its label file -> ``(labels, duplicates removed, label file found)``."""
    shape = image_shape(im_file)
    lb = img2label_path(im_file)
    if lb.is_file():
        cls, segs, dup = parse_label_file(lb, nc=nc)
        found = True
    else:
        cls, segs, dup, found = np.zeros(0, np.int64), [], 0, False
    return ImageLabels(im_file=im_file, shape=shape, cls=cls, segments=segs, boxes=segments_to_boxes(segs)), dup, found


def check_pairs(im_files: Sequence[Path], *, nc: int | None, split: str, missing: int = 0,
                skip_corrupt: bool = False) -> tuple[list[ImageLabels], SplitStats]:
    """Verify every image/label pair of a split (no cache; see ``engines.data.cache``)."""
    labels: list[ImageLabels] = []
    messages: list[str] = []
    corrupt = dup_total = 0
    for f in im_files:
        try:
            lab, dup, _ = verify_pair(Path(f), nc=nc)
        except DataError as e:
            if not skip_corrupt:
                raise
            corrupt += 1
            if len(messages) < 10:
                messages.append(f"skipped: {e}")
            continue
        dup_total += dup
        if dup and len(messages) < 10:
            messages.append(f"{img2label_path(f)}: {dup} duplicate labels removed")
        labels.append(lab)
    labelled = sum(1 for lab in labels if len(lab))
    stats = SplitStats(split=split, images=len(labels), labelled=labelled, background=len(labels) - labelled,
                       missing=missing, corrupt=corrupt, duplicates=dup_total, messages=tuple(messages))
    return labels, stats


def file_signature(im_files: Sequence[Path]) -> list[tuple[str, int, int, int, int]]:
    """(image path, size, mtime_ns, label size, label mtime_ns) per image; -1s for an absent label."""
    sig = []
    for f in im_files:
        st = os.stat(f)
        try:
            lst = os.stat(img2label_path(f))
            lsz, lmt = lst.st_size, lst.st_mtime_ns
        except FileNotFoundError:
            lsz = lmt = -1
        sig.append((os.fspath(f), st.st_size, st.st_mtime_ns, lsz, lmt))
    return sig
