"""Device stage: the one process that owns the model. Imports engines (backends, ops) and pipeline's
batching, shm, detections (mask crops and encoding), device_settings and messages.

Three threads joined by bounded queues, so the engine never waits on I/O:

    gather+upload  --q-->  letterbox+infer  --q-->  NMS+mask crops+download+encode  --> emit()

* gather+upload: the fair ``Batcher`` copies each camera's newest frame out of shared memory into a
  staging ``Arena`` (pinned on CUDA) and starts a non-blocking upload on its own CUDA stream.
* letterbox+infer: waits for the upload event, letterboxes and normalises on the device
  (``engines.ops.letterbox``), runs the backend on the compute stream. On CPU the resize part of the
  letterbox is done by the gather thread instead, in uint8 (see ``_resize_on_host``).
* post: NMS (``engines.ops.select_rows``; top-k for NMS-free YOLO26 heads) and per-detection mask crops
  on the device (its own stream), one download per batch, COCO RLE from the crops (``pipeline.detections``: no frame-sized
  mask ever exists on the host), ``FrameResult``s handed to ``emit``.

On CPU the same code runs (streams and pinning are skipped). Every thread is the same skeleton: loop
over a bounded queue until the STOP sentinel, pass STOP downstream; the first error wins, the others
keep draining their queue (so nobody blocks on a full one) and ``run()`` re-raises it.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import cv2
import numpy as np
import torch

from engines.backends import Backend
from engines.errors import ConfigError, SegpipeError
from engines.ops import letterbox, select_rows
from engines.ops.letterbox import LetterboxInfo, letterbox_geometry
from pipeline.batching import Arena, Batcher
from pipeline.detections import (
    download_detections,
    encode_detections,
    frame_detections,
    roi_window,
    shift_detections,
)
from pipeline.device_settings import DeviceSettings, ModelBundle, bundle_model
from pipeline.images import shrunk
from pipeline.messages import Batch, FramePreview, FrameResult
from pipeline.metrics import StageStats
from pipeline.shm import RingReader

Window = tuple[int, int, int, int]  # (x0, y0, x1, y1) frame pixels, half-open
Roi = tuple[float, float, float, float]  # a camera's roi: (x1, y1, x2, y2) fractions of its frames

_STOP = object()  # thread-local sentinel (never crosses a process boundary)
_LATENCY_EMA = 0.1  # weight of the newest frame in the per-camera latency average


@dataclass(slots=True)
class _Uploaded:
    batch: Batch
    model: ModelBundle
    images: list[torch.Tensor]  # (H_i, W_i, 3) uint8 on the device (CPU: already resized, see _upload)
    event: Any  # torch.cuda.Event when the upload is done, None on CPU
    arena: Arena
    infos: list[LetterboxInfo] | None = None  # CPU: the letterbox geometry of the original frames (or their rois)
    previews: list[np.ndarray | None] | None = None  # frames for drawing sinks, copied before the arena is reused
    windows: list[Window | None] | None = None  # the part of each frame the model sees (a camera's roi)


@dataclass(slots=True)
class _Retire:
    """A camera removed by a reload: follows the batches gathered before, so that the post thread
    closes its control block only after counting their results."""

    reader: RingReader


@dataclass(slots=True)
class _Inferred:
    batch: Batch
    model: ModelBundle
    pred: torch.Tensor  # (N, 4 + nc + 32, A)
    proto: torch.Tensor  # (N, 32, h/4, w/4)
    infos: list[LetterboxInfo]
    event: Any  # CUDA: recorded after the backend call (timing-enabled), None on CPU
    start: Any = None  # CUDA: recorded before letterbox, to time the device work
    previews: list[np.ndarray | None] | None = None
    windows: list[Window | None] | None = None


class DeviceStage:
    """Runs batches from camera rings through ``backend`` and emits one ``FrameResult`` per frame."""

    def __init__(self, *, settings: DeviceSettings, backend: Backend, readers: Sequence[RingReader],
                 emit: Callable[[FrameResult | FramePreview], None], commands: Any = None,
                 notify: Callable[[tuple[str, Any]], None] | None = None,
                 routes: dict[str, int] | None = None, rois: Mapping[str, Roi] | None = None) -> None:
        self.s = settings
        self.routes = routes  # camera id -> event worker, updated by attach commands (read by emit)
        self.rois = dict(rois or {})  # camera id -> the part of its frames the model sees (fractions)
        # config reloads: ("attach", camera id, shm prefix, event worker | None, roi | None) | ("detach", camera id)
        # | ("model", DeviceSettings); from a preview sink: ("watch", camera ids)
        self.commands = commands
        self.watched: frozenset[str] = frozenset()  # cameras a preview sink shows now
        self._next_preview: dict[str, float] = {}  # camera id -> monotonic time its next preview is due
        # ("names", names) then ("model_ready", (description, seconds to swap)) | ("model_error", line)
        self.notify = notify or (lambda msg: None)
        self.device = backend.device
        self.cuda = self.device.type == "cuda"
        self.model = bundle_model(settings, backend)
        self._loading: threading.Thread | None = None
        self._loaded: ModelBundle | BaseException | None = None
        self.readers = {r.camera_id: r for r in readers}
        self.batcher = Batcher(readers=readers, policy=settings.batch)
        self.emit = emit
        self._in_flight = 0  # batches gathered and not yet post-processed
        self._flight_lock = threading.Condition()
        self._pool: queue.Queue[Arena] = queue.Queue()
        for _ in range(settings.depth + 2):
            self._pool.put(Arena(allocate=self._host_buffer))
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._stop = threading.Event()
        # Credits, not only a queue bound: a batch is gathered only once there is room for it, so its
        # frames are taken as late as possible (a full queue would hold one more, older batch).
        self._credits = threading.Semaphore(settings.depth)
        self.batches = 0
        self._stats_lock = threading.Lock()
        self._batch_sizes: list[int] = []
        self._latency: dict[str, list[float]] = {"infer": [], "postprocess": []}

    @property
    def backend(self) -> Backend:
        return self.model.backend

    @property
    def size(self) -> tuple[int, int]:
        return self.model.size

    @property
    def names(self) -> tuple[str, ...]:
        return self.model.names

    def _host_buffer(self, nbytes: int) -> np.ndarray:
        # Pinned (page-locked) memory lets the upload run asynchronously on its own stream.
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.cuda).numpy()

    def warmup(self, model: ModelBundle | None = None) -> None:
        """One throw-away batch per batch size the stage can form (CUDA: lazy init, cuDNN algorithm
        choice and, with cuda_graph, every graph captured now rather than mid-stream)."""
        model = model or self.model
        h, w = model.size
        sizes = range(1, self.s.batch.max_batch + 1) if self.cuda else (1,)
        for n in sizes:
            model.backend(torch.zeros((n, 3, h, w), device=self.device))
        if self.cuda:
            torch.cuda.synchronize(self.device)

    # ---------------------------------------------------------------------- model swap (reload)

    def _load(self, settings: DeviceSettings) -> None:
        """Loader thread: the new model, loaded while the old one keeps inferring."""
        try:
            backend = settings.load_backend()
            if backend.device != self.device:
                raise ConfigError("model.device", f"the new model loaded on {backend.device}, the running one is "
                                                  f"on {self.device}: changing devices needs a restart")
            self._loaded = bundle_model(settings, backend)
        except BaseException as e:  # noqa: BLE001 - reported by the gather thread, the old model runs on
            self._loaded = e

    def _swap_model(self) -> None:
        """Gather thread, once the loader is done: drain the batches in flight, warm the new model
        up (alone on the device: CUDA graph capture must not race other work), then take it."""
        if self._loading is None or self._loading.is_alive():
            return
        self._loading, loaded, self._loaded = None, self._loaded, None
        try:
            if isinstance(loaded, BaseException):
                raise loaded
            assert loaded is not None
            with self._flight_lock:
                self._flight_lock.wait_for(lambda: self._in_flight == 0 or self._error is not None)
            t0 = time.perf_counter()
            self.warmup(loaded)
            self.model = loaded
            self.notify(("names", loaded.names))
        except SegpipeError as e:
            self.notify(("model_error", str(e).splitlines()[0]))
        except Exception as e:  # noqa: BLE001 - a model that fails to load must not take the stream down
            self.notify(("model_error", f"{type(e).__name__}: {e}".splitlines()[0]))
        else:
            self.notify(("model_ready", (f"{loaded.backend!r} input {loaded.size[1]}x{loaded.size[0]} (WxH)",
                                         time.perf_counter() - t0)))

    # ------------------------------------------------------------------------------- threads

    def run(self, stop: threading.Event | Any, *, report: Callable[[StageStats], None] | None = None,
            report_every_s: float = 1.0) -> None:
        """Gather, infer and emit until ``stop`` is set, then finish every batch already gathered.
        ``report`` gets this stage's ``StageStats`` every ``report_every_s`` and at the end.
        Re-raises the first error any thread hit (after all threads have ended)."""
        q_up: queue.Queue[Any] = queue.Queue()
        q_inf: queue.Queue[Any] = queue.Queue(self.s.depth)
        streams = [torch.cuda.Stream(self.device) if self.cuda else None for _ in range(3)]
        threads = [
            threading.Thread(target=self._gather_loop, args=(stop, q_up, streams[0]), name="gather"),
            threading.Thread(target=self._stage, args=(self._infer, q_up, q_inf, streams[1]), name="infer"),
            threading.Thread(target=self._stage, args=(self._post, q_inf, None, streams[2]), name="post"),
        ]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(report_every_s)
                if report is not None and t.is_alive():
                    report(self.take_stats())
        if report is not None:
            report(self.take_stats())
        if self._error is not None:
            raise self._error

    def take_stats(self) -> StageStats:
        """Batch sizes and step times (seconds) since the previous call."""
        with self._stats_lock:
            sizes, self._batch_sizes = tuple(self._batch_sizes), []
            lat = {k: tuple(v) for k, v in self._latency.items() if v}
            for v in self._latency.values():
                v.clear()
        return StageStats(stage="device", batch_sizes=sizes, stage_latency=lat, engine_loaded=True)

    def _observe(self, step: str, seconds: float) -> None:
        with self._stats_lock:
            self._latency[step].append(max(seconds, 0.0))

    def _fail(self, e: BaseException) -> None:
        with self._error_lock:
            if self._error is None:
                self._error = e
        self._stop.set()

    def _gather_loop(self, stop: Any, out: queue.Queue[Any], stream: Any) -> None:
        try:
            with _on_stream(stream):
                while not stop.is_set() and not self._stop.is_set():
                    self._apply_commands(out)
                    self._swap_model()
                    if not self._credits.acquire(timeout=0.05):
                        continue
                    if not self._gather_one(stop, out, stream):
                        self._credits.release()
                # Stopped by the supervisor (decoders already stopped): frames still waiting in the
                # rings were decoded before the stop, so they are inferred too (the last frames of a
                # file). With stop set, each gather is a single scan without waiting.
                while not self._stop.is_set():
                    if not self._credits.acquire(timeout=0.05):
                        continue
                    if not self._gather_one(stop, out, stream):
                        self._credits.release()
                        break
        except BaseException as e:  # noqa: BLE001 - first error wins, reported by run()
            self._fail(e)
        finally:
            out.put(_STOP)

    def _apply_commands(self, out: queue.Queue[Any]) -> None:
        """Cameras added and removed by a config reload, between two gathers (this thread owns the batcher)."""
        while self.commands is not None:
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "attach":
                if cmd[3] is not None and self.routes is not None:
                    self.routes[cmd[1]] = cmd[3]  # before its first frame can be gathered
                if cmd[4] is None:
                    self.rois.pop(cmd[1], None)
                else:
                    self.rois[cmd[1]] = cmd[4]
                reader = RingReader(cmd[2], camera_id=cmd[1])
                self.readers[reader.camera_id] = reader
                self.batcher.add_reader(reader)
            elif cmd[0] == "detach":
                gone = self.batcher.remove_reader(cmd[1])
                if gone is not None:
                    gone.release_frames()  # only this thread reads frames: unmap the ring now
                    out.put(_Retire(gone))
            elif cmd[0] == "watch":
                self.watched = frozenset(cmd[1])
            elif cmd[0] == "model" and self._loading is None:
                self._loading = threading.Thread(target=self._load, args=(cmd[1],), name="model-loader", daemon=True)
                self._loading.start()
            elif cmd[0] == "model":  # one load at a time: this one again once the current one is in
                self.commands.put(cmd)
                return

    def _gather_one(self, stop: Any, out: queue.Queue[Any], stream: Any) -> bool:
        """Gather one batch and start its upload; False when there was nothing to gather."""
        arena = self._pool.get()
        # with reloads possible, come back for commands at least every 0.1 s
        batch = self.batcher.gather(arena, stop, idle_s=None if self.commands is None else 0.1)
        if batch is None:
            self._pool.put(arena)
            return False
        with self._flight_lock:
            self._in_flight += 1
        out.put(self._upload(batch, arena, stream))  # with self.model: this thread is the one that swaps it
        return True

    def _stage(self, fn: Callable[[Any], Any], inq: queue.Queue[Any], out: queue.Queue[Any] | None,
               stream: Any) -> None:
        """The stage skeleton: process until STOP; after an error anywhere, only drain."""
        with _on_stream(stream):
            while True:
                item = inq.get()
                if item is _STOP:
                    break
                if isinstance(item, _Retire):
                    if out is not None:
                        out.put(item)
                    else:
                        self._retire(item.reader)
                    continue
                if isinstance(item, _Uploaded):
                    self._credits.release()  # it left the queue: the next batch may be gathered
                if self._error is not None:
                    self._release(item)
                    continue
                try:
                    result = fn(item)
                except BaseException as e:  # noqa: BLE001
                    self._fail(e)
                    self._release(item)
                    continue
                if out is not None:
                    out.put(result)
                else:
                    self._landed()
        if out is not None:
            out.put(_STOP)

    def _release(self, item: Any) -> None:
        if isinstance(item, _Uploaded):
            if item.event is not None:
                item.event.synchronize()  # the upload may still be reading the staging arena
            self._pool.put(item.arena)
        self._landed()

    def _landed(self) -> None:
        """A batch left the pipeline (published, or dropped after an error)."""
        with self._flight_lock:
            self._in_flight -= 1
            self._flight_lock.notify_all()

    # --------------------------------------------------------------------------- the work

    def _windows(self, batch: Batch) -> list[Window | None] | None:
        """Each frame's roi in pixels (None: the whole frame); None when no camera of the batch has one."""
        if not self.rois:
            return None
        out = [roi_window(self.rois.get(f.camera_id), f.image.shape[1], f.image.shape[0]) for f in batch.frames]
        return out if any(w is not None for w in out) else None

    def _upload(self, batch: Batch, arena: Arena, stream: Any, model: ModelBundle | None = None) -> _Uploaded:
        model = model or self.model
        windows = self._windows(batch)
        if not self.cuda:
            return self._resize_on_host(batch, arena, model, windows)
        images = [torch.from_numpy(f.image).to(self.device, non_blocking=True) for f in batch.frames]
        if windows is not None:  # whole frames are uploaded (pinned, contiguous); the roi is a view of one
            images = [im if w is None else im[w[1]:w[3], w[0]:w[2]] for im, w in zip(images, windows, strict=True)]
        event = torch.cuda.Event()
        event.record(stream)
        return _Uploaded(batch=batch, model=model, images=images, event=event, arena=arena,
                         previews=self._previews(batch), windows=windows)

    def _resize_on_host(self, batch: Batch, arena: Arena, model: ModelBundle,
                        windows: list[Window | None] | None = None) -> _Uploaded:
        """CPU only: resize each frame to its letterboxed size here, in uint8 with cv2 (INTER_LINEAR,
        the interpolation engines.ops.letterbox reproduces in float), so the inference thread only
        pads and normalises. On a CPU the float resize of a full frame costs as much as a third of the
        model (4 x 720p -> 320: 150-300 ms vs 340-800 ms for yolov8n-seg on one thread, measured with
        benchmarks/pipeline.py on 2 cores) and here it overlaps with the previous batch's inference."""
        stride = model.backend.meta.stride
        seen = [f.image if w is None else f.image[w[1]:w[3], w[0]:w[2]]
                for f, w in zip(batch.frames, windows or [None] * len(batch.frames), strict=True)]
        infos = [letterbox_geometry(im.shape[:2], size=model.size, stride=stride) for im in seen]
        images = []
        for im, info in zip(seen, infos, strict=True):
            if info.unpad_shape != info.orig_shape:
                h, w = info.unpad_shape
                im = cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR)
            images.append(torch.from_numpy(im))
        return _Uploaded(batch=batch, model=model, images=images, event=None, arena=arena, infos=infos,
                         previews=self._previews(batch), windows=windows)

    def _previews(self, batch: Batch) -> list[np.ndarray | None] | None:
        """Copies of the frames for drawing sinks (the staging arena is reused once inference starts):
        every frame for a video sink, a watched camera's at most ``fps`` a second for a preview sink."""
        if self.s.preview_width is not None:
            return [shrunk(f.image, self.s.preview_width) for f in batch.frames]
        if self.s.preview_watch is None or not self.watched:
            return None
        width, fps = self.s.preview_watch
        now = time.monotonic()
        out: list[np.ndarray | None] = []
        for f in batch.frames:
            # 10 % early: frames come at the camera's own rate, and waiting for the next would halve ours
            if f.camera_id in self.watched and now >= self._next_preview.get(f.camera_id, 0.0):
                self._next_preview[f.camera_id] = now + 0.9 / fps
                out.append(shrunk(f.image, width))
            else:
                out.append(None)
        return out if any(p is not None for p in out) else None

    def _infer(self, up: _Uploaded) -> _Inferred:
        t0 = time.perf_counter()
        start = None
        if up.event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(up.event)
            for img in up.images:  # made on the upload stream, read here: keep the allocator off them
                img.record_stream(stream)
            start = torch.cuda.Event(enable_timing=True)
            start.record(stream)
        model = up.model
        x, infos = letterbox(up.images, size=model.size, stride=model.backend.meta.stride)
        if up.infos is not None:  # pre-resized on the host: map results to the original frames
            assert [i.new_shape for i in infos] == [i.new_shape for i in up.infos]
            infos = up.infos
        pred, proto = model.backend(x)
        event = None
        if up.event is not None:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            up.event.synchronize()  # the upload is done long before inference: the arena is free
        else:
            self._observe("infer", time.perf_counter() - t0)  # CPU: the work is done when the call returns
        self._pool.put(up.arena)  # on CPU letterbox has copied the pixels out of it
        return _Inferred(batch=up.batch, model=model, pred=pred, proto=proto, infos=infos, event=event, start=start,
                         previews=up.previews, windows=up.windows)

    def _post(self, inf: _Inferred) -> None:
        t0 = time.perf_counter()
        if inf.event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(inf.event)
            inf.pred.record_stream(stream)  # made on the compute stream, read on this one
            inf.proto.record_stream(stream)
        model = inf.model
        rows = select_rows(inf.pred, model.settings.nms, nc=len(model.names),  # syncs: data-dependent shapes
                           nms_free=model.backend.meta.nms_free)
        if inf.start is not None:
            self._observe("infer", inf.start.elapsed_time(inf.event) / 1000.0)
        per_frame = [frame_detections(r, p, info, masks=model.settings.masks,
                                      resolution=model.settings.mask_resolution,
                                      threshold=model.settings.mask_threshold)
                     for r, p, info in zip(rows, inf.proto, inf.infos, strict=True)]
        host = download_detections(per_frame)
        now = time.time()
        previews: list[np.ndarray | None] = list(inf.previews) if inf.previews else [None] * len(host)
        windows: list[Window | None] = list(inf.windows) if inf.windows else [None] * len(host)
        for frame, dets, preview, window in zip(inf.batch.frames, host, previews, windows, strict=True):
            if window is not None:  # found in the roi: moved to frame pixels
                dets = shift_detections(dets, window[0], window[1])
            result = FrameResult(camera_id=frame.camera_id, seq=frame.seq, pts=frame.pts,
                                 capture_ts=frame.capture_ts, infer_ts=now, frame_size=frame.size,
                                 model=model.name, roi=window,
                                 detections=encode_detections(dets, frame.image.shape[:2], names=model.names,
                                                              masks=model.settings.masks))
            self.emit(result if preview is None else FramePreview(result=result, image=preview))
            self._count(result)
        self.batches += 1
        self._observe("postprocess", time.perf_counter() - t0)
        with self._stats_lock:
            self._batch_sizes.append(len(inf.batch.frames))

    def _retire(self, reader: RingReader) -> None:
        if self.readers.get(reader.camera_id) is reader:  # not if the camera came back with a new ring
            del self.readers[reader.camera_id]
        reader.close()

    def _count(self, result: FrameResult) -> None:
        reader = self.readers.get(result.camera_id)
        if reader is None:  # removed by a reload while this frame was in flight
            return
        c = reader.control
        c.add("inferred")
        latency = (result.infer_ts - result.capture_ts) * 1000.0
        old = c.get("latency_ms")
        c.set("latency_ms", latency if old == 0 else (1 - _LATENCY_EMA) * old + _LATENCY_EMA * latency)

    def close(self) -> None:
        self.batcher.close()


