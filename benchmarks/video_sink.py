"""Cost of the video sink per frame: continuous recording against event clips waiting for a trigger.

    .venv/bin/python benchmarks/video_sink.py [--frames 150] [--size 1280x720] [--objects 10] [--pre-s 5]

The same frames (a textured picture, N objects with RLE masks drawn in) go through ``VideoSink`` three
ways, one after the other in this process: continuous H.264 segments; clips with no trigger (every
frame drawn and held as JPEG pre-roll, nothing encoded); clips that trigger on every frame (drawn
and encoded, like continuous). Prints milliseconds per frame (the sink's worker thread, wall time
for the whole run divided by the frames) and the memory the pre-roll holds per camera.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycocotools import mask as mask_utils  # noqa: E402

from pipeline.events import encode, to_event  # noqa: E402
from pipeline.messages import Detection, FrameResult  # noqa: E402
from pipeline.sinks.base import Envelope  # noqa: E402
from pipeline.sinks.config import ClipConfig, VideoSinkConfig  # noqa: E402
from pipeline.sinks.video import VideoSink  # noqa: E402

FPS = 15.0


def _frames(n: int, size: tuple[int, int], objects: int) -> list[Envelope]:
    w, h = size
    rng = np.random.default_rng(0)
    base = cv2_texture(rng, w, h)
    out = []
    for seq in range(n):
        dets = []
        for k in range(objects):
            x = (k * w / objects + seq * 4) % (w - 80)
            y = h / 2 + 100 * np.sin(k + seq / 20)
            m = np.zeros((h, w), np.uint8)
            m[int(y):int(y) + 60, int(x):int(x) + 80] = 1
            dets.append(Detection(class_id=k % 3, label="obj", score=0.9, box=(x, y, x + 80, y + 60),
                                  mask=mask_utils.encode(np.asfortranarray(m))))
        res = FrameResult(camera_id="cam", seq=seq, pts=seq / FPS, capture_ts=seq / FPS, infer_ts=seq / FPS,
                          frame_size=size, model="m", detections=tuple(dets))
        image = np.roll(base, seq * 3, axis=1)
        out.append(Envelope(camera_id="cam", kind="frame", payload=encode(to_event(res)), item=res, image=image))
    return out


def cv2_texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    import cv2

    small = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _time(cfg: VideoSinkConfig, envs: list[Envelope]) -> tuple[float, VideoSink]:
    sink = VideoSink.from_config(cfg)
    t0 = time.perf_counter()
    for env in envs:
        sink.publish(env)
    sink.close(timeout=600)
    dt = time.perf_counter() - t0
    assert not sink.counters.totals_dropped, sink.counters.totals_dropped
    return dt / len(envs) * 1000, sink


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--objects", type=int, default=10)
    ap.add_argument("--pre-s", type=float, default=5.0)
    a = ap.parse_args()
    size = tuple(int(v) for v in a.size.split("x"))
    envs = _frames(a.frames, size, a.objects)  # type: ignore[arg-type]
    n = len(envs)
    print(f"{n} frames {a.size}, {a.objects} objects, 1 camera, max_width 1280")
    with tempfile.TemporaryDirectory() as d:
        common = {"type": "video", "queue_size": n + 1, "max_width": 1280}
        rows = [
            ("continuous segments", VideoSinkConfig(dir=Path(d, "a"), **common)),
            ("clips, waiting (pre-roll only)", VideoSinkConfig(
                dir=Path(d, "b"), clips=ClipConfig(triggers=("crossing",), pre_s=a.pre_s), **common)),
            ("clips, recording (every frame triggers)", VideoSinkConfig(
                dir=Path(d, "c"), clips=ClipConfig(triggers=("detection",), pre_s=a.pre_s), **common)),
        ]
        for name, cfg in rows:
            ms, sink = _time(cfg, envs)
            held = sink.clips.held_bytes() / 2**20 if sink.clips is not None else 0.0
            print(f"  {name:42s} {ms:6.1f} ms/frame   pre-roll held {held:5.1f} MB")
        raw = size[0] * size[1] * 3 * a.pre_s * FPS / 2**20
        print(f"  ({a.pre_s:g} s of raw {a.size} frames at {FPS:g} fps would be {raw:.0f} MB)")


if __name__ == "__main__":
    main()
