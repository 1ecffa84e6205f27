"""segpipe's CPU predict path against Ultralytics' own ONNX Runtime path, same model, same threads.

    .venv/bin/python benchmarks/vs_ultralytics.py --ultralytics-python /tmp/ulvenv/bin/python \
        [--model tests/fixtures/ultralytics/yolov8n-seg-coco8.pt] [--imgsz 640] [--images 32] [--rounds 3] \
        [--int8-data coco128-seg.yaml]

The reference side runs in another interpreter, one with the ``ultralytics`` package (segpipe never
imports it): it exports the Ultralytics checkpoint to ONNX with Ultralytics' own exporter and times
``YOLO(onnx).predict(image)``, the path Ultralytics documents for CPU deployment. segpipe loads the
same checkpoint and times ``SegModel(...)(image)`` on each of its CPU backends (its own exports of that
checkpoint; with ``--int8-data`` also its OpenVINO INT8 export, calibrated on that data). Both sides get the same decoded BGR images one at a time (batch 1, the latency case), the
same confidence and the same intra-op thread count, and both return boxes, classes and masks; file
decoding is outside the timed call. The two sides take turns image by image set, round by round, so
load from elsewhere on the machine hits them alike. Prints a markdown table: wall ms per image (median
and p90 over all rounds), images/s, speed relative to Ultralytics ONNX Runtime and the mean number of
detections per image (equal numbers show the two did the same work).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from engines.predict import SegModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"
IMAGES = REPO.parent / "shared" / "datasets" / "coco128-seg" / "images" / "train2017"

# Runs inside the Ultralytics interpreter. stdin: one line per round; stdout: one JSON line per round.
DRIVER = r"""
import json, sys, time
import cv2
from ultralytics import YOLO

cfg = json.loads(sys.argv[1])
onnx = YOLO(cfg["model"], task="segment").export(format="onnx", imgsz=cfg["imgsz"], verbose=False)
model = YOLO(onnx, task="segment")
images = [cv2.imread(p) for p in cfg["images"]]
kw = dict(imgsz=cfg["imgsz"], conf=cfg["conf"], verbose=False)
for im in images[:3]:
    model.predict(im, **kw)
print(json.dumps({"ready": onnx}), flush=True)
for _ in sys.stdin:
    ms, dets, parts = [], [], []
    for im in images:
        t = time.perf_counter()
        r = model.predict(im, **kw)[0]
        ms.append(1000 * (time.perf_counter() - t))
        dets.append(len(r.boxes))
        parts.append([r.speed["preprocess"], r.speed["inference"], r.speed["postprocess"]])
    print(json.dumps({"ms": ms, "dets": dets, "parts": parts}), flush=True)
