"""Device stage on CPU with a real YOLOv8n-seg model: rings in, FrameResults out, same answers as
engines' own post-processing, errors and shutdown without deadlocks."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.backends import Backend, load_backend
from engines.ops import letterbox, letterbox_geometry
from engines.ops.nms import NMSConfig
from engines.ops.postprocess import postprocess
from engines.ops.rle import decode
from pipeline import shm
from pipeline.batching import BatchPolicy
from pipeline.device import DeviceSettings, DeviceStage
from pipeline.messages import FramePreview, FrameResult
from tests.pipeline.media import make_frame
from tests.pipeline.rings import CameraRings

RING_BASE = 120  # the rings' shm ids: RING_BASE + camera index
SIZES = [(160, 120), (96, 64), (120, 160)]  # (W, H) per camera: frames of any size batch together
NMS = NMSConfig(conf=1e-6, max_det=8)  # an untrained model scores everything low: keep some boxes


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run configs of these tests do: decoders and other tests need cores
    torch.manual_seed(0)
    yield load_backend("yolov8n-seg.yaml", device="cpu")
    torch.set_num_threads(threads)


@pytest.fixture
def rings() -> Iterator[tuple[list[shm.RingWriter], list[shm.RingReader]]]:
    r = CameraRings(len(SIZES), RING_BASE)
    yield r.writers, r.readers
    r.close()


def settings(**kw: object) -> DeviceSettings:
    base: dict[str, object] = dict(model_path="yolov8n-seg.yaml", device="cpu", imgsz=64, nms=NMS,
                                   batch=BatchPolicy(max_batch=4, max_wait_s=0.005, max_age_s=30))
    base.update(kw)
    return DeviceSettings(**base)  # type: ignore[arg-type]


def publish(writers: list[shm.RingWriter], index: int) -> None:
    for w, size in zip(writers, SIZES, strict=True):
        w.write(make_frame(index, size=size), pts=index / 10, capture_ts=time.time())


def run_stage(stage: DeviceStage, writers: list[shm.RingWriter], frames: int) -> None:
    stop = threading.Event()
    t = threading.Thread(target=stage.run, args=(stop,))
    t.start()
    for i in range(frames):
        publish(writers, i)
        time.sleep(0.15)  # let each round be taken before the next supersedes it
    deadline = time.monotonic() + 60
    while stage.batches == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join(60)
    assert not t.is_alive()


@pytest.mark.parametrize(("size", "threshold"), [(64, 0.5), ((64, 96), 0.5), (64, 0.3)],
                         ids=["square", "rect", "mask-threshold"])
def test_results_match_engines_postprocess(backend: Backend, rings: tuple, size: int | tuple[int, int],
                                           threshold: float) -> None:
    """Square and (height, width) inputs: every camera's frames letterboxed into the one input shape; the
    run config's masks.threshold reaches the masks."""
    writers, readers = rings
    out: list[FrameResult] = []
    stage = DeviceStage(settings=settings(imgsz=size, mask_threshold=threshold), backend=backend, readers=readers,
                        emit=out.append)
    assert stage.size == ((size, size) if isinstance(size, int) else size)
    run_stage(stage, writers, frames=1)
    assert out and {r.camera_id for r in out} <= {"cam0", "cam1", "cam2"}
    for r in out:
        i = int(r.camera_id[3:])
        w, h = SIZES[i]
        assert r.frame_size == (w, h) and r.model == "yolov8n-seg.yaml" and r.infer_ts >= r.capture_ts
        assert r.pts == pytest.approx(r.seq / 10) and 0 < len(r.detections) <= 8
        # The reference: the CPU letterbox (uint8 cv2 resize, then engines' pad + normalise), the
        # model, and engines' postprocess with retina (frame-resolution) masks.
        img = make_frame(r.seq, size=(w, h))
        info = letterbox_geometry((h, w), size=size)
        small = cv2.resize(img, info.unpad_shape[::-1], interpolation=cv2.INTER_LINEAR)
        x, _ = letterbox([torch.from_numpy(small)], size=size)
        x_float, _ = letterbox([torch.from_numpy(img)], size=size)  # the device (float) resize
        assert x.shape[2:] == stage.size
        assert (x - x_float).abs().max() <= 1.01 / 255  # the two resizes agree within one level
        ref = postprocess(*backend(x), [info], NMS, names=backend.meta.names, retina_masks=True,
                          mask_threshold=threshold)[0]
        assert len(r.detections) == len(ref)
        for det, box, score, cls, mask in zip(r.detections, ref.boxes, ref.scores, ref.class_ids, ref.masks,
                                              strict=True):
            assert det.box == pytest.approx(box.tolist(), abs=1e-3)
            assert det.score == pytest.approx(float(score), rel=1e-5) and det.class_id == int(cls)
            assert det.label == backend.meta.names[det.class_id]
            m = decode(det.mask)
            assert det.mask["size"] == [h, w] and m.shape == (h, w)
            assert (m != mask.numpy()).mean() < 1e-3  # same masks up to float rounding at the threshold
    # per-camera counters for the console and metrics
    assert sum(int(rd.control.get("inferred")) for rd in readers) == len(out)
    assert all(rd.control.get("latency_ms") > 0 for rd in readers if rd.control.get("inferred"))


