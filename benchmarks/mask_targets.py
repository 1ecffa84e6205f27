"""How much of each synthetic object's mask the training targets and the mask head can represent.

    .venv/bin/python benchmarks/mask_targets.py [--scenes 30] [--fit-scenes 12] [--size 640x384] [--seed 2]

Renders held-out-style scenes (``segpipe synth``, style mixed) and prints, per class, the mean IoU with
the exact rendered mask of:

- the label polygon filled back the way the trainer fills it (``rasterize``), for outlines traced along
  pixel edges (``mask_outline``, what ``segpipe synth`` writes) and, for reference, through the centres of
  the boundary pixels (plain ``cv2.findContours``, what it wrote before);
- the training target at ``mask_ratio`` 4, 2 and 1, upsampled bilinearly and thresholded as the model's
  mask logits are at inference (what the model is taught to output);
- the best any quarter-resolution logit map can do (a per-object fit of a free 1/4-resolution map,
  bilinear upsampling, BCE, Adam), an upper bound for YOLOv8's prototype masks at this input size, and
  the same for a half-resolution map (what prototypes one upsampling step finer could reach).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engines.data.polygons import mask_outline, merge_polygons, rasterize  # noqa: E402
from engines.synth.scene import render_scene  # noqa: E402
from engines.synth.shapes import CLASS_NAMES  # noqa: E402


def centre_traced(mask: np.ndarray) -> np.ndarray:
    """The previous labels: contours through boundary pixel centres, read as continuous coordinates."""
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parts = sorted((c.reshape(-1, 2).astype(np.float64) for c in cs if len(c) >= 3),
                   key=lambda c: -abs(cv2.contourArea(c.astype(np.float32))))
    return merge_polygons(parts) if parts else np.zeros((0, 2))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def target_as_output(poly: np.ndarray, h: int, w: int, ratio: int) -> np.ndarray:
    low = torch.from_numpy(rasterize([poly], h, w, ratio)[0].astype(np.float32))
    up = F.interpolate(low[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return up.numpy() > 0.5


def best_low_res_map(mask: np.ndarray, stride: int = 4, steps: int = 150) -> float:
    """IoU of the best-fitting 1/stride-resolution logit map, upsampled and thresholded, on the object's
    crop."""
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min() // stride * stride, xs.min() // stride * stride
    y1, x1 = -(-(ys.max() + 1) // stride) * stride, -(-(xs.max() + 1) // stride) * stride
    gt = F.pad(torch.from_numpy(mask[y0:y1, x0:x1].astype(np.float32)), (4, 4, 4, 4))  # 4: stride 2 or 4
    z = torch.zeros(1, 1, gt.shape[0] // stride, gt.shape[1] // stride, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.5)
    for _ in range(steps):
        up = F.interpolate(z, size=gt.shape, mode="bilinear", align_corners=False)[0, 0]
        loss = F.binary_cross_entropy_with_logits(up, gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return iou(up.detach().numpy() > 0, gt.numpy() > 0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=30)
    ap.add_argument("--fit-scenes", type=int, default=12, help="scenes for the (slower) best-fit bound")
    ap.add_argument("--size", default="640x384")
    ap.add_argument("--seed", type=int, default=2)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(1)
    rows: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i in range(args.scenes):
        scene = render_scene(np.random.default_rng([args.seed, i]), "mixed", (w, h))
        for cls, m in zip(scene.class_ids, scene.masks(), strict=True):
            if m.sum() < 4:
                continue
            cls = int(cls)
            edge = mask_outline(m)
            rows["label, edge-traced"][cls].append(iou(rasterize([edge], h, w, 1)[0].astype(bool), m))
            old = centre_traced(m)
            if len(old) >= 3:
                rows["label, centre-traced (before)"][cls].append(iou(rasterize([old], h, w, 1)[0].astype(bool), m))
            for r in (4, 2, 1):
                rows[f"target, mask_ratio {r}"][cls].append(iou(target_as_output(edge, h, w, r), m))
            if i < args.fit_scenes and m.sum() >= 50:
                rows["best 1/4-res map"][cls].append(best_low_res_map(m, 4))
                rows["best 1/2-res map"][cls].append(best_low_res_map(m, 2))
    classes = sorted({c for d in rows.values() for c in d})
    print(f"mean IoU with the rendered mask, {args.scenes} scenes {w}x{h} (seed {args.seed})\n")
    print("| | " + " | ".join(CLASS_NAMES[c] for c in classes) + " |")
    print("|---|" + "---:|" * len(classes))
    for name, d in rows.items():
        print(f"| {name} | " + " | ".join(f"{np.mean(d[c]):.3f}" if d[c] else "" for c in classes) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
