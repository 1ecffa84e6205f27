"""CPU latency of post-processing (NMS + masks) for 1, 10, 50 and 100 detections at a 640 input.

    .venv/bin/python benchmarks/postprocess.py [--frame 1280x720] [--repeats 7] [--threads N]
    .venv/bin/python benchmarks/postprocess.py --nms-blocks      # NMS time per block size

Input: a synthetic head output (1, 4 + 80 + 32, 8400) with k objects, each a cluster of 10 candidate
boxes (one survives NMS), plus smooth prototypes (1, 32, 160, 160); the frame is letterboxed to 640.
Columns (median ms): NMS alone; ``topk_rows`` alone (what an NMS-free YOLO26 head takes instead of NMS,
on the same output); ``postprocess`` with masks made at the input and resized to the frame
(the default); with retina masks; the streaming route (NMS + per-box mask crops + COCO RLE of each
crop). Detections keep masks as box crops; the last column adds building the dense (n, H, W) frame
masks (reading ``.masks``), which only callers that ask for them pay. When engines.nn is importable, the yolov8n-seg forward pass on the same input is timed too and
each route is printed as a share of it (target: <= 15 % for up to 100 detections).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engines.ops import (  # noqa: E402
    NMSConfig,
    letterbox_geometry,
    mask_crops,
    non_max_suppression,
    postprocess,
    topk_rows,
)
from engines.ops.boxes import scale_boxes  # noqa: E402
from engines.ops.rle import encode_crop  # noqa: E402

NC, NM, IMGSZ = 80, 32, 640
ANCHORS = (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2
NAMES = tuple(f"class{i}" for i in range(NC))


def synthetic_output(k: int, info, g: torch.Generator, cluster: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred (1, 4+NC+NM, A), proto (1, NM, 160, 160)) with k separated objects inside the content area."""
    pred = torch.zeros((1, 4 + NC + NM, ANCHORS))
    pred[0, 4:4 + NC] = torch.rand((NC, ANCHORS), generator=g) * 0.02  # background below conf 0.25
    pred[0, 4 + NC:] = torch.randn((NM, ANCHORS), generator=g)
    left, top = info.pad
    uh, uw = info.unpad_shape
    cols = int(np.ceil(np.sqrt(k * uw / uh)))
    rows = int(np.ceil(k / cols))
    cw, ch = uw / cols, uh / rows
    idx = torch.randperm(ANCHORS, generator=g)[: k * cluster].view(k, cluster)
    for j in range(k):
        cx, cy = left + (j % cols + 0.5) * cw, top + (j // cols + 0.5) * ch
        jitter = torch.randn((cluster, 4), generator=g) * 0.5
        box = torch.tensor([cx, cy, cw * 0.7, ch * 0.7]) + jitter
        pred[0, :4, idx[j]] = box.T
        pred[0, 4 + j % NC, idx[j]] = 0.9 - 0.02 * torch.arange(cluster, dtype=torch.float32)
        pred[0, 4 + NC:, idx[j]] = (torch.randn((NM, 1), generator=g) * 0.05).expand(NM, cluster)
    pred[0, 4 + NC] = 2.0  # with the constant prototype below: every object's mask is mostly foreground
    proto = F.interpolate(torch.randn((1, NM, 20, 20), generator=g) * 4, (160, 160), mode="bilinear")
    proto[0, 0] = 1.0
    return pred, proto


def stream_route(pred: torch.Tensor, proto: torch.Tensor, info, cfg: NMSConfig) -> int:
    """What the streaming device stage does: NMS, crops on the device, RLE per crop on the host."""
    rows = non_max_suppression(pred, cfg, nc=NC)[0]
    boxes = scale_boxes(rows[:, :4], info)
    crops = mask_crops(proto[0], rows[:, 6:], boxes, info.orig_shape)
    h, w = info.orig_shape
    return len([encode_crop(c.cpu().numpy(), x0, y0, h, w) for x0, y0, c in crops])


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def inference_ms(repeats: int) -> float | None:
    try:
        from engines.nn import SegmentationModel
    except ImportError:
        return None
    model = SegmentationModel("yolov8n-seg.yaml", nc=NC).eval().fuse()
    x = torch.rand((1, 3, IMGSZ, IMGSZ))
    with torch.inference_mode():
        model(x)
        return median_ms(lambda: model(x), repeats)


def nms_blocks(repeats: int) -> None:
    nms_mod = sys.modules["engines.ops.nms"]
    g = torch.Generator().manual_seed(0)
    info = letterbox_geometry((720, 1280), size=IMGSZ)
    cases = {"100 objects, conf 0.25": (100, 0.25), "100 objects, conf 0.001 (val)": (100, 0.001)}
    print("block  " + "  ".join(f"{c:>30}" for c in cases))
    outputs = {c: synthetic_output(k, info, g)[0] for c, (k, _) in cases.items()}
    default = nms_mod.NMS_BLOCK
    for block in (16, 32, 64, 128, 256, 512, 1024):
        nms_mod.NMS_BLOCK = block
        cells = [median_ms(lambda c=c, conf=conf: non_max_suppression(outputs[c], NMSConfig(conf=conf), nc=NC),
                           repeats) for c, (_, conf) in cases.items()]
        print(f"{block:>5}  " + "  ".join(f"{v:>27.1f} ms" for v in cells))
    nms_mod.NMS_BLOCK = default


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frame", default="1280x720", help="original frame WxH")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--nms-blocks", action="store_true", help="time NMS for several block sizes instead")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if args.nms_blocks:
        nms_blocks(args.repeats)
        return
    w, h = (int(v) for v in args.frame.lower().split("x"))
    info = letterbox_geometry((h, w), size=IMGSZ)
    cfg = NMSConfig()
    infer = inference_ms(args.repeats)
    print(f"frame {w}x{h} -> input {info.new_shape[1]}x{info.new_shape[0]}; yolov8n-seg forward: "
          + (f"{infer:.1f} ms" if infer else "engines.nn not available"))
    head = f"{'dets':>5} {'NMS':>8} {'top-k':>8} {'masks@input':>12} {'retina':>9} {'stream+RLE':>11} {'+dense':>8}"
    print(head + (f" {'share (input / retina / stream)':>33}" if infer else ""))
    g = torch.Generator().manual_seed(0)
    for k in (1, 10, 50, 100):
        t_nms, t_topk, t_in, t_ret, t_st, t_dense = time_routes(k, info, cfg, g, args.repeats)
        line = f"{k:>5} {t_nms:>8.1f} {t_topk:>8.1f} {t_in:>12.1f} {t_ret:>9.1f} {t_st:>11.1f} {t_dense:>8.1f}"
        if infer:
            line += f" {100 * t_in / infer:>15.0f}% /{100 * t_ret / infer:>5.0f}% /{100 * t_st / infer:>5.0f}%"
        print(line)


def time_routes(k: int, info, cfg: NMSConfig, g: torch.Generator, repeats: int) -> tuple[float, ...]:
    """Median ms of NMS, top-k, postprocess (input masks), postprocess (retina), streaming route, and
    postprocess (input masks) plus dense frame masks, for k objects."""
    pred, proto = synthetic_output(k, info, g)
    got = len(postprocess(pred, proto, [info], cfg, names=NAMES)[0])
    assert got == k, f"synthetic output gave {got} detections, expected {k}"
    return (median_ms(lambda: non_max_suppression(pred, cfg, nc=NC), repeats),
            median_ms(lambda: topk_rows(pred, cfg, nc=NC), repeats),
            median_ms(lambda: postprocess(pred, proto, [info], cfg, names=NAMES), repeats),
            median_ms(lambda: postprocess(pred, proto, [info], cfg, names=NAMES, retina_masks=True), repeats),
            median_ms(lambda: stream_route(pred, proto, info, cfg), repeats),
            median_ms(lambda: postprocess(pred, proto, [info], cfg, names=NAMES)[0].masks, repeats))


if __name__ == "__main__":
    main()
