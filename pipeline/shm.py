"""Per-camera shared-memory frame ring. Imports only pipeline.messages.

Why shared memory: a 1080p BGR frame is 6 MB; pickling it through a pipe costs two copies and a
syscall storm per frame, a slot write costs one memcpy. Decoders (writers) never block; the device
stage (reader) takes only the newest frame, so a slow reader skips frames instead of queueing them
(newest wins) and counts what it skipped as drops.

A file decoder run with ``lossless`` waits, before publishing a frame, until the reader has taken
the previous one (``taken_seq``): a recording is then processed frame by frame at the model's pace.
That is the one case where a writer waits; live sources never do.

Two kinds of segment per camera, all named ``segpipe_<supervisor pid>_<camera index>_*``:

* control block ``..._c`` (created and unlinked by the supervisor; outlives decoder restarts):
  heartbeat, state, counters, and ``gen``/``latest_seq`` that point at the newest frame.
* data segment ``..._d<gen>`` (created by the decoder): a 64-byte segment header (slot count, slot
  capacity) then ``nslots`` slots of [64-byte slot header | pixels]. A frame larger than a slot
  (a camera that reconnects at a higher resolution) makes the writer create generation ``gen + 1``
  and unlink the old one; the reader re-attaches when it sees the new ``gen``.

Each field has exactly one writing process, so no locks: aligned 8-byte stores are atomic on the
platforms we run on (x86-64, aarch64), and a per-slot seqlock (odd while being written) lets the
reader detect a slot that was overwritten while it copied it and retry.

Lifetime: segments are unregistered from multiprocessing's resource tracker (it would unlink them
when the first attaching process exits, bpo-39959); the supervisor unlinks every segment of its
prefix on exit, and ``sweep_stale()`` removes segments left behind by a supervisor that was killed.
"""

from __future__ import annotations

import _posixshmem  # the POSIX shm_unlink that multiprocessing.shared_memory itself uses
import os
import time
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory

import numpy as np

from pipeline.messages import Frame

ROOT = "segpipe_"
SHM_DIR = "/dev/shm"
_ALIGN = 64

CONTROL_DTYPE = np.dtype([
    ("heartbeat", "f8"),    # decoder: time.monotonic() at its last loop iteration
    ("pid", "i8"),          # decoder: its process id
    ("state", "i8"),        # decoder: pipeline.camera.STATE_CODES of its state
    ("gen", "i8"),          # decoder: generation of the current data segment, -1 before the first
    ("latest_seq", "i8"),   # decoder: seq of the newest complete frame, -1 before the first
    ("decoded", "i8"),      # decoder: frames written since the pipeline started
    ("width", "i8"),        # decoder: size of the newest frame
    ("height", "i8"),
    ("stop", "i8"),         # supervisor: 1 asks the decoder to stop
    ("restarts", "i8"),     # supervisor: decoder process restarts
    ("dropped", "i8"),      # reader: frames overwritten before they were read
    ("stale", "i8"),        # reader: frames older than max_age_ms when the batcher would take them
    ("taken_seq", "i8"),    # reader: seq of the last frame taken or dropped as stale, -1 before the first
    ("inferred", "i8"),     # device stage: frames with results handed to the sinks
    ("latency_ms", "f8"),   # device stage: moving average of publish time - capture time
], align=True)

_SLOT_DTYPE = np.dtype([
    ("lock", "u8"),         # seqlock: odd while the writer fills the slot
    ("seq", "i8"),
    ("pts", "f8"),          # NaN when the stream has no timestamp
    ("capture_ts", "f8"),
    ("height", "i8"),
    ("width", "i8"),
], align=True)
_SEG_DTYPE = np.dtype([("nslots", "i8"), ("slot_bytes", "i8")], align=True)
assert _SLOT_DTYPE.itemsize <= _ALIGN and _SEG_DTYPE.itemsize <= _ALIGN


def _round_up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _open(name: str, *, size: int = 0) -> shared_memory.SharedMemory:
    """Create (size > 0) or attach (size == 0) a segment we manage ourselves (see module doc)."""
    shm = shared_memory.SharedMemory(name=name, create=size > 0, size=size)
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - tracker not running (e.g. in a bare subprocess): nothing to undo
        pass
    return shm


