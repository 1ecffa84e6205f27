"""A YOLO-seg dataset of native-scale crops of segpipe's synthetic scenes, for cheap CPU fine-tuning.

    .venv/bin/python benchmarks/synth_crops.py --out DIR --scenes 4000 --seed 14 [--style traffic]
        [--size 640x384] [--crop 320x192] [--focus bicycle] [--workers 2] [--force]

Why: the demo model's weakest masks are thin structures (a bicycle's 1-3 px frame), which only full-scale
pixels teach, and a 640x384 step costs ~3.4 s a batch of 8 on 2 CPU cores. A 320x192 window of the same
scene at gain 1 (train it with ``--imgsz 320 --rect``) costs about a quarter of that and keeps every stroke
as wide as it is at inference. Each scene gives one window around a random ``--focus`` object, when it
has one, and one window anywhere (the other classes, and background, keep their share). Labels are traced
from the generator's own masks cut to the window, as ``segpipe synth dataset`` traces whole scenes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.synth.labels import mask_to_polygon, yolo_line  # noqa: E402
from engines.synth.shapes import CLASS_NAMES  # noqa: E402
from engines.synth.writers import labelled_instances, sample_scene  # noqa: E402

MIN_PIXELS = 8  # a sliver the window cuts off an object is no instance to learn from


def size_arg(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def windows(rng: np.random.Generator, instances: list, size: tuple[int, int], crop: tuple[int, int],
            focus: int) -> list[tuple[int, int]]:
    """Top-left corners: one window holding a random ``focus`` object's centre (if any), one anywhere."""
    (w, h), (cw, ch) = size, crop
    out = []
    targets = [mask for cls, mask, _ in instances if cls == focus]
    if targets:
        ys, xs = np.nonzero(targets[int(rng.integers(len(targets)))])
        cx, cy = int(xs.mean()), int(ys.mean())
        x0 = int(np.clip(cx - rng.integers(cw // 4, 3 * cw // 4 + 1), 0, w - cw))
        y0 = int(np.clip(cy - rng.integers(ch // 4, 3 * ch // 4 + 1), 0, h - ch))
        out.append((x0, y0))
    out.append((int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))))
    return out


def crops(index: int, *, seed: int, style: str, size: tuple[int, int], crop: tuple[int, int], focus: int
          ) -> list[tuple[int, int, np.ndarray, list[str]]]:
    """``(x0, y0, BGR image, label lines)`` of each window of scene ``index``."""
    scene = sample_scene(index, seed=seed, style=style, size=size)
    instances = labelled_instances(scene)
    rng = np.random.default_rng([seed, index, 7])
    cw, ch = crop
    out = []
    for x0, y0 in windows(rng, instances, size, crop, focus):
        lines = []
        for cls, mask, _ in instances:
            part = np.ascontiguousarray(mask[y0:y0 + ch, x0:x0 + cw])
            if part.sum() < MIN_PIXELS:
                continue
            poly = mask_to_polygon(part)
            if len(poly) >= 3:
                lines.append(yolo_line(cls, poly, cw, ch))
        out.append((x0, y0, scene.image[y0:y0 + ch, x0:x0 + cw], lines))
    return out


def job(args: tuple[int, int, str, tuple[int, int], tuple[int, int], int, str]) -> int:
    index, seed, style, size, crop, focus, out = args
    cut = crops(index, seed=seed, style=style, size=size, crop=crop, focus=focus)
    for k, (_, _, image, lines) in enumerate(cut):
        name = f"{index:06d}_{k}"
        ok = cv2.imwrite(f"{out}/images/train/{name}.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok, "JPEG encoding of a uint8 BGR image cannot fail"
        Path(f"{out}/labels/train/{name}.txt").write_text("".join(f"{line}\n" for line in lines))
    return len(cut)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--scenes", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--style", default="traffic")
    ap.add_argument("--size", type=size_arg, default=(640, 384))
    ap.add_argument("--crop", type=size_arg, default=(320, 192))
    ap.add_argument("--focus", default="bicycle", choices=CLASS_NAMES)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="replace --out if it holds anything")
    args = ap.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        if not args.force:
            sys.exit(f"{args.out}: exists and is not empty (--force replaces it)")
        shutil.rmtree(args.out)
    if not (0 < args.crop[0] <= args.size[0] and 0 < args.crop[1] <= args.size[1]):
        sys.exit(f"--crop {args.crop[0]}x{args.crop[1]}: must fit in --size {args.size[0]}x{args.size[1]}")
    for sub in ("images/train", "labels/train"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    focus = CLASS_NAMES.index(args.focus)
    jobs = [(i, args.seed, args.style, args.size, args.crop, focus, str(args.out)) for i in range(args.scenes)]
    with multiprocessing.Pool(args.workers) as pool:
        n = sum(pool.imap_unordered(job, jobs, chunksize=16))
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASS_NAMES))
    (args.out / "data.yaml").write_text(
        f"# native-scale crops: style={args.style} seed={args.seed} size={args.size[0]}x{args.size[1]} "
        f"crop={args.crop[0]}x{args.crop[1]} focus={args.focus}\n"
        f'path: "{args.out.resolve()}"\ntrain: images/train\nval: images/train\nnc: {len(CLASS_NAMES)}\n'
        f"names:\n{names}")
    print(f"wrote {n} crops of {args.scenes} scenes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
