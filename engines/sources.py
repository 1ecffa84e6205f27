"""Inputs for ``predict``: images, folders, globs, video files and stream URLs, as BGR frames.

Each item is ``SourceItem(name, image (H, W, 3) uint8 BGR, frame, fps)`` where ``frame`` is the frame index
for videos and streams (counted from 0 in the source, also when ``vid_stride`` skips frames) and None for still
images, and ``fps`` the video's frame rate (frames per second, of the source; None for still images and streams
that do not state one).
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.errors import SourceError
from engines.frames import as_shown
from engines.mp4 import unfinished_mp4
from engines.urls import redact_url

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# camcorders write .mts/.m2ts, phones .3gp, NVRs raw .h264/.hevc, and a GIF is a video of its frames
# (segpipe run plays them all)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".ts", ".mpg", ".mpeg", ".h264", ".mts",
                  ".m2ts", ".3gp", ".flv", ".hevc", ".h265", ".gif")
STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass(frozen=True, slots=True)
class SourceItem:
    name: str
    image: np.ndarray
    frame: int | None = None
    fps: float | None = None


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 BGR; SourceError if it is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"{p}: image not found")
    data = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise SourceError(f"{p}: cannot decode image (corrupt or not an image)")
    return img


def _as_bgr(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise SourceError(f"{name}: expected an (H, W, 3) uint8 BGR array, got {arr.shape} {arr.dtype}")
    return np.ascontiguousarray(arr[..., :3])


def iter_video(url: str, *, name: str | None = None, max_frames: int = 0,
               vid_stride: int = 1) -> Iterator[SourceItem]:
    """Decode a video file or stream with PyAV, frame by frame (BGR); only its first ``max_frames``
    frames when that is not 0, and of those only frames 0, ``vid_stride``, 2 * ``vid_stride``, ...

    Every frame is still decoded (a skipped frame is the reference of the next), but only the kept
    ones are converted to BGR. Ultralytics' ``vid_stride`` reads frames ``stride - 1``, ``2 * stride - 1``,
    ... of a video file (and 0, ``stride``, ... of a stream); the first frame is kept here, so a clip
    shorter than the stride still gives one frame and its first frame is always predicted on."""
    import av

    try:
        container = av.open(url, options={"rtsp_transport": "tcp"} if url.startswith("rtsp") else None,
                            timeout=10.0)
    except (av.error.FFmpegError, OSError) as e:
        unfinished = None if url.startswith(STREAM_PREFIXES) else unfinished_mp4(url)
        raise SourceError(f"{redact_url(url)}: " + (unfinished or f"cannot open video ({_reason(e, url)})")) from None
    label = name or video_name(url)
    with container:
        if not container.streams.video:
            raise SourceError(f"{redact_url(url)}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        i = 0
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    # a damaged packet (a bad sector, a broken upload): FFmpeg conceals what it can and the
                    # next keyframe heals, as the run's decoders do. Raised, it ended the whole video (and
                    # predict kept no predictions.json) at the first bad packet of a playable file.
                    continue
                for frame in frames:
                    if max_frames and i >= max_frames:
                        return
                    if i % vid_stride == 0:
                        image = as_shown(frame, stream.codec_context.sample_aspect_ratio)
                        yield SourceItem(label, np.ascontiguousarray(image), i, fps)
                    i += 1
        except av.error.FFmpegError as e:
            raise SourceError(f"{redact_url(url)}: decoding failed at frame {i} ({_reason(e, url)})") from None


def video_name(url: str) -> str:
    """The name a video's items carry: its file's stem, or ``stream`` for a stream URL."""
    return "stream" if url.startswith(STREAM_PREFIXES) else Path(url).stem


def _is_video(entry: str) -> bool:
    return entry.lower().startswith(STREAM_PREFIXES) or entry.lower().endswith(VIDEO_SUFFIXES)


def source_entries(source: str) -> list[tuple[str, str, bool]]:
    """``(entry, name, is_video)`` of each file or stream ``iter_source(source)`` will read, in its order,
    without opening any (to check output names before writing); SourceError as ``iter_source`` for a source
    that names nothing. An entry it would refuse (an unsupported suffix) is left for it to refuse."""
    return [(e, video_name(e), True) if _is_video(e) else (e, Path(e).stem, False) for e in expand_source(source)
            if _is_video(e) or e.lower().endswith(IMAGE_SUFFIXES)]


def source_names(source: str) -> list[tuple[str, bool]]:
    """``(name, is_video)`` of each entry of :func:`source_entries`."""
    return [(name, video) for _, name, video in source_entries(source)]


def _reason(e: Exception, url: str) -> str:
    """FFmpeg's words for ``e`` without the URL, which its errors repeat (a stream's with its password)."""
    return getattr(e, "strerror", None) or str(e).replace(url, redact_url(url))


def _is_media(path: str | Path) -> bool:
    """A picture or video file by its name. is_file: a folder named like a picture (b.jpg/) is not one; it
    was read and reported missing."""
    return str(path).lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES) and Path(path).is_file()


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_media(p))


def expand_source(source: str) -> list[str]:
    """The entries a source names, in order: itself for a stream URL or a file, a folder's pictures and
    videos, a glob's matches. SourceError when it names nothing."""
    if not source.strip():  # Path("") is the current folder: an unset variable must not predict on it
        raise SourceError("source is empty (expected an image, folder, glob, video or stream URL)")
    if source.startswith(STREAM_PREFIXES):
        return [source]
    if any(c in source for c in "*?["):
        hits = sorted(globlib.glob(source, recursive=True))
        if not hits:
            raise SourceError(f"{source}: glob matched no files")
        # what a folder of them would give: dir/* stopped at dir/notes.txt where dir skipped it
        media = [h for h in hits if _is_media(h)]
        if not media:
            raise SourceError(f"{source}: glob matched no images or videos")
        return media
    p = Path(source)
    if p.is_dir():
        files = _files_in(p)
        if not files:
            raise SourceError(f"{source}: folder has no images or videos")
        return [str(f) for f in files]
    if not p.exists():
        raise SourceError(f"{source}: no such file, folder, glob or stream URL")
    return [source]


