"""Decoder process: one per camera, PyAV in, shared-memory ring out. Imports pipeline.camera,
pipeline.picture, pipeline.shm, pipeline.messages, engines.frames and engines.mp4 only (never torch or cv2:
a decoder process starts in ~0.2 s).

Why a process per camera: FFmpeg can hang in a network read or crash on a broken stream; in its own
process that takes down one camera, which the supervisor restarts, never the pipeline.

The loop: open (RTSP over TCP by default, open/read timeouts) -> decode with FFmpeg's frame threads ->
sample to the camera's fps limit -> pace files at their own rate (optional) -> write the BGR frame
into the ring. Stream errors move the camera to RECONNECTING and retry with exponential back-off
plus jitter; a file that ends is ENDED (or starts again with ``loop``). A watchdog thread marks the
camera STALLED when no frame arrives for ``stall_timeout_s``; with ``frozen_timeout_s``, a picture that
has not changed in a single sampled pixel for that long (an IP camera whose encoder hung keeps sending
the same frame) is STALLED too, and its repeats are not sent to the model until it changes. The picture
check (``picture:``, on by default) looks at a small thumbnail of a frame every ``interval_s`` of stream
time and reports a frozen, blank, moved or blurred picture as the camera's ``picture`` (the camera stays LIVE and its
frames go on to the model: what to do about it is the user's call). The loop beats a heartbeat into the
control block; a decoder that stops beating is killed and restarted by the supervisor.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from engines.frames import as_shown
from engines.mp4 import unfinished_mp4
from pipeline.camera import STATE_CODES, Backoff, CameraStateMachine
from pipeline.messages import CameraState, CameraStatus, Picture
from pipeline.picture import PictureCheck, PictureSettings, sharpness, thumbnail
from pipeline.shm import RingWriter

if TYPE_CHECKING:
    from pipeline.config import CameraConfig

S = CameraState
_BEAT_STEP_S = 0.1  # longest sleep between heartbeats while waiting (back-off, pacing)
_TAKEN_POLL_S, _TAKEN_POLL_MAX_S = 0.002, 0.02  # lossless: shortest and longest poll for the take
_TAKEN_BACKOFF = 1 / 8  # lossless: poll after this fraction of the time waited so far
# A connection counts as good (the back-off starts again from its first step) once frames have flowed for
# this long: reset at the first frame, a source that gives one frame and drops (an HTTP snapshot URL, a
# camera rebooting in a loop) was reconnected every half second for ever
_STABLE_S = 10.0
_AVFMT_NOTIMESTAMPS = 0x0080  # libavformat/avformat.h: the format has no timestamps of its own
_AVFMT_TS_DISCONT = 0x0200  # libavformat/avformat.h: the format allows timestamp discontinuities (MPEG-TS, FLV)
# In such a file, a leap forward of more than this is a discontinuity, not a gap to wait through: ffmpeg's own
# threshold for them (-dts_delta_threshold)
_TS_DISCONT_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DecoderSettings:
    """What one decoder process needs, derived from its ``CameraConfig`` in ``from_config``."""

    camera_id: str
    url: str
    is_file: bool
    fps: float | None = None
    loop: bool = False
    realtime: bool = True
    lossless: bool = False
    transport: str = "tcp"
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    stall_timeout_s: float = 2.0
    frozen_timeout_s: float | None = None
    picture: PictureSettings | None = None  # None: the picture is not checked
    decode_threads: int = 0
    nice: int = 0
    backoff: Backoff = Backoff()
    max_restarts: int | None = None
    nslots: int = 4

    @classmethod
    def from_config(cls, cam: CameraConfig) -> DecoderSettings:
        r, pic = cam.reconnect, cam.picture
        picture = PictureSettings(interval_s=pic.interval_s, frozen_diff=pic.frozen_diff, frozen_s=pic.frozen_s,
                                  blank_std=pic.blank_std, blank_s=pic.blank_s, moved_match=pic.moved_match,
                                  moved_s=pic.moved_s, blurred_ratio=pic.blurred_ratio, blurred_s=pic.blurred_s,
                                  learn_s=pic.learn_s) if pic.enabled else None
        return cls(camera_id=cam.id, url=cam.url, is_file=cam.is_file, fps=cam.fps, loop=cam.loop,
                   realtime=cam.realtime, lossless=cam.lossless, transport=cam.transport, open_timeout_s=cam.open_timeout_s,
                   read_timeout_s=cam.read_timeout_s, stall_timeout_s=cam.stall_timeout_s,
                   frozen_timeout_s=cam.frozen_timeout_s, picture=picture, decode_threads=cam.decode_threads, nice=cam.nice,
                   backoff=Backoff(initial_s=r.initial_s, max_s=r.max_s, jitter=r.jitter),
                   max_restarts=r.max_restarts, nslots=cam.ring_frames)

    def open_options(self) -> dict[str, str]:
        """FFmpeg options for ``av.open``: transport and socket timeouts (microseconds)."""
        us = str(int(self.read_timeout_s * 1e6))
        if self.url.lower().startswith(("rtsp://", "rtsps://")):
            return {"rtsp_transport": self.transport, "timeout": us}
        if self.url.lower().startswith(("http://", "https://")):
            return {"rw_timeout": us, "reconnect": "0"}
        return {}


def decoder_main(settings: DecoderSettings, prefix: str, conn: Connection,
                 initial: CameraState = S.CONNECTING, picture: Picture = Picture.OK) -> None:
    """Process target: run one camera until it ends, fails or the supervisor sets ``stop``.

    conn: write end of a pipe; every ``CameraStatus`` goes there (one small message per write is
    atomic, so a decoder killed mid-send cannot corrupt the supervisor's end).
    initial: RECONNECTING when the supervisor restarts a crashed decoder (then the first move is
    CONNECTING, announced by the machine), CONNECTING on a first start. picture: the camera's picture
    verdict so far (a restarted decoder keeps a frozen picture frozen until it moves).
    """
    # Ctrl-C and a group-wide SIGTERM reach the whole process group: the supervisor decides
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Decoding every frame of every camera is worthless when the model cannot take them: on an
    # overloaded host the device stage keeps the CPU it needs and decoders drop frames (newest wins)
    # instead of everything, inference included, slowing down together.
    if settings.nice:
        os.nice(settings.nice)
    writer = RingWriter(prefix, nslots=settings.nslots)

    def emit(status: CameraStatus) -> None:
        writer.control.set("state", STATE_CODES[status.state])
        conn.send(status)

    machine = CameraStateMachine(camera_id=settings.camera_id, emit=emit, initial=initial,
                                 announce=initial is S.CONNECTING, picture=picture)
    try:
        Decoder(settings=settings, writer=writer, machine=machine).run()
    finally:
        conn.close()
        writer.close()
    # Nothing is buffered (the pipe is synchronous): skip the interpreter teardown, which on a busy
    # machine can outlast the supervisor's stop grace and get the decoder killed.
    os._exit(0)


class _Stop(Exception):
    """The supervisor asked this decoder to stop."""


class Decoder:
    """The decode loop of one camera (runs in the decoder process; see ``decoder_main``)."""

    def __init__(self, *, settings: DecoderSettings, writer: RingWriter, machine: CameraStateMachine,
                 rng: random.Random | None = None) -> None:
        self.s = settings
        self.writer = writer
        self.machine = machine
        self.rng = rng or random.Random()
        self.failures = 0  # consecutive failed connections; reset once frames have flowed for _STABLE_S
        self._first_frame_at: float | None = None  # this connection's first frame (monotonic)
        self.last_frame = time.monotonic()
        # Output pts = stream pts - first pts of this connection (pass) + offset, so pts keep increasing
        # across loops of a file and reconnects of a stream (RTSP pts start at arbitrary values).
        self._pts_offset = 0.0
        self._pass_start: float | None = None
        self._last_pts: float | None = None
        self._pass_t: float | None = None  # the last frame's output time on this pass
        self._pass_pts: float | None = None  # and its own pts
        self._period: float | None = None  # 1 / the stream's frame rate, when it has one
        self._last_emit_pts: float | None = None
        self._next_due: float | None = None  # the fps grid's next slot (pts, else arrival time)
        self._pace: tuple[float, float] | None = None  # (wall, pts) anchor of realtime pacing
        self._paced = False  # whether this pass is paced (files, and recordings served over HTTP)
        self._codec: Any = None  # this pass's decoder: its sample aspect ratio (it may change mid-stream)
        self._max_leap_s = math.inf  # a file's pts leap further than this only at a discontinuity
        self._frames_this_pass = 0
        self._done = threading.Event()
        self._frozen = _FrozenPicture(settings.frozen_timeout_s) if settings.frozen_timeout_s else None
        self._picture = None if settings.picture is None else PictureCheck(settings.picture, picture=machine.picture)

    # -------------------------------------------------------------------------- the outer loop

    def run(self) -> None:
        watchdog = threading.Thread(target=self._watch_stall, name="stall-watchdog", daemon=True)
        watchdog.start()
        try:
            self._run()
        except _Stop:
            pass
        finally:
            self._done.set()
            if self.machine.can(S.STOPPED) and self._stop_requested():
                self.machine.transition(S.STOPPED, "stopped by supervisor")

    def _run(self) -> None:
        while True:
            self._check_stop()
            if self.machine.state is S.RECONNECTING:
                self.machine.transition(S.CONNECTING, f"attempt {self.failures + 1}")
            try:
                container = self._open()
            except (av.FFmpegError, OSError) as e:
                if self.s.is_file:  # a missing or unreadable file will not get better
                    why = unfinished_mp4(self.s.url) or _describe(e, self.s.open_timeout_s)
                    self.machine.transition(S.FAILED, f"cannot open: {why}")
                    return
                if not self._retry(f"cannot open: {_describe(e, self.s.open_timeout_s)}"):
                    return
                continue
            self._first_frame_at = None
            try:
                outcome = self._read(container)
            except _Stop:
                raise
            except (av.FFmpegError, OSError) as e:
                outcome = f"read error: {_describe(e, self.s.read_timeout_s)}"
            finally:
                container.close()
            if self.s.is_file:
                if self._frames_this_pass == 0:
                    self.machine.transition(S.FAILED, f"no decodable frames ({outcome})")
                    return
                if not self.s.loop:
                    self.machine.transition(S.ENDED, outcome)
                    return
                continue  # loop: open again from the start
            if not self._retry(outcome):
                return

    def _retry(self, why: str) -> bool:
        """Count a failure, go RECONNECTING and sleep the back-off; False when out of attempts."""
        self.failures += 1
        limit = self.s.max_restarts
        if limit is not None and self.failures > limit:
            self.machine.transition(S.FAILED, f"{why}; gave up after {limit} reconnects")
            return False
        delay = self.s.backoff.delay(self.failures - 1, self.rng)
        self.machine.transition(S.RECONNECTING, f"{why}; retry in {delay:.1f}s")
        self._sleep(delay)
        return True

    def _open(self) -> Any:
        container = av.open(self.s.url, options=self.s.open_options(),
                            timeout=(self.s.open_timeout_s, self.s.read_timeout_s))
        if not container.streams.video:
            container.close()
            raise av.error.InvalidDataError(1094995529, "no video stream")  # AVERROR_INVALIDDATA
        stream = container.streams.video[0]
        if stream.codec_context is None:  # a camera's own codec, or HEVC/AV1 in an FFmpeg built without it
            container.close()
            # AVERROR_DECODER_NOT_FOUND; not raised here, the AttributeError below crashed the decoder
            # process, which was restarted (a traceback each time) for ever
            raise av.error.DecoderNotFoundError(1128613112, "no decoder for its video codec in this FFmpeg")
        stream.thread_type = "AUTO"  # frame + slice threads
        stream.codec_context.thread_count = self.s.decode_threads
        return container

    # ------------------------------------------------------------------------------- decoding

    def _read(self, container: Any) -> str:
        """Decode until the end of the input; returns why it ended. Raises on a broken stream."""
        stream = container.streams.video[0]
        self._codec = stream.codec_context
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        clock = self._clock(container, stream)
        # A recording served over HTTP(S) (a clip on a web server or in a bucket) has a duration, a live
        # stream none: paced like a file, it no longer went to the model as fast as it downloads.
        self._paced = self.s.realtime and (self.s.is_file or container.duration is not None)
        self._max_leap_s = _TS_DISCONT_S if container.format.flags & _AVFMT_TS_DISCONT else math.inf
        self._frames_this_pass = 0
        # self._pace is kept: a loop's next pass goes on in stream time (_pts_offset), and so in wall
        # time. Anchored again on each pass, a one-frame file (a still image) looped unpaced: 800
        # frames a second, the file opened as often.
        self._pass_start = self._pass_t = self._pass_pts = None
        self._period = 1.0 / rate if rate else None
        opened = time.monotonic()
        try:
            for packet in container.demux(stream):
                self.writer.beat()
                self._check_stop()
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    frames = []  # a damaged packet: FFmpeg conceals what it can, the next keyframe heals
                for frame in frames:
                    self._on_frame(frame, clock(frame))
                if not self.s.is_file and not frames:
                    # Packets that never decode (no parameter sets, a stream broken at the source) beat the
                    # heartbeat and the read timeout alike: without this the camera stayed CONNECTING (or
                    # STALLED) for good, where opening it again may heal it.
                    quiet, limit = ((time.monotonic() - self.last_frame, self.s.read_timeout_s)
                                    if self._frames_this_pass else (time.monotonic() - opened, self.s.open_timeout_s))
                    if quiet > limit:
                        return f"no decodable frame for {quiet:.1f}s"
        finally:
            if self._last_pts is not None:  # the next pass starts one frame after this one ended
                self._pts_offset = self._last_pts + (1.0 / rate if rate else 0.0)
        return "end of stream"

    def _clock(self, container: Any, stream: Any) -> Callable[[Any], float | None]:
        """A frame's time in seconds (any origin) on this pass: its pts, where the format has timestamps.
        Raw .h264/.hevc files (NVR exports) and MJPEG over HTTP (most IP cameras' ``video.mjpg``) have
        none: FFmpeg leaves pts out or counts frames at an assumed 25 a second. Then a file is clocked by
        its frame count over the codec's frame rate (``guessed_rate``; ``average_rate`` is the raw
        demuxer's 25), a live stream by arrival time. Without this a 10 fps MJPEG camera at ``fps: 5``
        gave 2 frames a second, its pts 0.4 s a second, and a raw file at ``fps: 5`` 1 frame, unpaced."""
        if not container.format.flags & _AVFMT_NOTIMESTAMPS:
            tb = stream.time_base or Fraction(1, 90_000)
            return lambda frame: None if frame.pts is None else float(frame.pts * tb)
        if not self.s.is_file:
            return lambda frame: time.monotonic()
        rate = float(stream.guessed_rate or stream.average_rate or 0)
        return lambda frame: self._frames_this_pass / rate if rate else None

    def _on_frame(self, frame: Any, pts: float | None) -> None:
        now = time.monotonic()
        t = self._stream_time(pts, now - self.last_frame)
        self.last_frame = now
        self._frames_this_pass += 1
        if not self._sample(t, now):
            return
        if self._paced and t is not None:
            self._pace_to(t)
        image = as_shown(frame, self._codec.sample_aspect_ratio if self._codec else None)
        if self._picture is not None:
            self._check_picture(image, now if t is None else t)
        if self._frozen is not None and self._frozen.still(image, now):
            # the same picture again: no news for the model, and a hung camera for its subscribers
            if self.machine.state is S.LIVE:
                self.machine.transition_if(S.STALLED, f"picture frozen for {self._frozen.for_s(now):.1f}s")
            return
        if self.s.lossless and self.s.is_file:
            self._wait_taken()
        self.writer.write(np.ascontiguousarray(image), pts=t, capture_ts=time.time())
        if self.machine.state is not S.LIVE:
            self.machine.transition_if(S.LIVE, f"{image.shape[1]}x{image.shape[0]}")
        if self._first_frame_at is None:
            self._first_frame_at = now
        elif self.failures and now - self._first_frame_at >= _STABLE_S:
            self.failures = 0

    def _check_picture(self, image: np.ndarray, t: float) -> None:
        """Picture health (see ``PictureCheck``) on a frame at stream time ``t`` (arrival time for a stream
        without a clock): stream time, so that a file played faster than real time is judged on the seconds
        of video it holds, as a live camera is (its stream time is its wall time, outages left out)."""
        assert self._picture is not None
        if self._picture.due(t):
            sharp = sharpness(image) if self._picture.wants_sharpness else None
            change = self._picture.update(thumbnail(image), t, sharp)
            if change is not None:
                self.machine.set_picture(*change)

    def _stream_time(self, pts: float | None, gap: float) -> float | None:
        """A frame's output pts in seconds: its own pts from the pass's origin on, plus ``_pts_offset``,
        so that output time only grows. ``gap``: seconds since the previous frame arrived. None when
        the input has no clock at all (then sampling goes by arrival)."""
        if pts is None:
            if self._period is None:
                return None
            # A frame the demuxer could not stamp (an RTSP camera's first, on every connect): one frame on.
            # Sent without pts, sinks took its wall time for stream time, and the next frame's pts went
            # back 56 years: a one-frame recording and a restream started again per connect.
            t = self._pts_offset if self._pass_t is None else self._pass_t + self._period
        else:
            if self._pass_start is None:  # the pass's origin: where its first frame was, stamped or not
                ahead = 0.0 if self._pass_t is None else self._pass_t + (self._period or 0.0) - self._pts_offset
                self._pass_start = pts - ahead
            elif self._pass_pts is not None and self._pass_t is not None and (
                    pts <= self._pass_pts or pts - self._pass_pts > (
                        self._max_leap_s if self.s.is_file else gap + self.s.read_timeout_s)):
                # pts that stand still or go back (a camera whose clock is stuck or was reset, recordings
                # joined end to end), or on a live stream leap further than the wait for this frame could
                # explain (a camera clock set forward): one frame on, and from there on with pts again.
                # Stuck pts kept all but the first frame out of an ``fps`` grid (a LIVE camera with
                # nothing inferred), pts that went back went out negative, and a leap made every zone's
                # dwell time leap with it (false overstays). Files keep their gaps (they are paced by them)
                # up to ``_max_leap_s``: MPEG-TS recordings joined end to end, or wrapping their 26.5 h clock
                # (FFmpeg unwraps that as a leap forward), left the camera STALLED for as long as the leap.
                self._pass_start = pts - (self._pass_t + (self._period or gap) - self._pts_offset)
            self._pass_pts = pts
            t = pts - self._pass_start + self._pts_offset
        self._pass_t = self._last_pts = t
        return t

    def _sample(self, t: float | None, now: float) -> bool:
        """fps limit: keep a frame once its time (pts, else arrival) reaches the next slot of a 1/fps grid.
        The grid steps by 1/fps from slot to slot, not from the last frame kept: keeping a frame only 1/fps
        after the previous one gave a 25 fps camera at ``fps: 10`` 8.3 frames/s (every third frame)."""
        if self.s.fps is None:
            return True
        clock = t if t is not None else now
        period = 1.0 / self.s.fps
        due, last = self._next_due, self._last_emit_pts
        if due is not None and last is not None and last <= clock < due - period * 0.001:
            return False
        # the first frame, a pts that went back, or a gap longer than a slot: the grid starts at this frame
        restart = due is None or last is None or clock < last or clock - due >= period
        self._next_due = (clock if restart or due is None else due) + period
        self._last_emit_pts = clock
        return True

    def _pace_to(self, t: float) -> None:
        """Sleep until a file frame's pts is due in wall time (files and recordings; streams come paced)."""
        if self._pace is None or t < self._pace[1]:
            self._pace = (time.monotonic(), t)
            return
        due = self._pace[0] + (t - self._pace[1])
        self._sleep(due - time.monotonic())

    # ------------------------------------------------------------------------------- plumbing

    def _wait_taken(self) -> None:
        """lossless files: hold this frame until the reader has taken the previous one.

        The poll backs off with the time waited (an eighth of it, 2-20 ms): the frame lands in the
        ring at most max(2 ms, wait / 8) after its slot frees, long before the next batch is gathered
        (that is at least a whole wait away), and a decoder waiting 200 ms for a CPU model wakes ~25
        times instead of 100. A steady 2 ms poll cost each waiting decoder 3 % of a core, which on a
        small CPU box came out of the model's share (benchmarks/pipeline.py, decoder CPU-s)."""
        start = time.monotonic()
        while not self.writer.taken():
            self.writer.beat()
            self._check_stop()
            now = time.monotonic()
            self.last_frame = now  # waiting for the model is not a stall
            time.sleep(min(max((now - start) * _TAKEN_BACKOFF, _TAKEN_POLL_S), _TAKEN_POLL_MAX_S))

    def _sleep(self, seconds: float) -> None:
        """Sleep in short steps, beating and watching for stop."""
        end = time.monotonic() + seconds
        while True:
            self.writer.beat()
            self._check_stop()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, _BEAT_STEP_S))

    def _stop_requested(self) -> bool:
        return bool(self.writer.control.get("stop"))

    def _check_stop(self) -> None:
        if self._stop_requested():
            raise _Stop

    def _watch_stall(self) -> None:
        step = min(0.25, self.s.stall_timeout_s / 4)
        while not self._done.wait(step):
            quiet = time.monotonic() - self.last_frame
            if self.machine.state is S.LIVE and quiet > self.s.stall_timeout_s:
                self.machine.transition_if(S.STALLED, f"no frame for {quiet:.1f}s")


