"""The device stage (pipeline/device.py) on CUDA, against the same stage on CPU and against engines.

Frames of real images (the Ultralytics fixture, tests/fixtures/ultralytics) go through shared-memory
rings into ``DeviceStage`` the way tests/pipeline/test_device.py drives it on CPU; every emitted
``FrameResult`` is compared with a CPU fp32 reference computed with engines' ops step by step (the
stage's own recipe: letterbox, model, NMS, boxes to the frame, mask crops, crops dropped when empty).
On CPU the stage resizes frames on the host in uint8 (cv2) and the reference does the same; on CUDA
the whole letterbox runs on the device in float, and so does the reference.

Covered on CUDA: the pinned staging arenas and non-blocking uploads on their own stream, the
upload -> infer -> post events across three streams and threads, batches of up to ``max_batch``
frames of different sizes, every mask format and resolution, fp16, a CUDA-graph backend in the
stage, and `segpipe run` end to end (device stage in its own spawned process). Tests parametrized
over ``cpu``/``cuda`` prove their logic here; the ``cuda`` variants are marked gpu.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from engines.backends import Backend, BackendOptions, load_backend
from engines.ops import (
    letterbox,
    letterbox_geometry,
    mask_crops,
    mask_to_polygons,
    non_max_suppression,
    scale_boxes,
)
from engines.ops.nms import NMSConfig
from engines.ops.rle import decode
from pipeline.batching import BatchPolicy
from pipeline.detections import model_resolution_crops
from pipeline.device import DeviceSettings, DeviceStage, _on_stream
from pipeline.messages import FrameResult
from tests.conftest import REPO, free_port
from tests.engines.test_cuda_paths import (
    CKPT,
    IMGSZ,
    Obj,
    assert_same_objects,
    frame_variant,
    run_isolated,
)
from tests.pipeline.rings import CameraRings

NMS = NMSConfig(conf=0.25, iou=0.7, max_det=50)
NCAM = 3
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
pytestmark = pytest.mark.usefixtures("strict_fp32")  # tests/conftest.py
# The stage against its own recipe on CPU. Not tighter: CPU and CUDA round a few letterbox pixels
# differently (one grey level), which moves boxes by hundredths of a pixel; real faults move them more.
STRICT = dict(box_px=0.25, score_tol=5e-3, min_iou=0.95)


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    threads = torch.get_num_threads()  # DeviceSettings(threads=1).load_backend() sets it process-wide
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ helpers

def settings(device: str, **kw: object) -> DeviceSettings:
    base: dict[str, object] = dict(model_path=str(CKPT), device=device, imgsz=IMGSZ, nms=NMS, threads=1,
                                   batch=BatchPolicy(max_batch=4, max_wait_s=0.005, max_age_s=30))
    base.update(kw)
    return DeviceSettings(**base)  # type: ignore[arg-type]


_BACKENDS: dict[tuple, Backend] = {}


def backend_for(device: str, **kw: object) -> Backend:
    """One loaded backend per (device, settings), loaded the stage's way (DeviceSettings.load_backend)."""
    key = (device, tuple(sorted(kw.items())))
    if key not in _BACKENDS:
        _BACKENDS[key] = settings(device, **kw).load_backend()
    return _BACKENDS[key]


@functools.cache
def _cpu_backend() -> Backend:
    return load_backend(CKPT, device="cpu")


def frame_for(cam: int, rnd: int) -> np.ndarray:
    """Camera ``cam``'s frame of round ``rnd``: the cameras cycle through the three fixture images
    (so each ring sees its frame size change) and every other round is brightened."""
    return frame_variant(cam + rnd, alt=rnd % 2 == 1)


