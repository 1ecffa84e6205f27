"""What the sinks that encode annotated video share (files: ``video``; live streams: ``restream``):
the picture a result is drawn on, and one frame into an H.264 stream with keyframes by stream time."""

from __future__ import annotations

from fractions import Fraction
from typing import cast

import av
import cv2
import numpy as np
from av.video.frame import PictureType

from pipeline.messages import FrameResult
from pipeline.sinks.base import Envelope
from pipeline.sinks.draw import draw

TIME_BASE = Fraction(1, 1000)  # millisecond timestamps


def encoded_size(size: tuple[int, int], max_width: int | None) -> tuple[int, int]:
    """The (width, height) frames of ``size`` are drawn and encoded at: at most ``max_width`` wide, even
    sides (yuv420p needs them)."""
    scale = min(1.0, max_width / size[0]) if max_width else 1.0
    return int(size[0] * scale) // 2 * 2, int(size[1] * scale) // 2 * 2


def frame_canvas(env: Envelope, result: FrameResult, dims: tuple[int, int]) -> np.ndarray:
    """The frame to draw ``result`` on, at ``dims``: the envelope's image resized, or a dark canvas when
    the runtime forwarded none (the masks alone)."""
    w, h = dims
    if env.image is not None:
        return cv2.resize(env.image, (w, h), interpolation=cv2.INTER_AREA)
    return np.full((h, w, 3), 24, np.uint8)


def annotated(env: Envelope, result: FrameResult, dims: tuple[int, int]) -> np.ndarray:
    """``result`` drawn on its frame at ``dims``."""
    return draw(frame_canvas(env, result, dims), result, scale=dims[0] / result.frame_size[0])


def add_h264(container: av.container.OutputContainer, codec: str, dims: tuple[int, int], fps: float,
             options: dict[str, str]) -> av.video.stream.VideoStream:
    """A video stream of ``codec`` at ``dims`` in ``container``, millisecond time base; keyframes come
    only from ``encode_frame(key=True)`` (stream time), never from a frame count."""
    # codec is a name from the config: the stubs cannot tell that it names a video encoder
    stream = cast(av.video.stream.VideoStream,
                  container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000)))
    stream.width, stream.height, stream.pix_fmt = dims[0], dims[1], "yuv420p"
    stream.codec_context.time_base = TIME_BASE
    stream.options = {"g": "100000", **options}
    return stream


def encode_frame(container: av.container.OutputContainer, stream: av.video.stream.VideoStream,
                 canvas: np.ndarray, ms: int, *, key: bool) -> None:
    """Encode ``canvas`` (BGR) at ``ms`` and mux what comes out; ``key`` forces an IDR frame (a new MP4
    fragment, a point where a live viewer can start)."""
    frame = av.VideoFrame.from_ndarray(canvas, format="bgr24")
    frame.pts, frame.time_base = ms, TIME_BASE
    if key:
        frame.pict_type = PictureType.I
    for packet in stream.encode(frame):
        container.mux(packet)


def finish(container: av.container.OutputContainer, stream: av.video.stream.VideoStream) -> None:
    """Flush the encoder into the container and close it."""
    for packet in stream.encode():
        container.mux(packet)
    container.close()
