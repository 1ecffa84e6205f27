"""Restream sink: each camera's annotated frames pushed live to a media server over RTSP or RTMP.

A VMS, a player (VLC, ffplay) or a recorder then pulls ``rtsp://server/segpipe/<camera>`` from the
server (mediamtx, nginx-rtmp, Wowza...), which serves any number of viewers: segpipe encodes once per
camera. Frames are drawn as the video sink draws them (masks, boxes, labels, track ids, zones and lines),
encoded with x264 ``tune=zerolatency`` (no B-frames, no look-ahead) and a keyframe every ``keyframe_s``
of stream time, so a viewer that joins sees a picture within that. Timestamps follow the stream's pts,
so dropped frames do not speed the video up.

A live stream drops rather than queues: the sink's queue is a few frames (oldest dropped). A server that
refuses or goes away costs only that camera's frames until it is back: the stream is reopened after a
back-off (1 s doubling to ``backoff_max_s``), frames meanwhile are dropped and counted as
``disconnected``, and the outage is logged once and its end once. A new frame size restarts the stream.
The URL may carry a password: only its redacted form is ever logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import cast

import av

from engines.errors import SinkError
from engines.urls import redact_url
from pipeline.messages import FrameResult
from pipeline.sinks.base import REMOVED, DropPolicy, Envelope, ThreadedSink, policy_for
from pipeline.sinks.config import RestreamSinkConfig
from pipeline.sinks.encoding import add_h264, annotated, encode_frame, encoded_size, finish

log = logging.getLogger(__name__)

_FORMATS = {"rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "flv", "rtmps": "flv"}
_IO_TIMEOUT_US = "5000000"  # socket I/O: a server that stops reading fails the stream after 5 s


@dataclass(slots=True)
class _Live:
    """One camera's stream to the server: open, or down until ``retry_at``."""

    url: str
    container: av.container.OutputContainer | None = None
    stream: av.video.stream.VideoStream | None = None
    size: tuple[int, int] | None = None  # frame (width, height) the stream was opened for
    t0: float = 0.0  # stream time (s) of its first frame
    last_ms: int = -1
    last_key_ms: int | None = None
    retry_at: float = 0.0  # monotonic
    backoff: float = 0.0
    down: bool = False


class RestreamSink(ThreadedSink):
    """Push each camera's annotated frames to ``url`` (``{camera}`` replaced by its id), live."""

    def __init__(self, *, name: str, url: str, policy: DropPolicy, fps: float = 15.0, codec: str = "libx264",
                 preset: str = "veryfast", crf: int = 26, max_width: int | None = 1280, keyframe_s: float = 1.0,
                 backoff_max_s: float = 10.0) -> None:
        super().__init__(name=name, policy=policy, batch_size=8)
        try:
            av.codec.Codec(codec, "w")
        except Exception:
            raise SinkError(f"restream sink {name!r}: encoder {codec!r} is not available in this PyAV build") from None
        self.url, self.redacted_url = url, redact_url(url)
        self.format = _FORMATS[url.split("://", 1)[0]]
        self.fps, self.codec, self.max_width = fps, codec, max_width
        self.options = {"crf": str(crf), "preset": preset, "tune": "zerolatency"}
        self.keyframe_ms, self.backoff_max_s = int(round(keyframe_s * 1000)), backoff_max_s
        self._live: dict[str, _Live] = {}
        self.start()

    @classmethod
    def from_config(cls, cfg: RestreamSinkConfig) -> RestreamSink:
        return cls(name=cfg.sink_name, url=cfg.url, fps=cfg.fps, codec=cfg.codec, preset=cfg.preset, crf=cfg.crf,
                   max_width=cfg.max_width, keyframe_s=cfg.keyframe_s, backoff_max_s=cfg.backoff_max_s,
                   policy=policy_for("restream", maxsize=cfg.queue_size, overflow=cfg.on_full))

    def cameras_removed(self, camera_ids: Collection[str]) -> None:
        """End the streams of cameras a reload removed, once their queued frames are pushed: else each
        stayed published on the server, a frozen picture to its viewers, until segpipe stopped."""
        self.queue_removed(camera_ids)

    def write_batch(self, envs: list[Envelope]) -> None:
        for env in envs:
            if env.kind == REMOVED:
                live = self._live.pop(env.camera_id, None)
                if live is not None:
                    self._close(live)
            elif isinstance(env.item, FrameResult):
                self._push(env, env.item)

    def _push(self, env: Envelope, result: FrameResult) -> None:
        cam = env.camera_id
        live = self._live.get(cam)
        if live is None:
            live = self._live[cam] = _Live(url=self.url.replace("{camera}", cam))
        if live.down and time.monotonic() < live.retry_at:
            self.counters.dropped(cam, "disconnected")
            return
        size = cast(tuple[int, int], tuple(result.frame_size))
        t = result.pts if result.pts is not None else result.capture_ts
        if live.container is not None and (size != live.size or t < live.t0 + live.last_ms / 1000):
            self._close(live)  # a new picture size, or the camera's clock went back: a new stream
        try:
            if live.container is None:
                self._open(live, size, t)
            assert live.container is not None and live.stream is not None
            ms = int(round((t - live.t0) * 1000))
            if ms <= live.last_ms:
                self.counters.dropped(cam, "timestamp")
                return
            key = live.last_key_ms is None or ms - live.last_key_ms >= self.keyframe_ms
            encode_frame(live.container, live.stream, annotated(env, result, encoded_size(size, self.max_width)),
                         ms, key=key)
        except (av.FFmpegError, OSError) as e:
            self._lost(live, cam, e)
            return
        if key:
            live.last_key_ms = ms
        live.last_ms = ms
        self.counters.sent(cam)
        if live.down:
            live.down, live.backoff = False, 0.0
            log.info("restream sink %s: camera %s streaming to %s again", self.name, cam, redact_url(live.url))

    def _open(self, live: _Live, size: tuple[int, int], t: float) -> None:
        options = {"rtsp_transport": "tcp", "timeout": _IO_TIMEOUT_US} if self.format == "rtsp" else {}
        # the server is contacted when the first packet is written, not here
        live.container = av.open(live.url, "w", format=self.format, options=options)
        live.stream = add_h264(live.container, self.codec, encoded_size(size, self.max_width), self.fps, self.options)
        live.size, live.t0, live.last_ms, live.last_key_ms = size, t, -1, None

    def _close(self, live: _Live) -> None:
        container, stream, live.container, live.stream = live.container, live.stream, None, None
        if container is None or stream is None:
            return
        try:
            finish(container, stream)
        except (av.FFmpegError, OSError):  # the server is gone already: nothing left to tell it
            try:
                container.close()
            except (av.FFmpegError, OSError):
                pass

    def _lost(self, live: _Live, cam: str, e: Exception) -> None:
        """The server refused or went away: drop this frame, try again after the back-off."""
        self._close(live)
        self.counters.error("connection")
        self.counters.dropped(cam, "disconnected")
        live.backoff = min(max(live.backoff * 2, 1.0), self.backoff_max_s)
        live.retry_at = time.monotonic() + live.backoff
        if not live.down:
            shown = redact_url(live.url)
            detail = str(e).replace(live.url, shown)  # FFmpeg's errors name the URL, password and all
            log.warning("restream sink %s: camera %s: %s refused or went away (%s: %s); retrying, frames dropped "
                        "meanwhile", self.name, cam, shown, type(e).__name__, detail)
        live.down = True

    def close_resources(self) -> None:
        for live in self._live.values():
            self._close(live)
        self._live.clear()
