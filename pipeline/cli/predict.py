"""segpipe predict: run a model on images, folders, globs, videos or streams; save annotated output
and COCO-format predictions.json."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import cv2

from engines.errors import SourceError
from pipeline.cli.common import add_infer_args, add_model_args, check_range, parse_classes

NAME = "predict"
HELP = "predict on images, folders, globs, videos or stream URLs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--source", required=True, help="image, folder, glob, video file or stream URL")
    add_infer_args(p)
    p.add_argument("--retina-masks", action="store_true", help="masks at full frame resolution")
    p.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    p.add_argument("--no-save", action="store_true", help="do not write annotated images/videos")
    p.add_argument("--max-frames", type=int, default=0, help="stop a video/stream after N frames")


def _image_id(name: str, frame: int | None) -> int | str:
    stem = name if frame is None else f"{name}_{frame:06d}"
    return int(stem) if stem.isdigit() else stem


def _coco_records(dets: Any, image_id: int | str) -> list[dict[str, Any]]:
    out = []
    rles = dets.to_rle() if dets.has_masks else [None] * len(dets)
    for box, score, cls, rle in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(),
                                    rles, strict=True):
        x1, y1, x2, y2 = box
        rec: dict[str, Any] = {"image_id": image_id, "category_id": int(cls),
                               "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                               "score": round(float(score), 5)}
        if rle is not None:
            rec["segmentation"] = rle
        out.append(rec)
    return out


class _VideoWriters:
    """Annotated MP4 per video source, opened lazily at the first frame."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.writers: dict[str, Any] = {}

    def write(self, name: str, image: Any) -> None:
        import av

        if name not in self.writers:
            c = av.open(str(self.out / f"{name}.mp4"), "w")
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = image.shape[1] // 2 * 2, image.shape[0] // 2 * 2, "yuv420p"
            self.writers[name] = (c, s)
        c, s = self.writers[name]
        frame = av.VideoFrame.from_ndarray(image[: s.height, : s.width], format="bgr24")
        for pkt in s.encode(frame):
            c.mux(pkt)

    def close(self) -> None:
        for c, s in self.writers.values():
            for pkt in s.encode():
                c.mux(pkt)
            c.close()


def run(args: argparse.Namespace) -> int:
    from engines.predict import SegModel

    check_range("--conf", args.conf, 0.0, 1.0)
    check_range("--iou", args.iou, 0.0, 1.0)
    model = SegModel(args.model, device=args.device, backend=args.backend, half=args.half)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(imgsz=args.imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det,
              classes=parse_classes(args.classes), agnostic=args.agnostic_nms, retina_masks=args.retina_masks)
    records: list[dict[str, Any]] = []
    videos = _VideoWriters(out)
    n_frames = n_dets = 0
    try:
        for item, dets in model.stream(args.source, **kw):
            records += _coco_records(dets, _image_id(item.name, item.frame))
            n_frames += 1
            n_dets += len(dets)
            if not args.no_save:
                annotated = dets.plot(item.image)
                if item.frame is None:
                    cv2.imwrite(str(out / f"{item.name}.jpg"), annotated)
                else:
                    videos.write(item.name, annotated)
            if args.max_frames and item.frame is not None and item.frame + 1 >= args.max_frames:
                break
    finally:
        videos.close()
    if n_frames == 0:
        raise SourceError(f"{args.source}: no frames were read")
    tmp = out / "predictions.json.tmp"
    tmp.write_text(json.dumps(records))
    os.replace(tmp, out / "predictions.json")
    print(f"{n_frames} frame(s), {n_dets} detection(s) -> {out}/ (predictions.json"
          f"{', annotated output' if not args.no_save else ''})")
    return 0