@pytest.mark.parametrize("fmt, resolution", [("polygon", "frame"), ("rle", "model"), ("none", "frame")])
def test_mask_formats(backend: Backend, rings: tuple, fmt: str, resolution: str) -> None:
    writers, readers = rings
    out: list[FrameResult] = []
    stage = DeviceStage(settings=settings(masks=fmt, mask_resolution=resolution), backend=backend,
                        readers=readers, emit=out.append)
    run_stage(stage, writers, frames=1)
    dets = [d for r in out for d in r.detections]
    assert dets
    for r in out:
        w, h = r.frame_size
        for d in r.detections:
            x1, y1, x2, y2 = d.box
            if fmt == "none":
                assert d.mask is None
            elif fmt == "polygon":
                assert d.mask and all(len(p) >= 6 and len(p) % 2 == 0 for p in d.mask)
                xs = [v for p in d.mask for v in p[0::2]]
                ys = [v for p in d.mask for v in p[1::2]]
                assert x1 - 1 <= min(xs) and max(xs) <= x2 and y1 - 1 <= min(ys) and max(ys) <= y2
            else:
                m = decode(d.mask)
                yy, xx = np.nonzero(m)
                assert m.shape == (h, w) and len(xx) > 0
                assert x1 - 1 <= xx.min() and xx.max() <= x2 and y1 - 1 <= yy.min() and yy.max() <= y2


def test_stop_publishes_every_frame_already_taken(backend: Backend, rings: tuple) -> None:
    writers, readers = rings
    out: list[FrameResult] = []

    def slow_emit(r: FrameResult) -> None:  # a sink that keeps batches queued inside the stage
        time.sleep(0.05)
        out.append(r)

    stage = DeviceStage(settings=settings(batch=BatchPolicy(max_batch=1, max_wait_s=0.0, max_age_s=30)),
                        backend=backend, readers=readers, emit=slow_emit)
    stop = threading.Event()
    t = threading.Thread(target=stage.run, args=(stop,))
    t.start()
    for i in range(6):
        publish(writers, i)
        time.sleep(0.02)
    stop.set()  # batches are gathered but not yet published
    t.join(60)
    assert not t.is_alive()
    for rd in readers:
        if rd.last_seq >= 0:  # every frame the batcher took was published, the last one included
            assert max(r.seq for r in out if r.camera_id == rd.camera_id) == rd.last_seq
    assert len({(r.camera_id, r.seq) for r in out}) == len(out)


def test_first_error_wins_and_nothing_deadlocks(backend: Backend, rings: tuple) -> None:
    writers, readers = rings

    def broken_emit(r: FrameResult) -> None:
        raise RuntimeError("sink went away")

    stage = DeviceStage(settings=settings(depth=1), backend=backend, readers=readers, emit=broken_emit)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            stage.run(stop)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    for i in range(20):  # keep frames coming: the upstream threads must still wind down
        publish(writers, i)
        time.sleep(0.02)
        if not t.is_alive():
            break
    t.join(60)
    assert not t.is_alive() and not stop.is_set()
    assert len(errors) == 1 and str(errors[0]) == "sink went away"
    assert stage._pool.qsize() == stage.s.depth + 2  # every staging arena came back


