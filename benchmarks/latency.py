"""CPU (or CUDA) latency of one frame through SegModel, split into pre-process, inference and
post-process, for yolov8n-seg at 640 on real images.

    .venv/bin/python benchmarks/latency.py [--model yolov8n-seg.yaml] [--imgsz 640] [--repeats 10]
        [--threads 2] [--device cpu] [--conf 0.001 --max-det 100]

Pre-process = upload + letterbox + normalise; inference = the backend call; post-process = NMS + masks
inside each box + un-letterbox (engines.ops.postprocess; Detections keep masks as box crops) and,
separately, the streaming route
(NMS + per-box mask crops + COCO RLE, what `segpipe run` does). A randomly initialised model makes no
detections, so by default the post-process is measured on the model's own output with conf lowered
until ``--max-det`` boxes survive (documented in the printed header).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engines.ops import NMSConfig, letterbox, mask_crops, non_max_suppression, postprocess  # noqa: E402
from engines.ops.boxes import scale_boxes  # noqa: E402
from engines.ops.rle import encode_crop  # noqa: E402
from engines.predict import SegModel  # noqa: E402
from pipeline.detections import download_detections  # noqa: E402

COCO = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128-seg" / "images" / "train2017"


def timed(fn, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    out, times = None, []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolov8n-seg.yaml")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-det", type=int, default=100)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # a YAML model is randomly initialised: make its output repeatable
    model = SegModel(args.model, device=args.device)
    import cv2

    files = sorted(COCO.glob("*.jpg"))[:1]
    image = cv2.imread(str(files[0])) if files else np.full((480, 640, 3), 114, np.uint8)
    dev = model.device
    print(f"model {args.model} on {dev}, threads {torch.get_num_threads()}, imgsz {args.imgsz}, "
          f"frame {image.shape[1]}x{image.shape[0]}, median of {args.repeats}")

    def pre():  # type: ignore[no-untyped-def]
        batch = torch.from_numpy(image[None]).to(dev)
        return letterbox(batch, size=args.imgsz, stride=32, auto=False)

    t_pre, (x, infos) = timed(pre, args.repeats)
    t_inf, (pred, proto) = timed(lambda: model.backend(x), args.repeats)
    # Lower conf until max_det boxes survive so post-processing does real work on a random model.
    scores = pred[0, 4 : 4 + len(model.names)].amax(0)
    conf = float(scores.topk(min(args.max_det * 4, scores.numel())).values[-1]) * 0.999 if scores.numel() else 0.25
    cfg = NMSConfig(conf=conf, iou=0.7, max_det=args.max_det)
    t_post, dets = timed(lambda: postprocess(pred, proto, infos, cfg, names=model.names), args.repeats)

    def stream_route():  # type: ignore[no-untyped-def]
        # What pipeline.device does per frame: crops on the device, one download for all, RLE on the host.
        rows = non_max_suppression(pred, cfg, nc=len(model.names))[0]
        boxes = scale_boxes(rows[:, :4].clone(), infos[0])
        h, w = infos[0].orig_shape
        crops = mask_crops(proto[0], rows[:, 6:], boxes, (h, w))
        host = download_detections([{"boxes": boxes, "scores": rows[:, 4], "cls": rows[:, 5], "crops": crops}])
        return [encode_crop(crop, x0, y0, h, w) for x0, y0, crop in host[0]["crops"]]

    t_stream, _ = timed(stream_route, args.repeats)
    n = len(dets[0])  # type: ignore[index]
    print(f"conf {conf:.3g}: {n} detections")
    print("| step | ms | share of inference |\n|---|---|---|")
    print(f"| pre-process (letterbox + normalise) | {t_pre:.1f} | {t_pre / t_inf:.0%} |")
    print(f"| inference | {t_inf:.1f} | 100% |")
    print(f"| post-process, {n} detections, postprocess() (masks as box crops) | {t_post:.1f} | {t_post / t_inf:.0%} |")
    print(f"| post-process, {n} detections, streaming route (crops + RLE) | {t_stream:.1f} | "
          f"{t_stream / t_inf:.0%} |")


if __name__ == "__main__":
    main()
