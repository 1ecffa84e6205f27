"""Image decoding for the datasets. Imports nothing from pipeline/.

JPEGs larger than needed decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), which is several
times faster than a full decode followed by a resize and reads as well (it averages, not drops).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from engines.errors import DataError

_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
_JPEG = frozenset({".jpg", ".jpeg"})


def read_resized(path: Path, shape: tuple[int, int], long_side: int) -> np.ndarray:
    """Decode an image and resize it so its longer side is ``long_side`` (up or down), aspect kept.

    path: image file; shape: its (H, W) from the label check. Returns uint8 BGR (h, w, 3) with
    each side ``min(ceil(side * r), long_side)``, r = long_side / max(H, W) (Ultralytics' ``load_image``).
    Raises DataError when the file cannot be decoded.
    """
    return read_image(path, shape, resized_size(shape, long_side))


def resized_size(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(w, h) that ``read_resized`` gives an image of (H, W) ``shape``."""
    h0, w0 = shape
    r = long_side / max(h0, w0)
    return min(math.ceil(w0 * r), long_side), min(math.ceil(h0 * r), long_side)


def read_image(path: Path, shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Decode an image of (H, W) ``shape`` resized to exactly ``size`` (w, h): uint8 BGR (h, w, 3)."""
    r = max(size[0] / shape[1], size[1] / shape[0])
    flag = cv2.IMREAD_COLOR
    if path.suffix.lower() in _JPEG:
        for factor, f in _REDUCED:
            if r * factor <= 1:  # the reduced decode is still at least the target size
                flag = f
                break
    im = cv2.imread(str(path), flag)
    if im is None:
        raise DataError(f"{path}: image cannot be decoded")
    if (im.shape[1], im.shape[0]) != size:
        im = cv2.resize(im, size, interpolation=cv2.INTER_LINEAR)
    return im
