"""Subscriber helpers: parse events, decode their masks into numpy arrays, read Redis streams.

Depends on ``pipeline.events`` (for the version), pycocotools and redis; usable from any consumer
process without the rest of segpipe running. Masks decode to ``bool`` arrays either over the whole
frame ``(H, W)`` or cropped to the detection's box ``(y1 - y0, x1 - x0)`` (see ``box_window``); a
crop of an RLE mask is decoded without building the full frame. ``StreamReader`` (every reader sees
everything) and ``GroupReader`` (consumer group: events shared among readers, acknowledged,
at-least-once) read the Redis sink's streams; ``segpipe listen`` is built on them. ``verify_webhook``
checks the signature of a webhook sink's request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis
from pycocotools import mask as mask_utils
from redis.typing import KeyT, StreamIdT

from engines.errors import DataError
from pipeline.events import SCHEMA_VERSION

Window = tuple[int, int, int, int]
"""Integer pixel window ``(x0, y0, x1, y1)``, half-open, in frame pixels."""

_StreamsReply = list[list[Any]]
"""An XREAD / XREADGROUP reply as RESP2, redis-py's default protocol, gives it: ``[[stream, entries], ...]``
(the stubs also allow RESP3's dict, which these readers never ask for)."""


def parse_event(data: bytes | str) -> dict[str, Any]:
    """Decode one event's JSON and check it is a segpipe event this client understands."""
    try:
        event = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"event is not JSON: {e}") from None
    if not isinstance(event, dict) or event.get("kind") not in ("frame", "status"):
        raise DataError("event has no kind 'frame' or 'status'")
    version = event.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        raise DataError(f"event version {version!r} is not supported (this client reads 1..{SCHEMA_VERSION})")
    return event


def box_window(box: Sequence[float], height: int, width: int) -> Window:
    """The smallest integer window holding ``box`` ``[x1, y1, x2, y2]`` (frame pixels), clipped to
    the frame: ``(floor(x1), floor(y1), ceil(x2), ceil(y2))``."""
    x1, y1, x2, y2 = box
    x0, y0 = min(max(math.floor(x1), 0), width), min(max(math.floor(y1), 0), height)
    return x0, y0, max(min(math.ceil(x2), width), x0), max(min(math.ceil(y2), height), y0)


def rle_counts(counts: str) -> np.ndarray:
    """Run lengths ``(k,) int64`` from a COCO compressed counts string (pycocotools' ``rleFrString``).

    Runs alternate background/foreground starting with background, column-major over the frame.
    Each count is 5-bit groups, low first, in chars ``48 + group`` with bit 0x20 meaning "more
    follows" and bit 0x10 of the last group the sign; counts after the third are stored as the
    difference from the count two before. Vectorised: this runs once per mask in a subscriber.
    """
    if not counts.isascii():
        raise DataError("RLE counts are not a COCO compressed string (non-ASCII characters)")
    c = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    if c.min() < 0 or c.max() > 63 or c[-1] & 0x20:
        raise DataError("RLE counts are not a COCO compressed string (characters outside '0'..'o', or cut short)")
    last = (c & 0x20) == 0  # the last char of each count
    ends = np.flatnonzero(last)
    group = np.concatenate([[0], np.cumsum(last)[:-1]])  # which count each char belongs to
    starts = np.concatenate([[0], ends[:-1] + 1])
    k = np.arange(c.size) - starts[group]  # position of each char within its count
    x = np.zeros(ends.size, np.int64)
    np.add.at(x, group, (c & 0x1F) << (5 * k))
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * (k[ends][negative] + 1))
    # counts[i] += counts[i - 2] for i > 2: running sums along the odd chain from 1 and the even one from 2
    x[1::2] = np.cumsum(x[1::2])
    x[2::2] = np.cumsum(x[2::2])
    return x