def rasterize(polygons: list[list[float]] | list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    pts = [np.round(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32) for p in polygons]
    if pts:
        cv2.fillPoly(canvas, pts, 1)
    return canvas.astype(bool)


def reference_objects(img: np.ndarray, *, host_resize: bool, fmt: str = "rle", resolution: str = "frame"
                      ) -> tuple[Obj, ...]:
    """The stage's recipe for one frame with engines ops on CPU in fp32 (see the module docstring)."""
    backend = _cpu_backend()
    info = letterbox_geometry(img.shape[:2], size=IMGSZ, stride=backend.meta.stride)
    src = img
    if host_resize and info.unpad_shape != info.orig_shape:
        src = cv2.resize(img, info.unpad_shape[::-1], interpolation=cv2.INTER_LINEAR)
    x, infos = letterbox([torch.from_numpy(src)], size=IMGSZ, stride=backend.meta.stride)
    assert infos[0].new_shape == info.new_shape
    pred, proto = backend(x)
    (rows,) = non_max_suppression(pred, NMS, nc=backend.meta.nc)
    boxes = scale_boxes(rows[:, :4], info)
    h, w = info.orig_shape
    crops: list = [None] * len(rows)
    if fmt != "none" and len(rows):
        if resolution == "frame":
            crops = mask_crops(proto[0], rows[:, 6:], boxes, info.orig_shape)
        else:
            crops = model_resolution_crops(proto[0], rows[:, 6:], boxes, info)
    out = []
    for box, score, cls, crop in zip(boxes.tolist(), rows[:, 4].tolist(), rows[:, 5].tolist(), crops, strict=True):
        mask = None
        if crop is not None:
            x0, y0, c = crop
            if not c.any():
                continue  # the stage drops objects without a mask pixel
            mask = np.zeros((h, w), bool)
            mask[y0:y0 + c.shape[0], x0:x0 + c.shape[1]] = c.numpy()
            if fmt == "polygon":
                mask = rasterize(mask_to_polygons(mask), (h, w))
        out.append(Obj(int(cls), float(score), np.array(box, np.float64), mask))
    return tuple(out)


@functools.cache
def reference(index: int, alt: bool, host_resize: bool, fmt: str = "rle", resolution: str = "frame"
              ) -> tuple[Obj, ...]:
    return reference_objects(frame_variant(index, alt), host_resize=host_resize, fmt=fmt, resolution=resolution)


def result_objects(r: FrameResult, fmt: str = "rle") -> list[Obj]:
    """A FrameResult's detections as Obj (RLE decoded, polygons rasterised) for the comparisons."""
    w, h = r.frame_size
    out = []
    for d in r.detections:
        mask = None
        if fmt == "rle":
            assert isinstance(d.mask, dict) and d.mask["size"] == [h, w]
            mask = decode(d.mask).astype(bool)
        elif fmt == "polygon":
            assert d.mask and all(len(p) >= 6 and len(p) % 2 == 0 for p in d.mask)
            mask = rasterize(d.mask, (h, w))
        else:
            assert d.mask is None
        out.append(Obj(d.class_id, d.score, np.array(d.box, np.float64), mask))
    return out


class Rings(CameraRings):
    """Three camera rings under a prefix no other test uses."""

    _next = 400

    def __init__(self) -> None:
        base, Rings._next = Rings._next, Rings._next + NCAM
        super().__init__(NCAM, base)

    def publish(self, rnd: int) -> None:
        for cam, w in enumerate(self.writers):
            w.write(frame_for(cam, rnd), pts=rnd / 10, capture_ts=time.time())


@pytest.fixture
def make_rings() -> Iterator[Callable[[], Rings]]:
    made: list[Rings] = []

    def make() -> Rings:
        made.append(Rings())
        return made[-1]

    yield make
    for r in made:
        r.close()


def drive(stage: DeviceStage, rings: Rings, out: list[FrameResult], rounds: int, *, timeout: float = 60.0
          ) -> list[FrameResult]:
    """Run the stage's threads over ``rounds`` rounds of frames (one per camera per round), each
    round published once the previous one was taken, so no frame is dropped; returns ``out``, the
    list the stage emits into.
    The first round is in the rings before the stage starts: it is gathered as one batch of 3."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def target() -> None:
        try:
            stage.run(stop)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    rings.publish(0)
    t = threading.Thread(target=target, name="device-stage", daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    try:
        for rnd in range(1, rounds + 1):
            while t.is_alive() and time.monotonic() < deadline:
                taken = all(rd.last_seq >= rnd - 1 for rd in rings.readers)
                if (rnd < rounds and taken) or (rnd == rounds and len(out) >= rounds * NCAM):
                    break
                time.sleep(0.005)
            if rnd < rounds:
                rings.publish(rnd)
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive(), "the device stage did not stop within 30 s"
    assert not errors, f"the device stage failed: {errors[0]!r}"
    assert len(out) == rounds * NCAM, f"{len(out)} results for {rounds * NCAM} frames"
    return out


def check_results(results: list[FrameResult], *, host_resize: bool, fmt: str = "rle", resolution: str = "frame",
                  tol: dict | None = None, what: str = "") -> int:
    """Every result against the reference of the frame it came from; returns the objects checked."""
    assert len({(r.camera_id, r.seq) for r in results}) == len(results), "a frame was published twice"
    n = 0
    for r in results:
        cam = int(r.camera_id[3:])
        img = frame_for(cam, r.seq)
        assert r.frame_size == (img.shape[1], img.shape[0]) and r.model == CKPT.name
        assert r.pts == pytest.approx(r.seq / 10) and r.infer_ts >= r.capture_ts
        ref = reference(cam + r.seq, r.seq % 2 == 1, host_resize, fmt, resolution)
        assert ref, "the fixture model finds objects in every fixture frame"
        got = result_objects(r, fmt)
        assert all(d.label == _cpu_backend().meta.names[d.class_id] for d in r.detections)
        assert_same_objects(got, list(ref), **(tol or STRICT), what=f"{what} {r.camera_id} seq {r.seq}")
        n += len(got)
    return n


class Recorder:
    """Wraps the stage's three steps to record what the CUDA path is supposed to use: pinned staging
    memory for every frame, one current stream per thread, an upload event per batch."""

    def __init__(self, stage: DeviceStage) -> None:
        self.pinned: list[bool] = []
        self.streams: dict[str, set[int]] = {"upload": set(), "infer": set(), "post": set()}
        self.events: list[object] = []
        self.cuda = stage.cuda
        orig_upload, orig_infer, orig_post = stage._upload, stage._infer, stage._post

        def upload(batch, arena, stream):  # noqa: ANN001, ANN202
            self.pinned += [torch.from_numpy(f.image).is_pinned() for f in batch.frames]
            self._stream("upload")
            result = orig_upload(batch, arena, stream)
            self.events.append(result.event)
            return result

        def infer(item):  # noqa: ANN001, ANN202
            self._stream("infer")
            return orig_infer(item)

        def post(item):  # noqa: ANN001, ANN202
            self._stream("post")
            return orig_post(item)

        stage._upload, stage._infer, stage._post = upload, infer, post  # type: ignore[method-assign]

    def _stream(self, step: str) -> None:
        if self.cuda:
            self.streams[step].add(torch.cuda.current_stream().cuda_stream)

    def check(self) -> None:
        if not self.cuda:
            assert self.pinned and not any(self.pinned) and all(e is None for e in self.events)
            return
        assert self.pinned and all(self.pinned), f"frames not in pinned memory: {self.pinned}"
        assert self.events and all(isinstance(e, torch.cuda.Event) for e in self.events)
        default = torch.cuda.default_stream().cuda_stream
        assert all(len(s) == 1 for s in self.streams.values()), f"one stream per thread expected: {self.streams}"
        ids = {step: next(iter(s)) for step, s in self.streams.items()}
        assert len(set(ids.values())) == 3 and default not in ids.values(), f"three side streams expected: {ids}"


# -------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("device", DEVICES)
def test_stage_steps_on_one_batch(device: str, make_rings: Callable[[], Rings]) -> None:
    """gather -> upload -> infer -> post called directly (no threads), each on its own stream as run()
    does: the frames are copied into pinned staging memory and uploaded asynchronously, the inference
    waits for the upload event, and once _infer has handed the arena back it can be overwritten
    without touching the results."""
    rings = make_rings()
    out: list[FrameResult] = []
    stage = DeviceStage(settings=settings(device), backend=backend_for(device), readers=rings.readers,
                        emit=out.append)
    assert stage.cuda == (device == "cuda") and stage.size == (IMGSZ, IMGSZ)
    stage.warmup()
    streams = [torch.cuda.Stream() if stage.cuda else None for _ in range(3)]
    arena = stage._pool.get()
    for rnd in range(3):  # rounds 0 and 1 grow the arena (frames land in successive buffers), round 2 fits
        rings.publish(rnd)
        batch = stage.batcher.gather(arena, threading.Event())
        assert batch is not None and len(batch.frames) == NCAM
        pinned = [torch.from_numpy(f.image).is_pinned() for f in batch.frames]
        assert pinned == [device == "cuda"] * NCAM
        if rnd == 2:
            assert all(np.shares_memory(f.image, arena._buf) for f in batch.frames)  # staged in the arena
        with _on_stream(streams[0]):
            up = stage._upload(batch, arena, streams[0])
        if stage.cuda:
            assert isinstance(up.event, torch.cuda.Event) and up.infos is None
            assert [tuple(i.shape) for i in up.images] == [f.image.shape for f in batch.frames]  # whole frames
            assert all(i.is_cuda and i.dtype == torch.uint8 for i in up.images)
        else:
            assert up.event is None and [i.new_shape for i in up.infos] == [(IMGSZ, IMGSZ)] * NCAM
            assert [tuple(i.shape[:2]) for i in up.images] == [i.unpad_shape for i in up.infos]  # host resize
        with _on_stream(streams[1]):
            inf = stage._infer(up)
        pool = [stage._pool.get() for _ in range(stage._pool.qsize())]
        assert len(pool) == stage.s.depth + 2 and any(a is arena for a in pool)  # the arena is back in the pool
        for a in pool:  # keep using this one: the next round finds it grown
            if a is not arena:
                stage._pool.put(a)
        arena._buf[:] = 255  # ... so scribbling over it must not change any result
        assert inf.pred.device.type == inf.proto.device.type == device
        assert inf.pred.shape == (NCAM, 4 + 80 + 32, 2100) and inf.proto.shape == (NCAM, 32, 80, 80)
        assert (inf.event is not None) == stage.cuda and (inf.start is not None) == stage.cuda
        with _on_stream(streams[2]):
            stage._post(inf)
    assert len(out) == 3 * NCAM and check_results(out, host_resize=not stage.cuda, what=device) > 0
    stats = stage.take_stats()
    assert stats.batch_sizes == (NCAM,) * 3
    assert len(stats.stage_latency["infer"]) == 3 and min(stats.stage_latency["infer"]) > 0  # CUDA: events
    assert len(stats.stage_latency["postprocess"]) == 3


@pytest.mark.parametrize("device", DEVICES)
def test_stage_threads_match_reference(device: str, make_rings: Callable[[], Rings]) -> None:
    """The threaded stage over four rounds of frames whose size changes per camera (ring and arena
    growth), two batches in flight (depth 2): every frame's result equals the reference; on CUDA the
    frames were pinned, and upload, inference and post-processing ran on three side streams."""
    rings = make_rings()
    out: list[FrameResult] = []
    spec = "0" if device == "cuda" else "cpu"  # the spelling a run config uses
    stage = DeviceStage(settings=settings(spec, depth=2), backend=backend_for(spec), readers=rings.readers,
                        emit=out.append)
    stage.warmup()
    rec = Recorder(stage)
    drive(stage, rings, out, rounds=4)
    assert check_results(out, host_resize=device == "cpu", what=device) > 0
    rec.check()
    stats = stage.take_stats()
    assert sum(stats.batch_sizes) == 4 * NCAM and max(stats.batch_sizes) == NCAM  # round 0: one batch of 3
    assert len(stats.stage_latency["infer"]) == len(stats.batch_sizes)
    assert all(v > 0 for v in stats.stage_latency["infer"])
    assert sum(int(rd.control.get("inferred")) for rd in rings.readers) == 4 * NCAM
    assert stage._pool.qsize() == stage.s.depth + 2  # every staging arena came back


@pytest.mark.gpu
def test_cuda_stage_matches_cpu_stage(make_rings: Callable[[], Rings]) -> None:
    """The same frames through the stage on CPU and on CUDA. The CPU stage resizes in uint8 on the
    host, CUDA in float on the device (pixel values within one level), hence the looser tolerance."""
    results = {}
    for device in ("cpu", "cuda"):
        rings = make_rings()
        out: list[FrameResult] = []
        stage = DeviceStage(settings=settings(device), backend=backend_for(device), readers=rings.readers,
                            emit=out.append)
        results[device] = {(r.camera_id, r.seq): r for r in drive(stage, rings, out, rounds=2)}
    assert results["cpu"].keys() == results["cuda"].keys()
    for key, r in results["cuda"].items():
        assert r.frame_size == results["cpu"][key].frame_size
        assert_same_objects(result_objects(r), result_objects(results["cpu"][key]), box_px=1.5, score_tol=0.02,
                            min_iou=0.9, what=f"cuda vs cpu stage {key}")


@pytest.mark.parametrize(("fmt", "resolution"), [("polygon", "frame"), ("rle", "model"), ("polygon", "model"),
                                                 ("none", "frame")])
@pytest.mark.parametrize("device", DEVICES)
def test_mask_formats_on_device(device: str, fmt: str, resolution: str, make_rings: Callable[[], Rings]) -> None:
    """Polygons, model-resolution masks (pipeline.detections.model_resolution_crops on the device) and no
    masks, each against the same recipe on CPU."""
    rings = make_rings()
    out: list[FrameResult] = []
    stage = DeviceStage(settings=settings(device, masks=fmt, mask_resolution=resolution), backend=backend_for(device),
                        readers=rings.readers, emit=out.append)
    drive(stage, rings, out, rounds=1)
    assert check_results(out, host_resize=device == "cpu", fmt=fmt, resolution=resolution,
                         what=f"{device} {fmt}/{resolution}") > 0


@pytest.mark.gpu
def test_half_stage_close_to_fp32(make_rings: Callable[[], Rings]) -> None:
    rings = make_rings()
    out: list[FrameResult] = []
    backend = backend_for("cuda", half=True)
    assert backend.meta.precision == "fp16"
    stage = DeviceStage(settings=settings("cuda", half=True), backend=backend, readers=rings.readers,
                        emit=out.append)
    stage.warmup()
    drive(stage, rings, out, rounds=2)
    assert check_results(out, host_resize=False, tol=dict(box_px=2.0, score_tol=0.03, min_iou=0.85),
                         what="fp16") > 0


def _graph_stage_worker(conn) -> None:  # noqa: ANN001 - a multiprocessing Connection
    """Child process of test_stage_with_cuda_graph_backend: a failed or invalid capture must not take
    the pytest process's CUDA context down with it. Sends the FrameResults."""
    rings = None
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        rings = Rings()
        backend = load_backend(CKPT, device="cuda", options=BackendOptions(cuda_graph=True))
        out: list[FrameResult] = []
        stage = DeviceStage(settings=settings("cuda"), backend=backend, readers=rings.readers, emit=out.append)
        stage.warmup()  # captures batch 1 and max_batch (4); batches of 2 and 3 are captured while running
        drive(stage, rings, out, rounds=4)
        conn.send(("ok", (out, sorted(backend._graphs))))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        if rings is not None:
            rings.close()
        conn.close()


@pytest.mark.gpu
def test_stage_with_cuda_graph_backend() -> None:
    """A torch backend with CUDA graphs in the threaded stage: graphs for new batch sizes are captured
    on the inference thread while the upload and post threads keep using the GPU (what
    ``model.cuda_graph`` does, beyond the start-up captures of DeviceStage.warmup)."""
    status, result = run_isolated(_graph_stage_worker, timeout=150)
    assert status == "ok", result
    out, graphs = result
    assert len(graphs) >= 3, graphs
    assert check_results(out, host_resize=False, what="cuda graphs") > 0


def _decode(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("device", ["cpu", pytest.param("0", marks=pytest.mark.gpu, id="cuda-0")])
def test_segpipe_run_end_to_end(device: str, tmp_path: Path) -> None:
    """`segpipe run` on three lossless file cameras (one clip per fixture image, so three frame sizes
    batch together): the supervisor spawns the device stage in its own process (CUDA initialised
    there), every frame is inferred and published to the JSONL sink, and each event's detections
    equal the reference computed here from the same decoded frames."""
    from tests.pipeline.media import write_clip  # imports PyAV, which the GPU machine may lack

    decoded: dict[str, list[np.ndarray]] = {}
    cameras = []
    for i in range(NCAM):
        img = frame_variant(i)
        h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2  # H.264 4:2:0 wants even sizes
        images = [np.ascontiguousarray(frame_variant(i, alt=k % 2 == 1)[:h, :w]) for k in range(4)]
        clip = write_clip(tmp_path / f"cam{i}.mp4", images=images, fps=10, crf=12)
        decoded[f"cam{i}"] = _decode(clip)
        assert len(decoded[f"cam{i}"]) == 4
        cameras.append({"id": f"cam{i}", "url": str(clip), "lossless": True, "realtime": False})
    events = tmp_path / "events.jsonl"
    cfg = {"model": {"path": str(CKPT), "device": device, "imgsz": IMGSZ, "conf": NMS.conf, "iou": NMS.iou,
                     "max_det": NMS.max_det, "threads": 1},
           "batch": {"max_batch": 4, "max_wait_ms": 20, "max_age_ms": 60000},
           "cameras": cameras,
           "sinks": [{"type": "jsonl", "path": str(events)}],
           "metrics": {"port": free_port()}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path), "--no-console"], cwd=REPO,
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    host_resize = device == "cpu"
    checked = 0
    for cam, frames in decoded.items():
        got = sorted((e for e in lines if e["kind"] == "frame" and e["camera"] == cam), key=lambda e: e["seq"])
        assert [e["seq"] for e in got] == list(range(4)), f"camera {cam}: lossless, every frame once"
        for e in got:
            h, w = frames[e["seq"]].shape[:2]
            assert e["frame"] == {"width": w, "height": h} and e["model"] == CKPT.name
            objs = [Obj(d["class_id"], d["score"], np.array(d["box"], np.float64),
                        decode({"size": d["mask"]["size"], "counts": d["mask"]["counts"]}).astype(bool))
                    for d in e["detections"]]
            ref = reference_objects(frames[e["seq"]], host_resize=host_resize)
            assert_same_objects(objs, list(ref), **STRICT, what=f"run on {device}, camera {cam} seq {e['seq']}")
            checked += len(ref)
        states = [e["state"] for e in lines if e["kind"] == "status" and e["camera"] == cam]
        assert states[-1] == "ended", states
    assert checked >= 12


@pytest.mark.parametrize("device", DEVICES)
def test_model_swap_in_the_running_stage(device: str, make_rings: Callable[[], Rings], tmp_path: Path) -> None:
    """A ("model", settings) command while frames stream: the stage reports model_ready, every frame
    is published exactly once, results before carry the old model's name and after it the new one's
    (the same weights under another file name, so both halves equal the reference)."""
    import dataclasses
    import queue
    import shutil

    rings = make_rings()
    out: list[FrameResult] = []
    notes: list[tuple[str, str]] = []
    commands: queue.Queue = queue.Queue()
    spec = "0" if device == "cuda" else "cpu"
    stage = DeviceStage(settings=settings(spec), backend=backend_for(spec), readers=rings.readers, emit=out.append,
                        commands=commands, notify=notes.append)
    stage.warmup()
    renamed = shutil.copy(CKPT, tmp_path / "swapped.pt")
    stop, errors = threading.Event(), []

    def target() -> None:
        try:
            stage.run(stop)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def wait(cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not cond():
            assert not errors and time.monotonic() < deadline, (what, errors)
            time.sleep(0.005)

    rings.publish(0)
    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        for rnd in range(1, 6):
            wait(lambda rnd=rnd: len(out) >= rnd * NCAM, f"round {rnd - 1}")
            if rnd == 2:
                commands.put(("model", settings(spec, model_path=str(renamed))))
                wait(lambda: any(kind == "model_ready" for kind, _ in notes), "the swap")
            rings.publish(rnd)
        wait(lambda: len(out) >= 6 * NCAM, "round 5")
    finally:
        stop.set()
        t.join(30)
    assert not errors and [kind for kind, _ in notes] == ["names", "model_ready"], (errors, notes)
    names = [r.model for r in sorted(out, key=lambda r: r.seq)]
    assert names[:2 * NCAM] == [CKPT.name] * (2 * NCAM) and names[-3 * NCAM:] == ["swapped.pt"] * (3 * NCAM)
    same = [dataclasses.replace(r, model=CKPT.name) for r in out]
    assert check_results(same, host_resize=device == "cpu", what=f"{device} swap") > 0
    assert stage._in_flight == 0 and stage._pool.qsize() == stage.s.depth + 2


@pytest.mark.parametrize("device", DEVICES)
def test_rois_on_device(device: str, make_rings: Callable[[], Rings]) -> None:
    """Each camera's roi (a view of the uploaded frame on CUDA, a view resized on the host on CPU) gives
    the recipe's objects of that crop of the frame, in frame pixels."""
    from pipeline.detections import roi_window

    rois = {"cam0": (0.25, 0.0, 1.0, 0.8), "cam1": (0.0, 0.3, 0.6, 1.0)}  # cam2: the whole frame
    rings = make_rings()
    out: list[FrameResult] = []
    stage = DeviceStage(settings=settings(device), backend=backend_for(device), readers=rings.readers,
                        emit=out.append, rois=rois)
    drive(stage, rings, out, rounds=2)
    n = 0
    for r in out:
        img = frame_for(int(r.camera_id[3:]), r.seq)
        h, w = img.shape[:2]
        window = roi_window(rois.get(r.camera_id), w, h)
        assert r.roi == window
        x0, y0, x1, y1 = window or (0, 0, w, h)
        ref = []
        for o in reference_objects(np.ascontiguousarray(img[y0:y1, x0:x1]), host_resize=device == "cpu"):
            mask = np.zeros((h, w), bool)
            mask[y0:y1, x0:x1] = o.mask
            ref.append(Obj(o.cls, o.score, o.box + [x0, y0, x0, y0], mask))
        got = result_objects(r)
        assert_same_objects(got, ref, **STRICT, what=f"{device} roi {r.camera_id} seq {r.seq}")
        n += len(got)
    assert n > 0
