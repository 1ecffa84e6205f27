"""Real H.264 test clips made with PyAV (no binary fixtures in the repo).

Each frame shows a moving bright box on a dark background and carries its own index in binary in
the top-left corner (12 black/white 8x8 blocks, so ``index % 4096``), so a test can tell which frame
it received even after lossy encoding.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_BITS = 12  # frame index bits painted into the top-left corner


def make_frame(index: int, *, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """One synthetic BGR frame, (H, W, 3) uint8, with ``index`` painted into the top-left block."""
    w, h = size
    img = np.full((h, w, 3), 30, np.uint8)
    bw, bh = max(8, w // 6), max(8, h // 6)
    x = 96 + (index * 7) % max(1, w - bw - 96)
    y = h // 2 - bh // 2
    img[y:y + bh, x:x + bw] = (40, 200, 240)
    for bit in range(_BITS):
        img[:8, bit * 8:(bit + 1) * 8] = 255 if (index >> bit) & 1 else 0
    return img


def frame_index(image: np.ndarray) -> int:
    """Read back the index painted by ``make_frame`` (modulo 4096)."""
    bits = [image[2:6, bit * 8 + 2:bit * 8 + 6].mean() > 127 for bit in range(_BITS)]
    return sum(1 << i for i, b in enumerate(bits) if b)


def write_clip(path: Path, *, frames: int = 30, size: tuple[int, int] = (320, 240), fps: int = 15,
               gop: int = 10, start: int = 0) -> Path:
    """Encode ``frames`` synthetic frames as H.264 (yuv420p) into ``path`` (.mp4, .ts or .mkv).

    ``gop`` is the keyframe interval in frames: small values keep truncated files decodable.
    Returns ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(gop),
                          "keyint_min": str(gop), "crf": "18"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(make_frame(start + i, size=size), format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def truncate(src: Path, dst: Path, *, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (a file cut off mid-stream)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def corrupt(src: Path, dst: Path, *, start: float = 0.4, length: float = 0.2, seed: int = 0) -> Path:
    """Copy ``src`` to ``dst`` with a span of random bytes overwritten (a damaged recording)."""
    data = bytearray(src.read_bytes())
    a, n = int(len(data) * start), int(len(data) * length)
    data[a:a + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst
