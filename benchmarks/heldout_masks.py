"""A model's mAP on a generated dataset scored against the masks the generator rendered, not its labels.

    .venv/bin/python benchmarks/heldout_masks.py --model engines/assets/demo-seg.pt --data HELDOUT/data.yaml
        [--split val] [--imgsz 640] [--batch 8] [--retina-masks]

``segpipe val`` scores against the label polygons, filled into masks (engines.val.truth); this script
renders every scene of the split again from the seed, style and size its data YAML records (``segpipe
synth dataset`` writes them on its first line) and scores against those exact masks instead: what the
model's figure is when no rule for filling polygons stands between the truth and the score. Boxes stay
the labels' own. Prints the validator's table, then one line to compare with ``segpipe val``'s.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.backends import load_backend  # noqa: E402
from engines.data.spec import load_data_yaml  # noqa: E402
from engines.synth.writers import labelled_instances, sample_scene  # noqa: E402
from engines.val.truth import ImageTruth  # noqa: E402
from engines.val.validator import Validator, summary_line  # noqa: E402

HEADER = re.compile(r"^# segpipe synthetic dataset: style=(\w+) seed=(\d+) size=(\d+)x(\d+)")


def rendered_truth(label_truth: ImageTruth, im_file: str, style: str, seed: int,
                   size: tuple[int, int]) -> ImageTruth:
    """The scene behind ``im_file`` (``synth_INDEX.jpg``) rendered again: its labelled instances
    (``engines.synth.writers.labelled_instances``) with their rendered masks."""
    index = int(Path(im_file).stem.rsplit("_", 1)[1])
    kept = labelled_instances(sample_scene(index, seed=seed, style=style, size=size))
    cls = np.array([c for c, _, _ in kept], np.int64)
    if not np.array_equal(cls, label_truth.cls):
        raise SystemExit(f"{im_file}: its labels are not those of scene {index} of seed {seed} ({style}, "
                         f"{size[0]}x{size[1]}): was the dataset made by another segpipe version?")
    masks = np.array([m for _, m, _ in kept], bool).reshape(-1, size[1], size[0])
    return ImageTruth.from_masks(cls, label_truth.boxes, masks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="a data YAML written by `segpipe synth dataset`")
    ap.add_argument("--split", default="val")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--retina-masks", action="store_true", help="masks made straight at the frame's resolution "
                    "(what `segpipe run` publishes with masks.resolution: frame), as `segpipe val --retina-masks`")
    args = ap.parse_args()

    m = HEADER.match(Path(args.data).read_text().splitlines()[0])
    if not m:
        raise SystemExit(f"{args.data}: not written by `segpipe synth dataset` (its first line names the "
                         "style, seed and size)")
    style, seed, size = m[1], int(m[2]), (int(m[3]), int(m[4]))
    model = load_backend(args.model, device="cpu")
    v = Validator(data=load_data_yaml(args.data), split=args.split, imgsz=args.imgsz, batch=args.batch,
                  verbose=True, workers=1, retina_masks=args.retina_masks)
    files = sorted(os.fspath(lab.im_file) for lab in v.dataset.labels)  # the order of v.truths
    truths = v.truths  # the validator's own list: replaced in place
    for i, f in enumerate(files):
        truths[i] = rendered_truth(v.truth_of(f), f, style, seed, size)
    metrics = v(model, model.meta.names)
    print(f"against the rendered masks: {summary_line(metrics)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
