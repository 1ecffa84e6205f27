"""Decoded training images kept on disk as ``.npy`` files (Ultralytics' ``cache=disk``). Imports nothing
from pipeline/.

Each image is decoded once, exactly as the dataset decodes it (``read_resized``: longest side imgsz), and
saved as an uncompressed array; later epochs and later runs load the array instead of decoding the JPEG,
so training is bit-identical with and without the cache. Unlike ``--cache ram`` it costs no memory and
survives the run.

Where: beside the image (``im0.640.<key>.npy``) when the image folder is writable, else under
``$SEGPIPE_CACHE/images`` (``engines.data.cache.derived_file``, the label cache's rule: shared datasets
are read-only). The name carries a key of what the array depends on (image path, size, mtime_ns, long
side), so an edited image or another imgsz never reads a stale array; an edited image leaves its old
array behind (delete the ``*.npy`` files to reclaim the space). Files are written to a temporary name and
renamed, so a reader (another DDP rank, a later run after an interrupted fill) sees a whole array or
none; an unreadable or short file is decoded again and rewritten, never an error.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.data.cache import derived_file, digest, write_atomic
from engines.data.images import read_resized, resized_size
from engines.data.ram_cache import SAFETY_MARGIN, default_threads

LOG = logging.getLogger("segpipe.data")

KEY_VERSION = 1
HEADER_BYTES = 128  # an .npy v1 header of a 3-d uint8 array


@dataclass(frozen=True, slots=True)
class DiskPlan:
    """The ``.npy`` file of every image (dataset order), each array's (w, h), and which files are to be
    written (absent or unreadable)."""

    files: tuple[Path, ...]
    sizes: tuple[tuple[int, int], ...]
    missing: tuple[int, ...]

    def nbytes(self, indices: Sequence[int] | None = None) -> int:
        """Bytes on disk of these files (default: all of them)."""
        idx = range(len(self.files)) if indices is None else indices
        return sum(self.sizes[i][0] * self.sizes[i][1] * 3 + HEADER_BYTES for i in idx)


def npy_file(im_file: Path, long_side: int, *, cache_dir: Path | None = None) -> Path:
    """Where the decoded ``im_file`` at longest side ``long_side`` is kept (see module doc). Raises OSError
    when the image cannot be stat'ed."""
    st = os.stat(im_file)
    key = digest(KEY_VERSION, os.fspath(im_file), st.st_size, st.st_mtime_ns, long_side)[:12]
    name = f"{im_file.stem}.{long_side}.{key}.npy"
    folder = im_file.parent
    away = f"{folder.name}.{digest(os.fspath(folder))[:10]}/{name}"
    return derived_file(folder, name, away, kind="images", cache_dir=None if cache_dir is None else cache_dir / "images")


def load(path: Path, size: tuple[int, int], *, check_only: bool = False) -> np.ndarray | None:
    """The read-only uint8 (h, w, 3) array in ``path`` for ``size`` (w, h); None when the file is absent,
    unreadable, short or of another shape. ``check_only`` maps the file instead of reading it (the header and
    the file length are still checked)."""
    try:
        im = np.load(path, mmap_mode="r" if check_only else None, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as e:
        LOG.warning("unreadable image cache %s (%s): decoding the image again", path, e)
        return None
    if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.shape != (size[1], size[0], 3):
        LOG.warning("image cache %s holds %s %s, expected uint8 (%d, %d, 3): decoding the image again", path,
                    getattr(im, "dtype", type(im).__name__), getattr(im, "shape", ""), size[1], size[0])
        return None
    im.setflags(write=False)  # as the RAM cache's: an in-place augmentation fails instead of going unseen
    return im


def save(path: Path, im: np.ndarray) -> bool:
    """Write ``im`` to ``path`` atomically (temporary file, then rename); False (and a warning) on failure."""
    return write_atomic(path, lambda f: np.save(f, im, allow_pickle=False), "image cache")


def plan(items: Sequence[tuple[Path, tuple[int, int]]], long_side: int, *, cache_dir: Path | None = None) -> DiskPlan:
    """The plan for ``(image, (H, W))`` items: every file's place, and which are missing (a readable file of
    the right shape is kept; its pixels are not read)."""
    files = tuple(npy_file(p, long_side, cache_dir=cache_dir) for p, _ in items)
    sizes = tuple(resized_size(shape, long_side) for _, shape in items)
    missing = tuple(i for i, (f, s) in enumerate(zip(files, sizes, strict=True)) if load(f, s, check_only=True) is None)
    return DiskPlan(files=files, sizes=sizes, missing=missing)


def shortfall(p: DiskPlan, indices: Sequence[int] | None = None) -> tuple[int, int, Path] | None:
    """(bytes needed, bytes free, where) for the first file system that cannot take the ``indices`` files
    (default: the missing ones) plus the safety margin (Ultralytics' check_cache_disk); None when they fit."""
    need: dict[int, int] = {}
    where: dict[int, Path] = {}
    for i in p.missing if indices is None else indices:
        d = p.files[i].parent
        while not d.exists() and d != d.parent:
            d = d.parent
        dev = d.stat().st_dev
        need[dev] = need.get(dev, 0) + p.nbytes([i])
        where.setdefault(dev, d)
    for dev, n in need.items():
        free = shutil.disk_usage(where[dev]).free
        if n * (1 + SAFETY_MARGIN) > free:
            return n, free, where[dev]
    return None


def fill(p: DiskPlan, items: Sequence[tuple[Path, tuple[int, int]]], long_side: int, *,
         indices: Sequence[int] | None = None, threads: int | None = None) -> int:
    """Decode the ``indices`` images (default: the missing ones) as ``read_resized`` does, on a thread pool,
    and write their files. Returns how many were written; raises DataError for an image that cannot be
    decoded."""
    def one(i: int) -> bool:
        return save(p.files[i], read_resized(items[i][0], items[i][1], long_side))

    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        return sum(pool.map(one, p.missing if indices is None else indices))
