"""A tiny synthetic YOLO-seg dataset drawn with cv2: filled circles (class 0) and rectangles (class 1).

Real files on disk (images/, labels/, data.yaml) so training tests run the real data pipeline.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _circle(rng: np.random.Generator, x0: float, w: float, size: int) -> np.ndarray:
    r = rng.uniform(0.12, 0.22) * size
    c = np.array([rng.uniform(x0 + r + 2, x0 + w - r - 2), rng.uniform(r + 2, size - r - 2)])
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    return np.stack((c[0] + r * np.cos(t), c[1] + r * np.sin(t)), 1)


def _rect(rng: np.random.Generator, x0: float, w: float, size: int) -> np.ndarray:
    rw, rh = min(rng.uniform(0.2, 0.45) * size, w - 6), rng.uniform(0.2, 0.45) * size
    x, y = rng.uniform(x0 + 2, x0 + w - rw - 2), rng.uniform(2, size - rh - 2)
    return np.array([[x, y], [x + rw, y], [x + rw, y + rh], [x, y + rh]])


def make_shapes_dataset(root: Path, *, n: int = 8, size: int = 128, seed: int = 0) -> Path:
    """Write ``n`` images with 1-2 shapes each and return the data YAML path (train = val)."""
    rng = np.random.default_rng(seed)
    img_dir, lab_dir = root / "images" / "train", root / "labels" / "train"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    for i in range(n):
        img = np.full((size, size, 3), rng.integers(60, 120), np.uint8)
        lines = []
        shapes = 1 + i % 2
        for k in range(shapes):  # side by side, so no shape hides another
            cls, w = (i + k) % 2, size / shapes
            poly = (_circle if cls == 0 else _rect)(rng, k * w, w, size)
            color = (40, 40, 230) if cls == 0 else (230, 200, 40)
            cv2.fillPoly(img, [np.round(poly).astype(np.int32)], color)
            coords = " ".join(f"{v:.5f}" for v in (poly / size).clip(0, 1).ravel())
            lines.append(f"{cls} {coords}")
        cv2.imwrite(str(img_dir / f"im{i:03d}.png"), img)
        (lab_dir / f"im{i:03d}.txt").write_text("\n".join(lines) + "\n")
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n  0: circle\n  1: rect\n")
    return yaml
