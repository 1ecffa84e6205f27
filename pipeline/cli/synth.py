"""``segpipe synth``: render synthetic factory/traffic data (a YOLO-seg dataset or a video clip).

    segpipe synth dataset --out DIR --images N [--style factory|traffic|mixed] [--seed S]
                          [--size WxH] [--val-fraction F] [--workers K] [--force]
    segpipe synth video --out FILE.mp4 --seconds T --fps F [--size WxH] [--style ...] [--seed S]
                        [--force]

All checks and file formats live in ``engines.synth.writers``; this module only maps arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

from engines.synth.scene import STYLES
from engines.synth.shapes import CLASS_NAMES

NAME = "synth"
HELP = "render synthetic factory/traffic scenes: a YOLO-seg dataset or an H.264 clip with ground truth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="synth_command", metavar="{dataset,video}", required=True)
    classes = ", ".join(f"{i} {n}" for i, n in enumerate(CLASS_NAMES))
    d = sub.add_parser(
        "dataset",
        help="write a YOLO-seg dataset (images/, labels/, data.yaml)",
        description=f"Write a YOLO-seg dataset of synthetic scenes. Classes (all styles): {classes}.",
    )
    d.add_argument("--out", required=True, help="output folder (must be empty unless --force)")
    d.add_argument("--images", type=int, required=True, help="number of images to render")
    d.add_argument("--val-fraction", type=float, default=0.2, help="share of images in val (default 0.2)")
    d.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="rendering processes (default: CPU count, at most 8)",
    )
    v = sub.add_parser(
        "video",
        help="write an H.264 clip and its FILE.gt.jsonl ground truth",
        description="Write an H.264 clip of synthetic objects moving, appearing and leaving, and beside it "
                    f"FILE.gt.jsonl: every frame's instances (class, box, RLE mask). Classes: {classes}.",
    )
    v.add_argument("--out", required=True, help="clip file (.mp4, .mkv or .mov)")
    v.add_argument("--seconds", type=float, required=True, help="clip length in seconds")
    v.add_argument("--fps", type=float, default=30.0, help="frames per second (default 30)")
    for p in (d, v):
        p.add_argument("--style", default="mixed", help=f"one of {', '.join(STYLES)} (default mixed)")
        p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same output (default 0)")
        p.add_argument("--size", default="640x480", help="frame size WIDTHxHEIGHT (default 640x480)")
        p.add_argument(
            "--force",
            action="store_true",
            help="overwrite an existing output (dataset: only its images/, labels/, data.yaml)",
        )


def _progress(total: int, unit: str):  # -> (callback, closer)
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, file=sys.stderr, disable=None, leave=False)
    return bar.update, bar.close


def run(args: argparse.Namespace) -> int:
    from engines.synth import writers

    size = writers.parse_size(args.size)
    if args.synth_command == "dataset":
        update, close = _progress(max(args.images, 0), "img")
        try:
            s = writers.write_dataset(
                args.out,
                images=args.images,
                style=args.style,
                seed=args.seed,
                size=size,
                val_fraction=args.val_fraction,
                workers=args.workers,
                force=args.force,
                progress=update,
            )
        finally:
            close()
        per_class = ", ".join(f"{n} {c}" for n, c in zip(CLASS_NAMES, s.instances, strict=True))
        rate = (s.train + s.val) / max(s.seconds, 1e-9)
        print(
            f"wrote {s.train + s.val} images ({s.train} train, {s.val} val) to {s.root} in {s.seconds:.1f} s "
            f"({rate:.1f} images/s)\ninstances: {per_class}\ndata: {s.data_yaml}"
        )
        return 0
    update, close = _progress(max(round(args.seconds * args.fps), 0), "frame")
    try:
        r = writers.write_video(
            args.out,
            seconds=args.seconds,
            fps=args.fps,
            size=size,
            style=args.style,
            seed=args.seed,
            force=args.force,
            progress=update,
        )
    finally:
        close()
    print(
        f"wrote {r.frames} frames ({r.style}, {r.instances} instances) to {r.video} in {r.seconds:.1f} s\n"
        f"ground truth: {r.sidecar}"
    )
    return 0