class _FrozenPicture:
    """Whether a camera's picture has stopped changing: exactly equal on a sparse grid of pixels (about
    40 x 24), frame after frame, for ``timeout_s``. Sensor noise makes a live picture differ somewhere
    on every frame, however still the scene, so an exact match means repeated frames, not a quiet view."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._grid: np.ndarray | None = None
        self._since = 0.0

    def still(self, image: np.ndarray, now: float) -> bool:
        h, w = image.shape[:2]
        grid = image[:: max(h // 24, 1), :: max(w // 40, 1)]
        if self._grid is None or grid.shape != self._grid.shape or not np.array_equal(grid, self._grid):
            self._grid, self._since = grid.copy(), now
            return False
        return now - self._since >= self.timeout_s

    def for_s(self, now: float) -> float:
        return now - self._since


def _describe(e: BaseException, timeout_s: float) -> str:
    """An error without the URL (FFmpeg errors embed it, and URLs may carry credentials). PyAV's timeout
    (``timeout_s``, the open or the read one) stops FFmpeg with AVERROR_EXIT, whose text ("ExitError:
    Immediate exit requested") read as a crash or a stop; it is said as the timeout it is."""
    if isinstance(e, av.error.ExitError):
        return f"timed out: nothing received for {timeout_s:g}s"
    text = getattr(e, "strerror", None) or type(e).__name__
    return f"{type(e).__name__}: {text}" if text != type(e).__name__ else text
