"""Annotated video sink: H.264 MP4 segments per camera (PyAV), masks, boxes and labels drawn in.

Optional and expensive (an encoder per camera), so its queue is short and drops the oldest frame.
Frames are drawn on the envelope's image when the runtime forwards it, otherwise on a dark canvas of
the frame's size (the masks alone). Timestamps follow the stream's pts (or the capture time), so
the file plays at real speed however many frames were dropped.

Files are ``<dir>/<camera>-<YYYYmmdd-HHMMSS>.mp4`` (UTC start time). A new one starts every
``segment_s`` seconds of video, on a frame-size change, and when the stream's time goes back (a
restarted decoder starts its pts again). With ``clips`` set, only event clips are written instead
(``pipeline.sinks.clips``: pre-roll, triggers, post_s). ``keep`` bounds the files per camera and
``max_total_mb`` the folder, so weeks of recording do not fill the disk. The MP4s are fragmented (a fragment per keyframe, forced every ``keyframe_s``
of stream time) and flushed per packet: a killed process leaves a file that plays up to its last
fragment instead of one with no index.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import av
import numpy as np

from engines.errors import SinkError
from pipeline.messages import FrameResult
from pipeline.sinks.base import REMOVED, DropPolicy, Envelope, ThreadedSink, policy_for
from pipeline.sinks.clips import BACK_S, ClipGate
from pipeline.sinks.config import ClipConfig, VideoSinkConfig
from pipeline.sinks.draw import draw
from pipeline.sinks.encoding import add_h264, annotated, encode_frame, encoded_size, finish, frame_canvas

log = logging.getLogger(__name__)
_MAX_REASONS = 1000  # triggers listed in a clip's sidecar
_FILE = re.compile(r"(.+)-(\d{8}-\d{6})(?:-(\d+))?\.mp4")  # <camera>-<UTC start>[-n].mp4
_MUXER = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _safe_name(camera_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", camera_id)


@dataclass(slots=True)
class _Writer:
    container: av.container.OutputContainer
    stream: av.video.stream.VideoStream
    path: Path
    camera_id: str
    size: tuple[int, int]  # frame (width, height) this file was opened for
    t0: float  # stream time (s) of the file's first frame
    last_ms: int = -1
    last_key_ms: int | None = None
    wall0: float = 0.0  # capture time (Unix s) of the first frame
    frames: int = 0
    reasons: list[dict[str, Any]] | None = None  # a clip's triggers, for its sidecar


class VideoSink(ThreadedSink):
    """Encode each camera's annotated frames into its own MP4 in ``directory``."""

    def __init__(self, *, name: str, directory: Path, policy: DropPolicy, fps: float = 15.0,
                 codec: str = "libx264", crf: int = 23, preset: str = "veryfast",
                 max_width: int | None = 1280, segment_s: float | None = 600.0, keep: int | None = None,
                 keyframe_s: float = 2.0, clips: ClipConfig | None = None, max_bytes: int | None = None) -> None:
        super().__init__(name=name, policy=policy, batch_size=8)
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            av.codec.Codec(codec, "w")
        except OSError as e:
            raise SinkError(f"video sink {name!r}: cannot create {self.directory}: {e.strerror}") from None
        except Exception:
            raise SinkError(f"video sink {name!r}: encoder {codec!r} is not available in this PyAV build") from None
        self.fps, self.codec, self.crf, self.preset, self.max_width = fps, codec, crf, preset, max_width
        self.segment_s, self.keep, self.keyframe_ms = segment_s, keep, int(round(keyframe_s * 1000))
        self.max_bytes = max_bytes
        self.clips = None if clips is None else ClipGate(clips)
        if clips is not None:
            self.segment_s = None  # clips are cut by their own triggers and max_s
        self._writers: dict[str, _Writer] = {}
        self.files: list[Path] = []  # written by this sink and not deleted, oldest first
        self.start()

    @classmethod
    def from_config(cls, cfg: VideoSinkConfig) -> VideoSink:
        return cls(name=cfg.sink_name, directory=cfg.dir, fps=cfg.fps, codec=cfg.codec, crf=cfg.crf,
                   preset=cfg.preset, max_width=cfg.max_width, segment_s=cfg.segment_s, keep=cfg.keep,
                   keyframe_s=cfg.keyframe_s, clips=cfg.clips,
                   max_bytes=None if cfg.max_total_mb is None else int(cfg.max_total_mb * 2**20), policy=policy_for("video", maxsize=cfg.queue_size, overflow=cfg.on_full))

    def _open(self, camera_id: str, size: tuple[int, int], t0: float, wall_ts: float) -> _Writer:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(wall_ts))  # pts is stream time: name by the clock
        path = self.directory / f"{_safe_name(camera_id)}-{stamp}.mp4"
        n = 1
        while path.exists() or path in self.files:
            path, n = self.directory / f"{_safe_name(camera_id)}-{stamp}-{n}.mp4", n + 1
        container = av.open(str(path), "w", options=_MUXER)
        stream = add_h264(container, self.codec, encoded_size(size, self.max_width), self.fps,
                          {"crf": str(self.crf), "preset": self.preset})
        self.files.append(path)
        self._prune(camera_id, path)
        return _Writer(container=container, stream=stream, path=path, size=size, t0=t0, wall0=wall_ts,
                       camera_id=camera_id)

    def _prune(self, camera_id: str, current: Path) -> None:
        """Delete the oldest files in the directory: this camera's beyond ``keep``, then anyone's
        (named like this sink's files) while they take more than ``max_bytes``. Never an open one."""
        if self.keep is None and self.max_bytes is None:
            return
        safe = re.escape(_safe_name(camera_id))
        open_files = {w.path for w in self._writers.values()} | {current}
        found = []  # ((stamp, n), path, is this camera's)
        for p in self.directory.iterdir():
            m = _FILE.fullmatch(p.name)
            if m and p not in open_files:
                found.append(((m[2], int(m[3] or 0)), p, re.fullmatch(safe, m[1]) is not None))
        found.sort(key=lambda f: f[0])
        doomed: list[Path] = []
        if self.keep is not None:
            mine = [p for _, p, own in found if own]
            doomed += mine[:max(len(mine) + 1 - self.keep, 0)]
        if self.max_bytes is not None:
            sizes = {p: _size(p) for _, p, _ in found}
            total = sum(sizes.values()) + sum(_size(p) for p in open_files)
            total -= sum(sizes[p] for p in doomed)
            for _, p, _ in found:  # oldest first, whichever camera
                if total <= self.max_bytes:
                    break
                if p not in doomed:
                    doomed.append(p)
                    total -= sizes[p]
        for p in doomed:
            try:
                p.with_suffix(".json").unlink(missing_ok=True)  # a clip's sidecar goes with it
                p.unlink()
            except OSError as e:  # already gone, or not ours to delete: keep recording
                log.warning("video sink %s: cannot delete old file %s: %s", self.name, p, e.strerror)
                continue
            if p in self.files:
                self.files.remove(p)
            limits = [f"keep {self.keep} per camera"] if self.keep is not None else []
            limits += [f"max {self.max_bytes // 2**20} MB"] if self.max_bytes is not None else []
            log.info("video sink %s: deleted %s (%s)", self.name, p.name, ", ".join(limits))

    def _close_writer(self, writer: _Writer) -> None:
        finish(writer.container, writer.stream)
        if writer.reasons is not None:
            self._write_sidecar(writer)

    def _write_sidecar(self, writer: _Writer) -> None:
        """``<clip>.json`` beside a clip: camera, times, frames and what triggered it (first 1,000)."""
        duration = max(writer.last_ms, 0) / 1000
        meta = {"camera": writer.camera_id, "file": writer.path.name, "start_ts": round(writer.wall0, 3),
                "end_ts": round(writer.wall0 + duration, 3), "stream_start_s": round(writer.t0, 3),
                "duration_s": duration, "frames": writer.frames, "triggers": writer.reasons}
        tmp = writer.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        tmp.replace(writer.path.with_suffix(".json"))  # whole or absent, never half-written

    def cameras_removed(self, camera_ids: Collection[str]) -> None:
        """Close the files (and drop the pre-roll) of cameras a reload removed, once their queued frames
        are written: else each held its file open, its encoder and its memory until segpipe stopped."""
        self.queue_removed(camera_ids)

    def write_batch(self, envs: list[Envelope]) -> None:
        for env in envs:
            if env.kind == REMOVED:
                self._forget(env.camera_id)
                continue
            if not isinstance(env.item, FrameResult):
                continue
            try:
                self._encode(env, env.item)
            except (av.FFmpegError, OSError, ValueError) as e:
                self.counters.error("encode")
                self.counters.dropped(env.camera_id, "write_error")
                log.warning("video sink %s: camera %s: %s", self.name, env.camera_id, e)

    def _encode(self, env: Envelope, result: FrameResult) -> None:
        t = result.pts if result.pts is not None else result.capture_ts
        size = cast(tuple[int, int], tuple(result.frame_size))  # a list would never equal _Writer.size
        cam = env.camera_id
        writer = self._writers.get(cam)
        # a clip's file ends where the clip gate ends it (a new frame size or stream time going back included)
        if self.clips is None and writer is not None and self._new_file(writer, size, t):
            self._close_writer(self._writers.pop(cam))
            writer = None
        dims = encoded_size(size, self.max_width)
        if self.clips is None:
            if writer is None:
                writer = self._writers[cam] = self._open(cam, size, t, result.capture_ts)
            self._put_frame(writer, cam, t, annotated(env, result, dims))
            return
        # held undrawn: most pre-roll frames are never written, and drawing costs as much as the JPEG
        step = self.clips.step(cam, t, frame_canvas(env, result, dims), result)
        scale = dims[0] / result.frame_size[0]
        if step.close and writer is not None:
            self._close_writer(self._writers.pop(cam))
            writer = None
        for ft, picture, res in step.frames:
            if writer is None:
                writer = self._writers[cam] = self._open(cam, size, ft, res.capture_ts)
                writer.reasons = []
                log.info("video sink %s: camera %s: clip %s", self.name, cam, writer.path.name)
            assert writer.reasons is not None
            if len(writer.reasons) < _MAX_REASONS:
                writer.reasons += [{"t": round(ft - writer.t0, 3), **r} for r in self.clips.reasons(res)]
            self._put_frame(writer, cam, ft, draw(picture, res, scale=scale))

    def _put_frame(self, writer: _Writer, camera_id: str, t: float, canvas: np.ndarray) -> None:
        ms = int(round((t - writer.t0) * 1000))
        if ms <= writer.last_ms:  # out-of-order or repeated time: the muxer would reject it
            self.counters.dropped(camera_id, "timestamp")
            return
        key = writer.last_key_ms is None or ms - writer.last_key_ms >= self.keyframe_ms
        encode_frame(writer.container, writer.stream, canvas, ms, key=key)  # a key frame starts a fragment
        if key:
            writer.last_key_ms = ms
        writer.last_ms = ms
        writer.frames += 1
        self.counters.sent(camera_id)

    def _new_file(self, writer: _Writer, size: tuple[int, int], t: float) -> bool:
        """Whether the frame at stream time ``t`` of ``size`` must start a new file."""
        elapsed = t - writer.t0
        return (size != writer.size or elapsed < writer.last_ms / 1000 - BACK_S
                or (self.segment_s is not None and elapsed >= self.segment_s))

    def _forget(self, camera_id: str) -> None:
        """Let go of a camera a reload removed: its clip state, and its file closed."""
        if self.clips is not None:
            self.clips.forget(camera_id)
        self._close_camera(camera_id)

    def _close_camera(self, camera_id: str) -> None:
        """Close the camera's open file, if any; a failure is counted and logged (the file is let go)."""
        writer = self._writers.pop(camera_id, None)
        if writer is None:
            return
        try:
            self._close_writer(writer)
        except (av.FFmpegError, OSError) as e:
            self.counters.error("close")
            log.warning("video sink %s: closing %s failed: %s", self.name, camera_id, e)

    def close_resources(self) -> None:
        for camera_id in list(self._writers):
            self._close_camera(camera_id)
