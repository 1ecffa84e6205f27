"""Per-class quality of a model's masks on the objects it finds, beside what mAP says.

    .venv/bin/python benchmarks/mask_iou.py --model engines/assets/demo-seg.pt --data HELDOUT/data.yaml
        [--split val] [--images 120] [--imgsz 640] [--conf 0.25]

For every ground-truth object of >= 16 px, the detection of its class (conf >= --conf) whose mask
overlaps it most. Prints per class the mean mask IoU of those best matches, the share reaching IoU 0.5,
0.75 and 0.9, and what the same logits give when thresholded at -1 and -0.5 instead of 0 (a model
that under-draws thin parts scores higher there) and when cut to the true box instead of the predicted
one (how much of the miss is the box), and the mean box IoU. Masks are made at input resolution, as
``segpipe val`` makes them; the input must not be resized (images of a size the letterbox keeps at gain 1).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.backends import load_backend  # noqa: E402
from engines.data.spec import load_data_yaml  # noqa: E402
from engines.ops.boxes import box_iou  # noqa: E402
from engines.ops.masks import crop_mask  # noqa: E402
from engines.ops.nms import NMSConfig, non_max_suppression  # noqa: E402
from engines.val.validator import Validator  # noqa: E402

COLUMNS = ("iou", "at -1", "at -0.5", "true box", "box iou")


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--conf", type=float, default=0.25)
    args = ap.parse_args()

    model = load_backend(args.model, device="cpu")
    names = model.meta.names
    v = Validator(data=load_data_yaml(args.data), split=args.split, imgsz=args.imgsz, batch=8, verbose=False)
    stats: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seen = 0
    with torch.inference_mode():
        for batch in v.loader:
            pred, proto = model(batch.images.float() / 255)
            rows = non_max_suppression(pred, NMSConfig(conf=args.conf, iou=0.7, max_det=300), nc=len(names))
            for r, p, f, info in zip(rows, proto, batch.im_files, batch.infos, strict=True):
                if seen == args.images:
                    break
                seen += 1
                if info.gain != 1.0:
                    raise SystemExit(f"{f}: resized by the letterbox (gain {info.gain:g}); pass --imgsz to keep it")
                score_image(r, p, info, v.truth_of(f), names, stats)
            if seen == args.images:
                break
    print(f"{args.model}: {seen} images, conf >= {args.conf}")
    print(f"{'class':10} {'n':>5} " + " ".join(f"{c:>8}" for c in COLUMNS) + "   >=0.5  >=0.75  >=0.9")
    for name in names:
        d = stats.get(name)
        if not d:
            continue
        best = np.array(d["iou"])
        print(f"{name:10} {len(best):5d} " + " ".join(f"{np.mean(d[c]) if d[c] else 0:8.3f}" for c in COLUMNS)
              + "   " + "  ".join(f"{(best >= q).mean():6.3f}" for q in (0.5, 0.75, 0.9)))
    return 0


def score_image(rows: torch.Tensor, proto: torch.Tensor, info, truth, names, stats) -> None:
    left, top = info.pad
    oh, ow = info.orig_shape
    if len(rows):
        logits = (rows[:, 6:] @ proto.flatten(1)).view(-1, 1, *proto.shape[1:])
        logits = F.interpolate(logits, info.new_shape, mode="bilinear", align_corners=False)[:, 0, top:top + oh,
                                                                                           left:left + ow]
        boxes = rows[:, :4] - torch.tensor([left, top, left, top], dtype=rows.dtype)
        cls = rows[:, 5].long()
        masks = {t: crop_mask(logits > t, boxes) for t in (0.0, -0.5, -1.0)}

    for g in range(len(truth)):
        gt = torch.from_numpy(truth.full_mask(g))
        if gt.sum() < 16:
            continue
        d = stats[names[int(truth.cls[g])]]
        cand = torch.nonzero(cls == int(truth.cls[g]))[:, 0].tolist() if len(rows) else []
        if not cand:
            d["iou"].append(0.0)
            continue
        ious = [iou(masks[0.0][i], gt) for i in cand]
        i = cand[int(np.argmax(ious))]
        gbox = torch.from_numpy(truth.windows[g:g + 1]).to(boxes.dtype)
        d["iou"].append(max(ious))
        d["at -1"].append(iou(masks[-1.0][i], gt))
        d["at -0.5"].append(iou(masks[-0.5][i], gt))
        d["true box"].append(iou(crop_mask(logits[i:i + 1] > 0, gbox)[0], gt))
        d["box iou"].append(float(box_iou(boxes[i:i + 1], gbox)[0, 0]))


if __name__ == "__main__":
    raise SystemExit(main())
