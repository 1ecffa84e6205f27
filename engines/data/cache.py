"""Checked labels of a split, cached on disk. Imports nothing from pipeline/.

Checking a split decodes every image once; the result is cached in a numpy ``.npz`` (no pickle)
keyed on the size and mtime of every image and label file, so any edit, addition or removal
invalidates it. The cache sits beside the labels folder when that folder's parent is writable,
else under ``$SEGPIPE_CACHE/labels`` (default ``~/.cache/segpipe``): shared datasets are read-only.
``derived_file`` holds that rule for every file derived from a dataset (the disk image cache uses it too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from engines.data.labels import ImageLabels, SplitStats, check_pairs, file_signature
from engines.data.polygons import segments_to_boxes
from engines.data.spec import img2label_path, resolve_images
from engines.errors import DataError

LOG = logging.getLogger("segpipe.data")

CACHE_VERSION = 1
_STAT_FIELDS = ("images", "labelled", "background", "missing", "corrupt", "duplicates")


@dataclass(frozen=True, slots=True)
class SplitLabels:
    """A checked split: labels in image order, its counts, and the cache file used (None if unwritable)."""

    labels: tuple[ImageLabels, ...]
    stats: SplitStats
    cache_file: Path | None


def default_cache_root() -> Path:
    """``$SEGPIPE_CACHE`` or ``~/.cache/segpipe``."""
    return Path(os.environ.get("SEGPIPE_CACHE") or "~/.cache/segpipe").expanduser()


def is_writable_dir(d: Path) -> bool:
    """Writable by us *and* meant to be: root passes os.access everywhere, so the write bits decide
    (CI lays the shared datasets out without write bits)."""
    try:
        mode = d.stat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and os.access(d, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def digest(*parts: object) -> str:
    """sha1 hex of the parts as JSON (non-JSON values by str): a stable key for cache names."""
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()


def cache_path(im_files: Sequence[Path], sources: Sequence[Path], *, cache_dir: Path | None = None) -> Path:
    """Where the cache of a split lives: beside its labels folder when writable, else in the cache root.

    The name carries a hash of the split's sources, so two splits sharing a labels folder but not
    their sources (``train: [a, b]``, ``val: a``) keep separate caches.
    """
    label_dir = img2label_path(im_files[0]).parent
    src_id = digest(sorted(map(os.fspath, sources)))[:10]
    return derived_file(label_dir.parent if label_dir.is_dir() else None, f"{label_dir.name}.{src_id}.segpipe-labels.npz",
                        f"{label_dir.name}.{digest(os.fspath(label_dir), src_id)[:10]}.segpipe-labels.npz",
                        kind="labels", cache_dir=cache_dir)


def derived_file(folder: Path | None, beside: str, away: str, *, kind: str, cache_dir: Path | None = None) -> Path:
    """Where a file derived from a dataset goes (label caches, decoded images): ``folder / beside`` when
    ``folder`` is writable and no ``cache_dir`` is given, else ``away`` under ``cache_dir`` or
    ``$SEGPIPE_CACHE/<kind>`` (shared datasets are read-only). ``away`` must name its source uniquely
    (a digest of its path), since files of every dataset meet there."""
    if cache_dir is None and folder is not None and is_writable_dir(folder):
        return folder / beside
    return (Path(cache_dir) if cache_dir is not None else default_cache_root() / kind) / away


def split_images(sources: Sequence[str | os.PathLike[str]], *, split: str, warn: bool = True
                 ) -> tuple[list[Path], list[Path]]:
    """``(found, missing)`` image files of one split's ``sources`` (see ``resolve_images``); DataError when
    none is found, a warning (``warn``) for listed images that do not exist."""
    srcs = [Path(s) for s in sources]
    files, missing = resolve_images(srcs, split=split)
    if not files:
        extra = f" ({len(missing)} listed images do not exist, e.g. {missing[0]})" if missing else ""
        raise DataError(f"{split}: no images found in {', '.join(map(str, srcs))}{extra}")
    if missing and warn:
        LOG.warning("%s: %d listed images do not exist, e.g. %s", split, len(missing), missing[0])
    return files, missing


def load_split(sources: Sequence[str | os.PathLike[str]], *, nc: int | None, split: str = "train",
               cache_dir: Path | None = None, skip_corrupt: bool = False) -> SplitLabels:
    """Resolve, check and cache the labels of one split.

    sources: folders, image-list .txt files or image files (see ``resolve_images``).
    Raises DataError for a missing source, an empty split, or (unless ``skip_corrupt``) the first bad
    image or label line.
    """
    srcs = [Path(s) for s in sources]
    files, missing = split_images(srcs, split=split)
    key = digest(CACHE_VERSION, nc, skip_corrupt, len(missing), file_signature(files))
    path = cache_path(files, srcs, cache_dir=cache_dir)
    cached = _read(path, key, split)
    if cached is not None:
        return SplitLabels(labels=tuple(cached[0]), stats=cached[1], cache_file=path)
    labels, stats = check_pairs(files, nc=nc, split=split, missing=len(missing), skip_corrupt=skip_corrupt)
    if not labels:
        raise DataError(f"{split}: every image was skipped as corrupt; first: {stats.messages[0]}")
    written = _write(path, key, labels, stats)
    return SplitLabels(labels=tuple(labels), stats=stats, cache_file=written)


def _write(path: Path, key: str, labels: list[ImageLabels], stats: SplitStats) -> Path | None:
    counts = [len(lab) for lab in labels]
    segs = [s for lab in labels for s in lab.segments]
    # Any: with ndarray values mypy checks the ** below against savez's allow_pickle: bool too.
    arrays: dict[str, Any] = {
        "key": np.array(key),
        "files": np.array([os.fspath(lab.im_file) for lab in labels]),
        "shapes": np.array([lab.shape for lab in labels], np.int64).reshape(-1, 2),
        "counts": np.array(counts, np.int64),
        "cls": np.concatenate([lab.cls for lab in labels]) if labels else np.zeros(0, np.int64),
        "npts": np.array([len(s) for s in segs], np.int64),
        "points": np.concatenate(segs).astype(np.float32) if segs else np.zeros((0, 2), np.float32),
        "stats": np.array([getattr(stats, f) for f in _STAT_FIELDS], np.int64),
        "messages": np.array(stats.messages if stats.messages else [""]),
    }
    return path if write_atomic(path, lambda f: np.savez(f, **arrays), "label cache") else None


def write_atomic(path: Path, write: Callable[[IO[bytes]], object], what: str) -> bool:
    """Write ``path`` through ``write(file)`` into a temporary file renamed over it, so a reader (another
    process, a later run after an interrupted one) never sees half a file. A cache is worth no error: on
    failure, a warning naming ``what``, the temporary file removed, and False."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        LOG.warning("%s not written (%s): %s", what, path, e)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        return False
    return True


def _read(path: Path, key: str, split: str) -> tuple[list[ImageLabels], SplitStats] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            files, shapes, counts = z["files"], z["shapes"], z["counts"]
            cls, npts, points = z["cls"], z["npts"], z["points"]
            st, msgs = z["stats"], tuple(m for m in map(str, z["messages"]) if m)
        segs = np.split(points, np.cumsum(npts)[:-1]) if len(npts) else []
        labels, i = [], 0
        for f, shape, n in zip(files, shapes, counts, strict=True):
            s = list(segs[i:i + n])
            labels.append(ImageLabels(im_file=Path(str(f)), shape=(int(shape[0]), int(shape[1])),
                                      cls=cls[i:i + n].copy(), segments=s, boxes=segments_to_boxes(s)))
            i += int(n)
        stats = SplitStats(split, **{f: int(v) for f, v in zip(_STAT_FIELDS, st, strict=True)}, messages=msgs)
    except (OSError, KeyError, ValueError, TypeError) as e:  # unreadable or foreign file: rebuild it
        LOG.warning("ignoring unreadable label cache %s: %s", path, e)
        return None
    return labels, stats
