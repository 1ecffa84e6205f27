"""COCO run-length encoding, compatible with pycocotools. Imports only numpy.

A mask (H, W) is read column by column (Fortran order); ``counts`` alternate runs of 0s and 1s and
start with a 0-run (possibly of length 0). The compressed string is pycocotools' ``rleToString``:
each count (after the third, as the difference to the count two places back) in little-endian
5-bit groups, 0x20 marking continuation, offset by 48 into printable ASCII.

Everything is vectorised numpy: the only Python loops run over the at most 13 digit positions of a
64-bit count, never over pixels or runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RLE = dict[str, Any]  # {"size": [H, W], "counts": str}

def encode(mask: np.ndarray) -> RLE:
    """(H, W) bool (or 0/1 integer) mask -> ``{"size": [H, W], "counts": str}`` (pycocotools format)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle.encode mask: expected shape (H, W), got {mask.shape}")
    h, w = mask.shape
    return encode_crop(mask, 0, 0, h, w)


def encode_crop(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> RLE:
    """Full-frame RLE of a mask that is zero outside ``crop``, without building the frame.

    crop: (h, w) bool, covering frame pixels ``[y0, y0 + h) x [x0, x0 + w)``; it must lie inside the
    (height, width) frame. Cost is O(h * w), independent of the frame size.
    """
    crop = np.asarray(crop)
    if crop.ndim != 2:
        raise ValueError(f"rle.encode_crop crop: expected shape (h, w), got {crop.shape}")
    h, w = crop.shape
    if not (0 <= x0 and 0 <= y0 and x0 + w <= width and y0 + h <= height):
        raise ValueError(f"rle.encode_crop: crop of shape {(h, w)} at (x0={x0}, y0={y0}) does not fit a "
                         f"frame of (H={height}, W={width})")
    return {"size": [int(height), int(width)], "counts": counts_to_string(_crop_counts(crop, x0, y0, height, width))}


def _crop_counts(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """Uncompressed counts (int64) of the frame mask described by a crop."""
    total = height * width
    if crop.size == 0 or total == 0:
        return np.array([total] if total else [], dtype=np.int64)
    # Column-major walk of the crop: pad each column with a 0 above and below so every 1-run has a
    # start and an end inside its own column.
    col = np.zeros((crop.shape[1], crop.shape[0] + 2), dtype=np.int8)
    col[:, 1:-1] = crop.T.astype(bool)
    d = np.diff(col, axis=1)  # +1 at run starts, -1 one past run ends, per column
    cj, ci = np.nonzero(d == 1)
    ej, ei = np.nonzero(d == -1)
    starts = (x0 + cj) * height + (y0 + ci)
    ends = (x0 + ej) * height + (y0 + ei)
    if starts.size == 0:
        return np.array([total], dtype=np.int64)
    # A run ending at the bottom row continues into the next column's top row when the crop spans the
    # frame's full height: merge those touching pairs.
    touch = ends[:-1] == starts[1:]
    if touch.any():
        starts = np.concatenate([starts[:1], starts[1:][~touch]])
        ends = np.concatenate([ends[:-1][~touch], ends[-1:]])
    bounds = np.empty(2 * starts.size + 2, dtype=np.int64)
    bounds[0], bounds[1:-1:2], bounds[2:-1:2], bounds[-1] = 0, starts, ends, total
    counts = np.diff(bounds)
    return counts[:-1] if counts[-1] == 0 else counts  # no trailing empty 0-run


def decode(rle: RLE) -> np.ndarray:
    """``{"size": [H, W], "counts": str | bytes | list[int]}`` -> (H, W) bool mask."""
    h, w = _size(rle)
    counts = rle["counts"]
    counts = np.asarray(counts, dtype=np.int64) if isinstance(counts, list) else string_to_counts(counts)
    if counts.sum() != h * w:
        raise ValueError(f"rle.decode: counts sum to {int(counts.sum())}, expected H*W = {h * w}")
    values = np.arange(counts.size, dtype=np.int64) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T


def area(rle: RLE) -> int:
    """Number of foreground pixels (pycocotools.mask.area)."""
    counts = rle["counts"]
    counts = np.asarray(counts, dtype=np.int64) if isinstance(counts, list) else string_to_counts(counts)
    return int(counts[1::2].sum())


def counts_to_string(counts: np.ndarray) -> str:
    """pycocotools' rleToString: uncompressed counts (k,) int -> compressed ASCII string."""
    counts = np.asarray(counts, dtype=np.int64)
    x = counts.copy()
    if x.size > 2:
        x[3:] -= counts[1:-2]
    if x.size == 0:
        return ""
    # Digits per value: the fewest 5-bit groups whose top bit can carry the sign, i.e. the smallest k
    # with -2**(5k-1) <= x < 2**(5k-1). frexp's exponent is the bit length (exact below 2**53).
    mag = np.where(x < 0, ~x, x)
    ndig = np.maximum((np.frexp(mag.astype(np.float64))[1] + 5) // 5, 1)
    kmax = int(ndig.max())
    digits = np.empty((kmax, x.size), dtype=np.uint8)
    for k in range(kmax):  # digit positions (at most 13), not pixels or runs
        more = (k < ndig - 1).astype(np.uint8)
        digits[k] = ((x >> (5 * k)) & 0x1F).astype(np.uint8) | (more << 5)
    used = np.arange(kmax)[None, :] < ndig[:, None]  # (n, kmax), value-major like the output
    return (digits.T[used] + 48).tobytes().decode("ascii")


def string_to_counts(s: str | bytes) -> np.ndarray:
    """pycocotools' rleFrString: compressed string -> uncompressed counts (k,) int64."""
    raw = np.frombuffer(s.encode("ascii") if isinstance(s, str) else bytes(s), dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    c = raw.astype(np.int64) - 48
    if (c < 0).any() or (c > 63).any():
        raise ValueError("rle counts string: characters outside the COCO RLE alphabet")
    last = (c & 0x20) == 0  # a value ends at a digit without the continuation bit
    if not last[-1]:
        raise ValueError("rle counts string: truncated (last digit has the continuation bit)")
    group = np.concatenate([[0], np.cumsum(last[:-1])])  # value index of each digit
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    pos = np.arange(c.size) - starts[group]  # digit position within its value
    vals = np.add.reduceat((c & 0x1F) << (5 * pos), starts)
    ndig = np.diff(np.append(starts, c.size))
    neg = (c[last] & 0x10) != 0
    vals[neg] |= -1 << (5 * ndig[neg])  # sign-extend
    # Undo the delta coding: counts[i] = vals[i] + counts[i - 2] for i > 2.
    counts = vals.copy()
    if counts.size > 3:
        counts[3::2] = counts[1] + np.cumsum(vals[3::2])
    if counts.size > 4:
        counts[4::2] = counts[2] + np.cumsum(vals[4::2])
    return counts


def _size(rle: RLE) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in rle["size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"rle: expected a 'size' of [H, W], got {rle.get('size') if isinstance(rle, dict) else rle!r}") from e
    return h, w