"""


class UltralyticsSide:
    """The driver process in the Ultralytics interpreter; ``round()`` times one pass over the images."""

    def __init__(self, python: str, model: Path, images: list[Path], imgsz: int, conf: float, threads: int,
                 workdir: Path) -> None:
        env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
               "YOLO_CONFIG_DIR": str(workdir / "ultralytics-settings")}
        cfg = {"model": str(workdir / model.name), "imgsz": imgsz, "conf": conf, "images": [str(p) for p in images]}
        (workdir / model.name).write_bytes(model.read_bytes())  # its exporter writes beside the checkpoint
        # torch's thread count in the driver (pre/post-processing) follows OMP_NUM_THREADS; ONNX Runtime's
        # default session uses one thread per physical core, which is --threads on the machines we quote.
        self.proc = subprocess.Popen([python, "-c", DRIVER, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=workdir)
        ready = self._read()
        self.onnx = ready["ready"]

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            if line.startswith("{"):
                return json.loads(line)
        raise SystemExit(f"the Ultralytics driver exited ({self.proc.wait()}); run it by hand to see why")

    def round(self) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def our_models(model: Path, imgsz: int, threads: int, workdir: Path, int8_data: Path | None) -> dict[str, SegModel]:
    """segpipe on every CPU backend, each from its own export of ``model``."""
    from engines.export import export

    out = {"segpipe torch": SegModel(model, threads=threads)}
    rows: list[tuple[str, str, str, dict]] = [("segpipe onnxruntime", "onnx", ".onnx", {}),
                                              ("segpipe openvino", "openvino", "_openvino_model", {})]
    if int8_data is not None:
        rows.append(("segpipe openvino int8", "openvino", "_int8_openvino_model",
                     {"int8": True, "data": str(int8_data)}))
    for name, fmt, suffix, kw in rows:
        try:
            path = export(model, format=fmt, imgsz=imgsz, out=workdir / f"segpipe-{imgsz}{suffix}", **kw)
        except Exception as e:  # a missing optional runtime drops its row
            print(f"skip {name}: {e}", file=sys.stderr)
            continue
        out[name] = SegModel(path, threads=threads)
    return out


def time_ours(model: SegModel, images: list[np.ndarray], imgsz: int, conf: float) -> tuple[list[float], list[int]]:
    ms, dets = [], []
    for im in images:
        t = time.perf_counter()
        d = model(im, imgsz=imgsz, conf=conf)[0]
        ms.append(1000 * (time.perf_counter() - t))
        dets.append(len(d))
    return ms, dets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ultralytics-python", required=True,
                    help="python of an environment with ultralytics, onnx and onnxruntime installed")
    ap.add_argument("--model", type=Path, default=FIXTURE, help="an Ultralytics -seg checkpoint")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--images", type=int, default=32, help="first N images of coco128-seg")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--int8-data", type=Path, default=None,
                    help="data YAML: also time segpipe's OpenVINO INT8 export calibrated on it")
    args = ap.parse_args()
    if not IMAGES.is_dir():
        ap.error(f"{IMAGES} not found: the benchmark reads real images from ../shared/datasets/coco128-seg")
    if not args.model.is_file():
        ap.error(f"--model {args.model}: no such file")
    torch.set_num_threads(args.threads)
    paths = sorted(IMAGES.glob("*.jpg"))[: args.images]
    images = [cv2.imread(str(p)) for p in paths]
    print(f"model {args.model.name}, imgsz {args.imgsz}, {len(images)} images at batch 1, conf {args.conf}, "
          f"threads {args.threads}, rounds {args.rounds}", flush=True)
    with tempfile.TemporaryDirectory(prefix="segpipe-vs-ul-") as tmp:
        work = Path(tmp)
        ref = UltralyticsSide(args.ultralytics_python, args.model, paths, args.imgsz, args.conf, args.threads, work)
        ours = our_models(args.model, args.imgsz, args.threads, work, args.int8_data)
        for m in ours.values():  # warm-up, as the driver did
            time_ours(m, images[:3], args.imgsz, args.conf)
        ms: dict[str, list[float]] = {"ultralytics onnxruntime": [], **{k: [] for k in ours}}
        dets: dict[str, list[int]] = {k: [] for k in ms}
        parts: list[list[float]] = []
        try:
            for r in range(args.rounds):
                got = ref.round()
                ms["ultralytics onnxruntime"] += got["ms"]
                dets["ultralytics onnxruntime"] += got["dets"]
                parts += got["parts"]
                for k, m in ours.items():
                    t, d = time_ours(m, images, args.imgsz, args.conf)
                    ms[k] += t
                    dets[k] += d
                print(f"  round {r + 1}: " + ", ".join(f"{k} {statistics.median(v):.1f} ms" for k, v in ms.items()),
                      file=sys.stderr, flush=True)
        finally:
            ref.close()
    base = statistics.median(ms["ultralytics onnxruntime"])
    pre, inf, post = (statistics.median(p[i] for p in parts) for i in range(3))
    print(f"\nUltralytics' own split (median ms): preprocess {pre:.1f}, inference {inf:.1f}, postprocess {post:.1f}")
    print("\n| path | ms/image (median) | p90 | images/s | vs Ultralytics ORT | detections/image |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, v in ms.items():
        med, p90 = statistics.median(v), float(np.percentile(v, 90))
        print(f"| {k} | {med:.1f} | {p90:.1f} | {1000 / med:.1f} | {base / med:.2f}x | {np.mean(dets[k]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
