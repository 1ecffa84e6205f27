"""Calibration images for INT8: letterboxed float batches from a dataset's train split.

Imports nothing from ``pipeline``. Shared by ONNX Runtime static quantisation and the TensorRT
entropy calibrator, so both see the same images prepared exactly as at inference time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from engines.data.spec import load_data_yaml, resolve_images
from engines.errors import ConfigError, DataError
from engines.ops import letterbox

LOG = logging.getLogger("segpipe.export")


def calibration_files(data: str | None, n: int, *, split: str = "train", quiet: bool = False) -> list[Path]:
    """``n`` images spread evenly over ``split`` of the data YAML (all of them if it has fewer, said in a
    warning unless ``quiet``: a calibration on 20 images where 512 were asked for is worth knowing of)."""
    if not data:
        raise ConfigError("--data", "INT8 calibration needs a dataset: pass --data DATA.yaml")
    if n < 1:
        raise ConfigError("--calib-images", f"must be >= 1, got {n}")
    spec = load_data_yaml(data)
    files, _ = resolve_images(spec.sources(split), split=split)
    if not files:
        raise DataError(f"{data}: the {split} split has no images to calibrate on")
    if len(files) < n and not quiet:
        LOG.warning("INT8 calibration on all %d images of %s's %s split (--calib-images asked for %d)",
                    len(files), data, split, n)
    idx = np.linspace(0, len(files) - 1, num=min(n, len(files))).round().astype(int)
    return [files[i] for i in sorted(set(idx.tolist()))]


def calibration_batches(files: list[Path], imgsz: tuple[int, int], *, batch: int = 1,
                        stride: int = 32) -> Iterator[torch.Tensor]:
    """Float32 ``(b, 3, H, W)`` RGB 0-1 CPU batches (``b <= batch``), letterboxed to ``imgsz`` as in predict."""
    for i in range(0, len(files), batch):
        images = []
        for f in files[i : i + batch]:
            im = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if im is None:
                raise DataError(f"{f}: image cannot be decoded")
            images.append(torch.from_numpy(im))
        x, _ = letterbox(images, size=imgsz, stride=stride, auto=False)
        yield x