def test_fixed_shape_model_refuses_another_input_shape(tmp_path: Path, rings: tuple) -> None:
    """A static ONNX export takes only its own shape: a config asking for another is refused by name
    before any frame is read; asking for its own shape (or nothing) runs."""
    from engines.errors import EngineMismatchError
    from engines.export import export

    torch.manual_seed(0)
    onnx = load_backend(export("yolov8n-seg.yaml", format="onnx", imgsz=(64, 96), out=tmp_path / "m.onnx"),
                        device="cpu")
    assert not onnx.meta.dynamic and tuple(onnx.meta.imgsz) == (64, 96)
    for ok in (None, (64, 96)):
        assert DeviceStage(settings=settings(imgsz=ok), backend=onnx, readers=rings[1], emit=print).size == (64, 96)
    for bad, asked in ((64, "64x64"), ((96, 64), "96x64")):
        with pytest.raises(EngineMismatchError, match=f"built for 64x96 \\(HxW\\) inputs, the config asks for {asked}"):
            DeviceStage(settings=settings(imgsz=bad), backend=onnx, readers=rings[1], emit=print)


def test_input_shape_must_fit_the_model_stride(backend: Backend, rings: tuple) -> None:
    """A model that downsamples 64x (a P6 model) cannot take a 96-pixel-wide input: refused by name."""
    import copy
    import dataclasses

    from engines.errors import ConfigError

    p6 = copy.copy(backend)
    p6.meta = dataclasses.replace(backend.meta, stride=64)
    with pytest.raises(ConfigError, match=r"model.imgsz: 64x96 \(HxW\): each side must be a multiple of .* stride 64"):
        DeviceStage(settings=settings(imgsz=(64, 96)), backend=p6, readers=rings[1], emit=print)
    assert DeviceStage(settings=settings(imgsz=(64, 128)), backend=p6, readers=rings[1], emit=print).size == (64, 128)


def test_preview_frames_only_for_watched_cameras_at_their_rate(backend: Backend, rings: tuple) -> None:
    """A preview sink's ``("watch", ids)`` command: those cameras' results carry a frame copy, at most
    ``fps`` a second and ``width`` wide; the others carry none (no copy, nothing pickled)."""
    writers, readers = rings
    out: list[FrameResult | FramePreview] = []
    commands: queue.Queue = queue.Queue()
    commands.put(("watch", frozenset({"cam0", "cam2"})))
    stage = DeviceStage(settings=settings(preview_watch=(100, 4.0)), backend=backend, readers=readers,
                        emit=out.append, commands=commands)
    run_stage(stage, writers, frames=8)  # 8 rounds 0.15 s apart: 1.2 s, so at most 5-6 previews at 4/s
    previews = [o for o in out if isinstance(o, FramePreview)]
    assert {p.result.camera_id for p in previews} == {"cam0", "cam2"}
    for cam in ("cam0", "cam2"):
        mine = [p for p in previews if p.result.camera_id == cam]
        assert 2 <= len(mine) <= 6
        w, h = SIZES[int(cam[3:])]
        assert mine[0].image.shape == (min(h, round(h * 100 / w)), min(w, 100), 3)  # cam0 shrunk, cam2 as is
    assert any(isinstance(o, FrameResult) and o.camera_id == "cam1" for o in out)


ROIS = {"cam0": (0.25, 0.25, 1.0, 1.0), "cam2": (0.0, 0.5, 0.5, 1.0)}  # cam1: the whole frame


def test_a_roi_is_inferred_alone_and_its_results_land_in_frame_pixels(backend: Backend, rings: tuple) -> None:
    """A camera's roi gives exactly what the model finds in that crop of the frame, moved to frame
    pixels: boxes shifted, masks in place in a whole-frame RLE (nothing outside the roi)."""
    from pipeline.detections import roi_window

    writers, readers = rings
    out: list[FrameResult] = []
    stage = DeviceStage(settings=settings(), backend=backend, readers=readers, emit=out.append, rois=ROIS)
    run_stage(stage, writers, frames=1)
    assert {r.camera_id for r in out} == {"cam0", "cam1", "cam2"}
    for r in out:
        w, h = r.frame_size
        window = roi_window(ROIS.get(r.camera_id), w, h)
        assert r.roi == window
        x0, y0, x1, y1 = window or (0, 0, w, h)
        crop = make_frame(r.seq, size=(w, h))[y0:y1, x0:x1]
        info = letterbox_geometry(crop.shape[:2], size=64)
        small = cv2.resize(crop, info.unpad_shape[::-1], interpolation=cv2.INTER_LINEAR)
        x, _ = letterbox([torch.from_numpy(np.ascontiguousarray(small))], size=64)
        ref = postprocess(*backend(x), [info], NMS, names=backend.meta.names, retina_masks=True)[0]
        assert 0 < len(r.detections) == len(ref)
        for det, box, mask in zip(r.detections, ref.boxes, ref.masks, strict=True):
            assert det.box == pytest.approx((box + torch.tensor([x0, y0, x0, y0])).tolist(), abs=1e-3)
            m = decode(det.mask)
            assert m.shape == (h, w) and not m[:y0].any() and not m[:, :x0].any()
            assert not m[y1:].any() and not m[:, x1:].any()
            assert (m[y0:y1, x0:x1] != mask.numpy()).mean() < 1e-3


