"""Picture health: what each check costs, and what view_match and sharpness say of changed pictures.

    python benchmarks/picture.py [--images N] [--repeat R]

Prints (1) ms per call of ``thumbnail``, ``sharpness`` and ``view_match`` at 720p, 1080p and 4K (one
core), and (2) over real photographs (``../shared/datasets/coco128-seg``, its first N images; skipped
when absent) and ``segpipe synth`` scenes: the median and 95th percentile of ``view_match`` between a
picture and itself changed (darker, hazier, shifted, turned, a third covered) and of its sharpness
ratio (changed / as it was; darker, less contrast, noisier, JPEG, blurred). These are the figures that
``pipeline.picture``'s docstrings and the README quote, and that the defaults (moved_match 0.4,
blurred_ratio 0.5) were chosen from.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.picture import sharpness, thumbnail, view_match  # noqa: E402

COCO = ROOT.parent / "shared" / "datasets" / "coco128-seg" / "images" / "train2017"
Change = Callable[[np.ndarray], np.ndarray]


def _warp(image: np.ndarray, m: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def shifted(fx: float) -> Change:
    return lambda im: _warp(im, np.float32([[1, 0, fx * im.shape[1]], [0, 1, 0]]))


def turned(degrees: float) -> Change:
    return lambda im: _warp(im, cv2.getRotationMatrix2D((im.shape[1] / 2, im.shape[0] / 2), degrees, 1.0))


def covered(im: np.ndarray) -> np.ndarray:
    out = im.copy()
    out[:, : im.shape[1] // 3] = (40, 40, 200)
    return out


def noisy(sigma: float) -> Change:
    rng = np.random.default_rng(0)
    return lambda im: np.clip(im + rng.normal(0, sigma, im.shape), 0, 255).astype(np.uint8)


def jpeg(quality: int) -> Change:
    return lambda im: cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)


def darker(im: np.ndarray) -> np.ndarray:
    return (im * 0.3).astype(np.uint8)


def hazier(im: np.ndarray) -> np.ndarray:
    return (128 + (im.astype(np.float32) - 128) * 0.4).astype(np.uint8)


VIEW_CHANGES: dict[str, Change] = {
    "darker 0.3x": darker, "contrast 0.4x": hazier, "a third covered": covered,
    "shifted 1%": shifted(0.01), "shifted 3%": shifted(0.03), "shifted 10%": shifted(0.1),
    "turned 2 deg": turned(2), "turned 5 deg": turned(5),
}
SHARP_CHANGES: dict[str, Change] = {
    "darker 0.3x": darker, "contrast 0.4x": hazier, "noise 5": noisy(5), "JPEG q20": jpeg(20),
    "blur 1 px": lambda im: cv2.GaussianBlur(im, (0, 0), 1.0),
    "blur 2 px": lambda im: cv2.GaussianBlur(im, (0, 0), 2.0),
    "blur 4 px": lambda im: cv2.GaussianBlur(im, (0, 0), 4.0),
}


def timings(repeat: int) -> None:
    print("cost per call, ms (one core):")
    rng = np.random.default_rng(0)
    for w, h in ((1280, 720), (1920, 1080), (3840, 2160)):
        image = cv2.resize((rng.random((h // 40, w // 40, 3)) * 255).astype(np.uint8), (w, h))
        thumb = thumbnail(image)
        row = []
        calls: tuple[tuple[str, Callable[[], object]], ...] = (
            ("thumbnail", lambda im=image: thumbnail(im)), ("sharpness", lambda im=image: sharpness(im)),
            ("view_match", lambda t=thumb: view_match(t, t)))
        for name, fn in calls:
            fn()
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn()
            row.append(f"{name} {(time.perf_counter() - t0) / repeat * 1e3:.2f}")
        print(f"  {w}x{h}: " + ", ".join(row))


def figures(title: str, images: list[np.ndarray]) -> None:
    print(f"{title} ({len(images)} pictures), median / 95th percentile:")
    for name, change in VIEW_CHANGES.items():
        got = [m for im in images if (m := view_match(thumbnail(im), thumbnail(change(im)))) is not None]
        print(f"  view_match, {name:16s} {np.median(got):.2f} / {np.percentile(got, 95):.2f}")
    for name, change in SHARP_CHANGES.items():
        got = [b / a for im in images if (a := sharpness(im)) and (b := sharpness(change(im)))]
        print(f"  sharpness,  {name:16s} {np.median(got):.2f}x / {np.percentile(got, 95):.2f}x")


def synth_images(n: int) -> list[np.ndarray]:
    from engines.synth.writers import write_dataset

    with tempfile.TemporaryDirectory() as d:
        write_dataset(Path(d) / "ds", images=n, style="mixed", seed=0, size=(640, 384), val_fraction=0.0)
        return [cv2.imread(str(p)) for p in sorted((Path(d) / "ds").rglob("*.jpg"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=60, help="pictures of each kind (default 60)")
    ap.add_argument("--repeat", type=int, default=50, help="calls per timing (default 50)")
    args = ap.parse_args()
    timings(args.repeat)
    if COCO.is_dir():
        figures("coco128", [cv2.imread(str(p)) for p in sorted(COCO.glob("*.jpg"))[: args.images]])
    else:
        print(f"coco128: skipped ({COCO} not found)")
    figures("segpipe synth scenes", synth_images(args.images))


if __name__ == "__main__":
    main()