def iter_source(source: Any, *, max_frames: int = 0, vid_stride: int = 1) -> Iterator[SourceItem]:
    """Yield frames from any supported source (see module docstring); arrays are taken as BGR.
    ``max_frames`` (0: all) bounds each video and stream on its own, not the whole source, counting the
    source's frames; ``vid_stride`` keeps every N-th frame of videos and streams (see ``iter_video``)."""
    if max_frames < 0:
        raise SourceError(f"max_frames: expected 0 (all frames) or more, got {max_frames}")
    if isinstance(vid_stride, bool) or not isinstance(vid_stride, int) or vid_stride < 1:
        raise SourceError(f"vid_stride: expected an integer >= 1 (1: every frame), got {vid_stride!r}")
    if isinstance(source, np.ndarray):
        yield SourceItem("image0", _as_bgr(source, "array"))
        return
    if isinstance(source, Sequence) and not isinstance(source, str):
        for i, s in enumerate(source):
            if isinstance(s, np.ndarray):
                yield SourceItem(f"image{i}", _as_bgr(s, f"source[{i}]"))
            else:
                yield from iter_source(s, max_frames=max_frames, vid_stride=vid_stride)
        return
    if isinstance(source, Path):
        source = str(source)
    if not isinstance(source, str):
        raise SourceError(f"unsupported source type {type(source).__name__}")
    for item in expand_source(source):
        if _is_video(item):
            yield from iter_video(item, max_frames=max_frames, vid_stride=vid_stride)
        elif item.lower().endswith(IMAGE_SUFFIXES):
            yield SourceItem(Path(item).stem, read_image(item))
        else:
            raise SourceError(f"{item}: unsupported source (expected an image {IMAGE_SUFFIXES[:3]}..., "
                              f"a video {VIDEO_SUFFIXES[:3]}..., a folder, a glob or a stream URL)")