def _rle_runs(mask: dict[str, Any], height: int, width: int) -> np.ndarray:
    """The run lengths of an RLE mask (compressed string, its bytes, or a list), checked to cover the frame."""
    counts = mask.get("counts")
    if isinstance(counts, bytes):  # pycocotools' own dicts carry bytes
        counts = counts.decode("latin-1")
    if isinstance(counts, str):
        runs = rle_counts(counts)
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        runs = np.asarray(counts, np.int64)
    else:
        raise DataError(f"RLE counts: expected a string or a list of ints, got {type(counts).__name__}")
    if runs.size and int(runs.min()) < 0:
        raise DataError("RLE counts hold a negative run")
    if int(runs.sum()) != height * width:
        raise DataError(f"RLE counts cover {int(runs.sum())} pixels, size says {height}x{width}")
    return runs


def _decode_rle_window(runs: np.ndarray, height: int, window: Window) -> np.ndarray:
    x0, y0, x1, y1 = window
    # Column-major: pixel (x, y) is at x * H + y, so columns x0..x1 are one contiguous index range.
    lo, hi = x0 * height, x1 * height
    ends = np.cumsum(runs)
    starts = ends - runs
    first, stop = np.searchsorted(ends, lo, side="right"), np.searchsorted(starts, hi, side="left")
    lengths = np.minimum(ends[first:stop], hi) - np.maximum(starts[first:stop], lo)
    values = (np.arange(first, stop) % 2).astype(bool)  # odd runs are foreground
    flat = np.repeat(values, np.maximum(lengths, 0))
    cols = flat.reshape(x1 - x0, height).T
    return np.ascontiguousarray(cols[y0:y1])


def _decode_polygons(polygons: list[list[float]], window: Window) -> np.ndarray:
    if not isinstance(polygons, list) or not all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in p) for p in polygons):
        raise DataError("polygons: expected a list of [x1, y1, x2, y2, ...] lists of >= 3 (x, y) pairs")
    x0, y0, x1, y1 = window
    h, w = y1 - y0, x1 - x0
    if h == 0 or w == 0 or not polygons:
        return np.zeros((h, w), bool)
    # An integer shift moves pycocotools' rasterisation exactly, so a crop matches the full frame.
    shifted = [(np.asarray(p, np.float64).reshape(-1, 2) - (x0, y0)).ravel().tolist() for p in polygons]
    rle = mask_utils.merge(mask_utils.frPyObjects(shifted, h, w))
    return mask_utils.decode(rle).astype(bool)


def decode_mask(mask: dict[str, Any], height: int, width: int, *, window: Window | None = None) -> np.ndarray:
    """One event mask (``{"format": "rle" | "polygon", ...}``) as a ``bool`` array; ``DataError`` for a
    malformed one (corrupt counts, runs not covering the frame, a polygon with an odd count of numbers).

    ``window=None`` gives the full frame ``(height, width)``; a window ``(x0, y0, x1, y1)`` gives
    ``(y1 - y0, x1 - x0)``, the same pixels as the full mask sliced ``[y0:y1, x0:x1]``.
    """
    win = (0, 0, width, height) if window is None else window
    fmt = mask.get("format")
    if fmt == "rle":
        size = mask.get("size")
        if not isinstance(size, list | tuple) or list(size) != [height, width]:
            raise DataError(f"RLE size {mask.get('size')} does not match the frame [{height}, {width}]")
        runs = _rle_runs(mask, height, width)  # checked first: pycocotools decodes a corrupt string silently
        if window is None and isinstance(mask["counts"], str | bytes):
            return mask_utils.decode({"size": [height, width], "counts": mask["counts"]}).astype(bool)
        return _decode_rle_window(runs, height, win)
    if fmt == "polygon":
        return _decode_polygons(mask.get("polygons"), win)  # type: ignore[arg-type]
    raise DataError(f"unknown mask format {fmt!r} (expected 'rle' or 'polygon')")


def decode_masks(event: dict[str, Any], *, crop: bool = False) -> list[np.ndarray | None]:
    """Masks of a frame event in detection order: ``None`` where a detection has no mask.

    ``crop=False``: ``(H, W)`` bool per detection; ``crop=True``: the box crop given by
    ``box_window(det["box"], H, W)``. A mask can reach a pixel past its box, as Ultralytics' masks do (cut
    to the box at the model's input size, then scaled to the frame): the crop leaves that pixel out.
    """
    height, width = int(event["frame"]["height"]), int(event["frame"]["width"])
    out: list[np.ndarray | None] = []
    for det in event.get("detections", ()):
        mask = det.get("mask")
        if mask is None:
            out.append(None)
            continue
        window = box_window(det["box"], height, width) if crop else None
        out.append(decode_mask(mask, height, width, window=window))
    return out