def _on_stream(stream: Any) -> Any:
    """Make ``stream`` this thread's current CUDA stream (a no-op context on CPU)."""
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


def _route(queues: Sequence[Any], route: Mapping[str, int]) -> Callable[[FrameResult | FramePreview], None]:
    """Put each result on its camera's queue: one queue takes every camera; N queues are the event
    workers', ``route`` says whose each camera is (kept up to date by attach commands)."""
    if len(queues) == 1:
        return queues[0].put

    def put(item: FrameResult | FramePreview) -> None:
        camera_id = item.result.camera_id if isinstance(item, FramePreview) else item.camera_id
        queues[route[camera_id]].put(item)

    return put


def device_main(settings: DeviceSettings, cameras: Sequence[tuple[str, str, Roi | None]], results: Any, stop: Any,
                conn: Connection, commands: Any = None, route: Mapping[str, int] | None = None) -> None:
    """Process target of the device stage.

    cameras: (camera id, shared-memory prefix, roi or None) of each camera. results: the sink stage's queue, or the event
    workers' queues (a list; ``route``: camera id -> index), where FrameResults are put (the
    supervisor adds STOP once this process has exited). stop: a multiprocessing
    Event; once set, batches already gathered are finished and the process ends. conn: one
    ``("names", class names)`` then ``("ready", description)`` after warm-up, ``("stats", StageStats)``
    about every second, or
    ``("error", one line)`` before a non-zero exit, and after a ``("model", DeviceSettings)`` command
    ``("names", ...)`` and ``("model_ready", (description, seconds))``, or ``("model_error", one line)``. commands: optional queue of
    config reload changes, ``("attach", camera id, prefix, worker index | None, roi | None)``, ``("detach", camera id)`` or ``("model",
    DeviceSettings)`` (loaded beside the running model, swapped in between two batches).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor owns shutdown
    stage = None
    code = 0
    lock = threading.Lock()  # the stats reports and the gather thread's model news share the pipe

    def send(msg: tuple[str, Any]) -> None:
        with lock:
            conn.send(msg)

    try:
        backend = settings.load_backend()
        readers = [RingReader(prefix, camera_id=cid) for cid, prefix, _ in cameras]
        rois = {cid: roi for cid, _, roi in cameras if roi is not None}
        queues = results if isinstance(results, list) else [results]
        routes = dict(route or {})
        stage = DeviceStage(settings=settings, backend=backend, readers=readers, emit=_route(queues, routes),
                            commands=commands, notify=send, routes=routes, rois=rois)
        stage.warmup()
        send(("names", stage.names))
        send(("ready", f"{backend!r} input {stage.size[1]}x{stage.size[0]} (WxH)"))
        stage.run(stop, report=lambda stats: send(("stats", stats)))
    except SegpipeError as e:
        conn.send(("error", str(e).splitlines()[0]))
        code = 1
    except BaseException as e:
        conn.send(("error", f"device stage crashed: {type(e).__name__}: {e}"))
        raise
    finally:
        if stage is not None:
            stage.close()
        conn.close()
    # Every result is handed to the queue's feeder thread: wait until it is in the pipe, then leave
    # without the interpreter's teardown (torch's takes seconds and there is nothing left to save).
    for q in results if isinstance(results, list) else [results]:
        q.close()
        q.join_thread()
    os._exit(code)