def _unlink(name: str) -> bool:
    """Remove a segment by name. Not SharedMemory.unlink(): that also unregisters the name from the
    resource tracker, which never saw it (see _open), and the tracker would print a KeyError."""
    try:
        _posixshmem.shm_unlink("/" + name.lstrip("/"))
    except FileNotFoundError:
        return False
    return True


def prefix_for(index: int, *, pid: int | None = None) -> str:
    """Segment-name prefix of camera ``index`` under supervisor ``pid`` (default: this process)."""
    return f"{ROOT}{os.getpid() if pid is None else pid}_{index}"


def list_segments(prefix: str) -> list[str]:
    """Names of existing segments starting with ``prefix`` (Linux: read from /dev/shm)."""
    if not os.path.isdir(SHM_DIR):
        return []
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))


def unlink_all(prefix: str) -> int:
    """Unlink every segment whose name starts with ``prefix``; returns how many were removed."""
    return sum(_unlink(n) for n in list_segments(prefix))


def sweep_stale() -> int:
    """Unlink segments of supervisors that no longer run (killed with SIGKILL); returns the count."""
    removed = 0
    for name in list_segments(ROOT):
        pid = name[len(ROOT):].split("_", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        removed += _unlink(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ControlBlock:
    """The fixed control segment of one camera (see CONTROL_DTYPE for who writes which field)."""

    def __init__(self, prefix: str, *, create: bool = False) -> None:
        self.prefix = prefix
        self._shm = _open(f"{prefix}_c", size=_round_up(CONTROL_DTYPE.itemsize) if create else 0)
        self._rec = np.ndarray((1,), CONTROL_DTYPE, buffer=self._shm.buf)
        if create:
            self._rec[0] = 0
            self._rec["gen"] = -1
            self._rec["latest_seq"] = -1
            self._rec["taken_seq"] = -1

    def get(self, field: str) -> float | int:
        return self._rec[field][0].item()

    def set(self, field: str, value: float | int) -> None:
        self._rec[field] = value

    def add(self, field: str, n: int = 1) -> None:
        """Increment a counter (only its single writer may call this)."""
        self._rec[field] += n

    def snapshot(self) -> dict[str, float | int]:
        """All fields as plain Python numbers (a racy but field-wise consistent read)."""
        rec = self._rec[0].copy()
        names = CONTROL_DTYPE.names
        assert names is not None  # a structured dtype
        return {name: rec[name].item() for name in names}

    def close(self) -> None:
        self._rec = None  # type: ignore[assignment]  # drop the view before closing the mapping
        self._shm.close()


class _DataSegment:
    """One generation of slots, attached read-write (writer) or read-only by convention (reader)."""

    def __init__(self, name: str, *, nslots: int = 0, slot_bytes: int = 0) -> None:
        create = nslots > 0
        slot_bytes = _round_up(slot_bytes)
        size = _ALIGN + nslots * (_ALIGN + slot_bytes) if create else 0
        self.name = name
        self._shm = _open(name, size=size)
        seg = np.ndarray((1,), _SEG_DTYPE, buffer=self._shm.buf)
        if create:
            seg["nslots"], seg["slot_bytes"] = nslots, slot_bytes
        self.nslots, self.slot_bytes = int(seg["nslots"][0]), int(seg["slot_bytes"][0])
        stride = _ALIGN + self.slot_bytes
        raw = np.ndarray((self.nslots, stride), np.uint8, buffer=self._shm.buf, offset=_ALIGN)
        self.headers = [raw[i, :_SLOT_DTYPE.itemsize].view(_SLOT_DTYPE) for i in range(self.nslots)]
        self.pixels = [raw[i, _ALIGN:] for i in range(self.nslots)]
        if create:
            for h in self.headers:
                h[0] = 0
                h["seq"] = -1

    def close(self) -> None:
        self.headers, self.pixels = [], []
        self._shm.close()

    def unlink(self) -> None:
        _unlink(self.name)


class RingWriter:
    """The decoder's end of a camera ring: ``write()`` never blocks and never fails on a slow reader.

    Sequence numbers continue from the control block, so they stay monotonic across decoder restarts.
    """

    def __init__(self, prefix: str, *, nslots: int = 4) -> None:
        if nslots < 2:
            raise ValueError(f"RingWriter.nslots: expected >= 2, got {nslots}")
        self.control = ControlBlock(prefix)
        self._nslots = nslots
        self._seg: _DataSegment | None = None
        gen = int(self.control.get("gen"))
        if gen >= 0:  # a restarted decoder reuses the previous process's generation
            try:
                self._seg = _DataSegment(f"{prefix}_d{gen}")
            except FileNotFoundError:
                self._seg = None
            for hdr in self._seg.headers if self._seg is not None else ():
                if int(hdr["lock"][0]) % 2:  # the previous decoder died mid-write: restore the parity
                    hdr["seq"] = -1  # and never offer that torn slot
                    hdr["lock"] += 1
        self._gen = gen
        self._next_seq = int(self.control.get("latest_seq")) + 1
        self.control.set("pid", os.getpid())

    def taken(self) -> bool:
        """True when the reader has taken (or dropped as stale) the newest published frame."""
        return self.control.get("taken_seq") >= self.control.get("latest_seq")

    def beat(self) -> None:
        """Record that the decoder loop is alive (the supervisor kills a decoder that stops beating)."""
        self.control.set("heartbeat", time.monotonic())

    def write(self, image: np.ndarray, *, pts: float | None, capture_ts: float) -> int:
        """Copy one (H, W, 3) uint8 BGR frame into the next slot and publish it; returns its seq."""
        h, w = image.shape[:2]
        nbytes = image.size
        if self._seg is None or nbytes > self._seg.slot_bytes:
            self._grow(nbytes)
        seg = self._seg
        assert seg is not None
        seq = self._next_seq
        slot = seq % seg.nslots
        hdr = seg.headers[slot]
        hdr["lock"] += 1  # odd: a reader that sees this (or a change) retries
        seg.pixels[slot][:nbytes] = image.reshape(-1)
        hdr["seq"], hdr["pts"] = seq, np.nan if pts is None else pts
        hdr["capture_ts"], hdr["height"], hdr["width"] = capture_ts, h, w
        hdr["lock"] += 1
        c = self.control
        c.set("width", w)
        c.set("height", h)
        c.set("latest_seq", seq)  # publish last: the reader only looks at slots it points to
        c.add("decoded")
        self._next_seq = seq + 1
        return seq

    def _grow(self, nbytes: int) -> None:
        old = self._seg
        self._gen += 1
        self._seg = _DataSegment(f"{self.control.prefix}_d{self._gen}", nslots=self._nslots,
                                 slot_bytes=nbytes)
        self.control.set("gen", self._gen)
        if old is not None:
            old.close()
            old.unlink()  # the reader keeps its mapping until it re-attaches to the new generation

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
        self.control.close()


class _Attached:
    """A camera ring opened by a process that reads it: its control block, and the data segment of its
    current generation (attached again when the writer moves to a new one)."""

    def __init__(self, prefix: str) -> None:
        self.control = ControlBlock(prefix)
        self._prefix = prefix
        self._seg: _DataSegment | None = None
        self._gen = -1

    def _segment(self) -> _DataSegment | None:
        gen = int(self.control.get("gen"))
        if gen != self._gen:
            if self._seg is not None:
                self._seg.close()
                self._seg = None
            try:
                self._seg = _DataSegment(f"{self._prefix}_d{gen}")
            except FileNotFoundError:  # replaced again in between: next call catches up
                return None
            self._gen = gen
        return self._seg

    def release_frames(self) -> None:
        """Unmap the frame slots (a removed camera's), keeping the control block."""
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    def close(self) -> None:
        self.release_frames()
        self.control.close()


class RingReader(_Attached):
    """The device stage's end of a camera ring: takes the newest unread frame, counts what it skipped.

    ``dropped`` counts frames that were overwritten or superseded before being read; ``stale`` counts
    frames that were newest but older than ``max_age_s``. Both are also written to the control block.
    """

    def __init__(self, prefix: str, *, camera_id: str) -> None:
        super().__init__(prefix)
        self.camera_id = camera_id
        # where the previous reader of this ring left off (a device stage started again after a crash): a
        # lossless writer waits for its newest frame to be taken, and frames missed meanwhile count as drops
        self.last_seq = int(self.control.get("taken_seq"))
        self.dropped = int(self.control.get("dropped"))  # the counters go on too: metrics take deltas of them
        self.stale = int(self.control.get("stale"))

    def pending(self) -> bool:
        """True when a frame newer than the last one taken has been published."""
        return int(self.control.get("latest_seq")) > self.last_seq

    def take(self, alloc: Callable[[tuple[int, int, int]], np.ndarray], *,
             max_age_s: float | None = None, now: float | None = None) -> Frame | None:
        """Copy the newest unread frame into ``alloc(shape)`` and return it as a ``Frame``.

        ``alloc`` returns a writable uint8 array of the given (H, W, 3) shape (a view into the
        staging buffer). Returns None when there is no new frame, when the newest one is older than
        ``max_age_s`` (counted in ``stale``), or when the writer kept overwriting it (retried later).
        """
        for _ in range(3):
            latest = int(self.control.get("latest_seq"))
            if latest <= self.last_seq:
                return None
            seg = self._segment()
            if seg is None:
                return None
            hdr = seg.headers[latest % seg.nslots]
            lock = int(hdr["lock"][0])
            if lock % 2 or int(hdr["seq"][0]) != latest:
                continue  # being rewritten, or already lapped: look at the new latest
            capture_ts = float(hdr["capture_ts"][0])
            if max_age_s is not None and (time.time() if now is None else now) - capture_ts > max_age_s:
                self._skip_to(latest, stale=True)
                return None
            h, w = int(hdr["height"][0]), int(hdr["width"][0])
            pts = float(hdr["pts"][0])
            out = alloc((h, w, 3))
            np.copyto(out, seg.pixels[latest % seg.nslots][: h * w * 3].reshape(h, w, 3))
            if int(hdr["lock"][0]) != lock:
                continue  # torn copy
            self._skip_to(latest, stale=False)
            return Frame(camera_id=self.camera_id, seq=latest, pts=None if np.isnan(pts) else pts,
                         capture_ts=capture_ts, image=out)
        return None

    def _skip_to(self, seq: int, *, stale: bool) -> None:
        skipped = seq - self.last_seq - 1
        if skipped > 0:
            self.dropped += skipped
            self.control.set("dropped", self.dropped)
        if stale:
            self.stale += 1
            self.control.set("stale", self.stale)
        self.last_seq = seq
        self.control.set("taken_seq", seq)


class RingPeek(_Attached):
    """Reads one given frame back from a camera ring, while the ring still holds it (its last ``nslots``
    frames): for a sink that wants the picture of an event after the fact. Touches no counter."""

    def frame(self, seq: int, copy: Callable[[np.ndarray], np.ndarray] = np.copy) -> np.ndarray | None:
        """``copy`` of frame ``seq`` ((H, W, 3) uint8 BGR, a view of the slot: ``copy`` may also shrink it),
        or None once the writer has overwritten it."""
        seg = self._segment()
        if seg is None:
            return None
        slot = seq % seg.nslots
        hdr = seg.headers[slot]
        lock = int(hdr["lock"][0])
        if lock % 2 or int(hdr["seq"][0]) != seq:
            return None
        h, w = int(hdr["height"][0]), int(hdr["width"][0])
        out = copy(seg.pixels[slot][: h * w * 3].reshape(h, w, 3))
        return out if int(hdr["lock"][0]) == lock else None  # rewritten while copied


class FrameLookup:
    """Camera id -> its ring, for ``RingPeek.frame``; rings are opened on first use and the table follows
    config reloads (``update``). Not thread-safe: one thread of one process uses it."""

    def __init__(self, prefixes: dict[str, str] | None = None) -> None:
        self._prefixes: dict[str, str] = dict(prefixes or {})
        self._open: dict[str, RingPeek] = {}

    def update(self, prefixes: dict[str, str]) -> None:
        """The run's rings now (camera id -> shm prefix); rings of cameras gone or moved are closed."""
        for camera_id in list(self._open):
            if prefixes.get(camera_id) != self._prefixes.get(camera_id):
                self._open.pop(camera_id).close()
        self._prefixes = dict(prefixes)

    def frame(self, camera_id: str, seq: int,
              copy: Callable[[np.ndarray], np.ndarray] = np.copy) -> np.ndarray | None:
        """``copy`` of camera ``camera_id``'s frame ``seq`` (see ``RingPeek.frame``), or None (unknown
        camera, frame overwritten)."""
        peek = self._open.get(camera_id)
        if peek is None:
            prefix = self._prefixes.get(camera_id)
            if prefix is None:
                return None
            try:
                peek = self._open[camera_id] = RingPeek(prefix)
            except FileNotFoundError:  # its control block is gone: the camera was removed meanwhile
                return None
        return peek.frame(seq, copy)

    def close(self) -> None:
        for peek in self._open.values():
            peek.close()
        self._open.clear()
