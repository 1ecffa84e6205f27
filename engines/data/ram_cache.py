"""Decoded training images kept in RAM (Ultralytics' ``cache=ram``). Imports nothing from pipeline/.

Decoding a JPEG and resizing it is most of a sample's CPU time on a machine without a GPU; with the
cache, later epochs read every image from memory. What is cached is exactly what the dataset would
decode (``read_resized``: longest side imgsz), so training is bit-identical with and without it.

Why it is filled up front, in the process that builds the DataLoader, on threads: loader workers are
separate processes, re-created every epoch, and whatever a worker caches dies with it. Workers forked
from the filled process share its pages (copy-on-write; the arrays are never written). Under the
``spawn`` start method (macOS, Windows) each worker would get a pickled copy instead.
Cached arrays are read-only, so an augmentation that wrote into one in place would fail loudly
rather than corrupt every later epoch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from engines.data.images import read_resized, resized_size

SAFETY_MARGIN = 0.5  # Ultralytics' check_cache_ram: needed * 1.5 must be available
GB = 1 << 30


def size_text(n: float) -> str:
    """Bytes for people: ``"1.23 GB"``, ``"100 MB"``, ``"48 KB"`` (a small dataset's cache is no "0 MB")."""
    if n >= GB / 10:
        return f"{n / GB:.2f} GB"
    return f"{n / (1 << 20):.0f} MB" if n >= 1 << 20 else f"{n / 1024:.0f} KB"


def cache_bytes(shapes: Sequence[tuple[int, int]], long_side: int) -> int:
    """Bytes the cache of images of these (H, W) shapes takes at longest side ``long_side`` (uint8 BGR).
    Exact, from the label check's shapes: nothing is decoded to estimate it."""
    return sum(w * h * 3 for w, h in (resized_size(s, long_side) for s in shapes))


def available_memory(*, meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process may still allocate: the smaller of the kernel's MemAvailable and the room left
    under a cgroup v2 memory limit (a container's own limit, which /proc/meminfo does not show).
    None where neither can be read (not Linux).

    The cgroup's ``memory.current`` counts its page cache too; its inactive part (``inactive_file`` in
    ``memory.stat``, what ``docker stats`` leaves out) is reclaimed on demand, so it counts as room: a
    container that has read its dataset before has its limit nearly filled with cache, and was told the
    cache would not fit."""
    found: list[int] = []
    try:
        with open(meminfo, encoding="ascii") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            found.append(int(limit) - used + _inactive_file(cgroup / "memory.stat"))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _inactive_file(stat: Path) -> int:
    """``inactive_file`` bytes of a cgroup v2 ``memory.stat`` (0 where absent)."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("inactive_file ")), 0)


def fits(needed: int, available: int | None) -> bool:
    """Whether ``needed`` bytes, with the safety margin, fit in ``available`` (unknown: assumed so)."""
    return available is None or needed * (1 + SAFETY_MARGIN) <= available


def default_threads() -> int:
    """Ultralytics' NUM_THREADS: every core but one, at most 8."""
    return min(8, max(1, (os.cpu_count() or 1) - 1))


def read_all(items: Sequence[tuple[Path, tuple[int, int]]], long_side: int, *,
             threads: int | None = None) -> list[np.ndarray]:
    """Decode ``(path, (H, W))`` images as ``read_resized`` does, on a thread pool (OpenCV releases the
    GIL while it decodes), in order. Returns read-only uint8 BGR arrays; raises DataError for the first
    image that cannot be decoded."""
    def one(item: tuple[Path, tuple[int, int]]) -> np.ndarray:
        im = read_resized(item[0], item[1], long_side)
        im.setflags(write=False)
        return im

    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        return list(pool.map(one, items))