# ----------------------------------------------------------------------------------- stream readers


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``<timestamp>.<body>`` under ``secret``, as a webhook sink with
    ``secret`` sends it in ``X-Segpipe-Signature``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_webhook(secret: str, body: bytes, headers: Mapping[str, str] | Mapping[bytes, bytes], *,
                   tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """Whether a webhook request is segpipe's: its ``X-Segpipe-Signature`` signs this exact ``body`` and
    its ``X-Segpipe-Timestamp`` under ``secret``, and that timestamp is within ``tolerance_s`` of ``now``
    (so a recorded request cannot be replayed later). ``headers``: any mapping, names in any case, names
    and values ``str`` or ``bytes`` (ASGI's raw headers: ``dict(scope["headers"])``). Whatever the
    headers hold, the answer is ``True`` or ``False``: a forged request never raises."""
    low = {_header_text(k).lower(): _header_text(v) for k, v in headers.items()}
    ts, sig = low.get("x-segpipe-timestamp", ""), low.get("x-segpipe-signature", "")
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses
    if not (ts.isascii() and ts.isdigit()) or not sig.isascii():
        return False
    if abs((time.time() if now is None else now) - int(ts)) > tolerance_s:
        return False
    return hmac.compare_digest(webhook_signature(secret, ts, body), sig)


def _header_text(v: str | bytes) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v  # HTTP header bytes are latin-1


@dataclass(frozen=True, slots=True)
class Message:
    """One event read from Redis: its stream key, entry id, and raw JSON bytes."""

    stream: str
    id: str
    data: bytes


def as_text(v: bytes | str) -> str:
    """A Redis reply (a key, an id, a type) as ``str``, whether the client decodes responses or not."""
    return v.decode() if isinstance(v, bytes) else v


def _entries(stream: bytes | str, entries: list[Any]) -> list[Message]:
    out = []
    for entry_id, fields in entries:
        if fields is None:  # Redis < 7 reports a pending entry that MAXLEN trimmed away as nil
            continue
        data = fields.get(b"event", fields.get("event"))
        out.append(Message(stream=as_text(stream), id=as_text(entry_id), data=data if data is not None else b""))
    return out


def stream_keys(client: redis.Redis, prefix: str = "segpipe:", camera: str | None = None) -> list[str]:
    """The camera streams to read: ``prefix + camera``, or every stream key under ``prefix``."""
    if camera is not None:
        return [f"{prefix}{camera}"]
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"  # the prefix taken literally, not as a glob
    return sorted(as_text(k) for k in client.scan_iter(match=pattern, _type="stream", count=1000))


class StreamReader:
    """Plain ``XREAD`` over camera streams: every reader sees every event (no acknowledgements)."""

    def __init__(self, client: redis.Redis, keys: list[str], *, start: str = "$") -> None:
        """``start``: ``"$"`` (events added from now on) or an entry id such as ``"0-0"`` (all it holds)."""
        self.client = client
        # "$" is resolved to each stream's last id now: passed to XREAD as is, it would mean "after the
        # newest entry at the time of *that* call", losing what arrived before the first read and, on
        # every stream but the ones a read returned, what arrived between two reads.
        self._last: dict[KeyT, StreamIdT] = {k: self._last_id(k) if start == "$" else start for k in keys}

    def _last_id(self, key: str) -> str:
        try:
            return as_text(cast(dict[str, Any], self.client.xinfo_stream(key))["last-generated-id"])
        except redis.ResponseError:  # no such stream yet: everything it will hold is new
            return "0-0"

    def add_keys(self, keys: list[str]) -> None:
        for k in keys:
            self._last.setdefault(k, "0-0")  # a camera that appeared later: read it from its start

    def read(self, *, count: int = 100, block_ms: int = 1000) -> list[Message]:
        if not self._last:
            time.sleep(block_ms / 1000)
            return []
        reply = cast(_StreamsReply, self.client.xread(self._last, count=count, block=block_ms) or [])
        out = [m for stream, entries in reply for m in _entries(stream, entries)]
        for m in out:
            self._last[m.stream] = m.id
        return out


class GroupReader:
    """``XREADGROUP`` consumer: readers sharing ``group`` split the events, each delivered to one
    of them; ``ack`` after handling. Unacknowledged events of a consumer idle for ``claim_idle_ms``
    are claimed (``XAUTOCLAIM``) by another, so a crashed reader loses nothing that Redis still
    holds (MAXLEN trimming bounds that). A restarted consumer first re-reads its own pending events.
    """

    def __init__(self, client: redis.Redis, keys: list[str], *, group: str, consumer: str,
                 claim_idle_ms: int = 30_000) -> None:
        self.client, self.group, self.consumer, self.claim_idle_ms = client, group, consumer, claim_idle_ms
        self.keys: list[str] = []
        self._cursor: dict[str, str] = {}
        self._own_pending: set[str] = set()
        self._next_claim = 0.0  # monotonic time of the next XAUTOCLAIM sweep
        self.trimmed = 0  # pending entries MAXLEN removed before anyone acknowledged them
        self.add_keys(keys)

    def add_keys(self, keys: list[str]) -> None:
        """Read these streams too, creating the group (at the stream's start) where missing."""
        for key in keys:
            if key in self._cursor:
                continue
            self._create_group(key)
            self.keys.append(key)
            self._cursor[key] = "0-0"
            self._own_pending.add(key)

    def _create_group(self, key: str) -> None:
        try:
            # "0": a new group also gets what the stream already holds (at-least-once).
            self.client.xgroup_create(key, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _recreate_groups(self) -> None:
        """A Redis restarted without persistence (or a stream deleted) lost the group: create it again
        at the start of what the streams hold now; its pending entries are gone with it."""
        for key in self.keys:
            self._create_group(key)
            self._cursor[key] = "0-0"
        self._own_pending = set(self.keys)

    def _claim(self, key: str, count: int) -> list[Message]:
        reply = self.client.xautoclaim(key, self.group, self.consumer, self.claim_idle_ms,
                                       start_id=self._cursor[key], count=count)
        self._cursor[key] = as_text(reply[0])
        if len(reply) > 2:
            self.trimmed += len(reply[2])
        return _entries(key, reply[1])

    def read(self, *, count: int = 100, block_ms: int = 1000) -> list[Message]:
        """Up to ``count`` events: own pending first, then claimed stale ones, then new ones. A group
        that vanished (Redis restarted without persistence) is created again."""
        try:
            return self._read(count, block_ms)
        except redis.ResponseError as e:
            if not str(e).startswith("NOGROUP"):
                raise
        self._recreate_groups()
        return self._read(count, block_ms)

    def _read(self, count: int, block_ms: int) -> list[Message]:
        if self._own_pending:
            key = self._own_pending.pop()
            reply = cast(_StreamsReply,
                         self.client.xreadgroup(self.group, self.consumer, {key: "0"}, count=count) or [])
            mine = [m for stream, entries in reply for m in _entries(stream, entries)]
            if mine:
                self._own_pending.add(key)  # there may be more: come back until empty
                return mine
        if time.monotonic() >= self._next_claim:
            for key in self.keys:
                claimed = self._claim(key, count)
                if claimed:
                    return claimed  # sweep again next time: there may be more
            # nothing stale: entries cannot become claimable faster than claim_idle_ms
            self._next_claim = time.monotonic() + min(self.claim_idle_ms / 2000, 5.0)
        if not self.keys:
            time.sleep(block_ms / 1000)
            return []
        reply = cast(_StreamsReply, self.client.xreadgroup(self.group, self.consumer,
                                                           dict.fromkeys(self.keys, ">"), count=count,
                                                           block=block_ms) or [])
        return [m for stream, entries in reply for m in _entries(stream, entries)]

    def ack(self, msg: Message) -> None:
        self.client.xack(msg.stream, self.group, msg.id)