@pytest.mark.parametrize("fmt, resolution", [("polygon", "frame"), ("rle", "model")])
def test_roi_masks_in_other_formats_stay_in_their_boxes(backend: Backend, rings: tuple, fmt: str,
                                                        resolution: str) -> None:
    writers, readers = rings
    out: list[FrameResult] = []
    stage = DeviceStage(settings=settings(masks=fmt, mask_resolution=resolution), backend=backend,
                        readers=readers, emit=out.append, rois=ROIS)
    run_stage(stage, writers, frames=1)
    assert any(r.detections for r in out if r.roi is not None)
    for r in out:
        w, h = r.frame_size
        x0, y0, x1, y1 = r.roi or (0, 0, w, h)
        for d in r.detections:
            bx1, by1, bx2, by2 = d.box
            assert x0 <= bx1 and bx2 <= x1 and y0 <= by1 and by2 <= y1
            if fmt == "polygon":
                xs = [v for p in d.mask for v in p[0::2]]
                ys = [v for p in d.mask for v in p[1::2]]
            else:
                ys, xs = np.nonzero(decode(d.mask))
            assert bx1 - 1 <= min(xs) and max(xs) <= bx2 and by1 - 1 <= min(ys) and max(ys) <= by2


def test_roi_window_rounds_to_pixels_and_drops_a_whole_frame() -> None:
    from pipeline.detections import roi_window, shift_detections

    assert roi_window(None, 100, 50) is None and roi_window((0, 0, 1, 1), 100, 50) is None
    assert roi_window((0.25, 0.1, 0.755, 1.0), 100, 50) == (25, 5, 76, 50)
    dets = {"boxes": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32), "scores": np.ones(1), "cls": np.zeros(1),
            "crops": [(1, 2, np.ones((2, 2), bool))]}
    moved = shift_detections(dets, 10, 20)
    assert moved["boxes"].tolist() == [[11.0, 22.0, 13.0, 24.0]] and moved["crops"][0][:2] == (11, 22)
    assert dets["boxes"].tolist() == [[1.0, 2.0, 3.0, 4.0]]  # the input is left as it was


def test_a_camera_attached_by_a_reload_brings_its_roi(backend: Backend, rings: tuple) -> None:
    """``("attach", id, prefix, worker, roi)``: the camera's frames are inferred within its new roi; a
    camera attached again without one is inferred whole."""
    writers, readers = rings
    out: list[FrameResult] = []
    commands: queue.Queue = queue.Queue()
    prefix = shm.prefix_for(RING_BASE + 2)  # cam2's ring, read as camera "late"
    commands.put(("attach", "late", prefix, None, (0.5, 0.5, 1.0, 1.0)))
    stage = DeviceStage(settings=settings(), backend=backend, readers=readers[:2], emit=out.append,
                        commands=commands)
    run_stage(stage, writers, frames=2)
    late = [r for r in out if r.camera_id == "late"]
    assert late and all(r.roi == (60, 80, 120, 160) for r in late)  # cam2's frames are 120x160 (WxH)
    assert all(r.roi is None for r in out if r.camera_id != "late")
    commands.put(("detach", "late"))
    commands.put(("attach", "late", prefix, None, None))
    out.clear()
    run_stage(stage, writers, frames=2)
    assert [r.roi for r in out if r.camera_id == "late"] and not any(r.roi for r in out)
