"""A first-in first-out queue of events on disk, for a sink whose server is away (``spool_dir``).

Imports nothing from pipeline/. Events are appended to numbered segment files
(``<dir>/000000000001.spool``, ...) as records of a 4-byte big-endian length then ``camera id, NUL,
payload``; they are read back from the oldest segment on, and a segment is deleted once every record
in it has been taken. A spool left by an earlier run is picked up where it is: its events go out
first. The head segment's read position is not stored, so after a crash the events already taken
from it are sent again (at least once, as for the sink itself). A record cut short by a crash at
the tail is dropped. Past ``max_bytes`` the oldest segments are deleted, their events counted.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from engines.errors import SinkError

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
_SUFFIX = ".spool"


def _records(data: bytes) -> tuple[list[tuple[str, bytes]], int]:
    """The whole records in ``data`` and the bytes they take (a cut-short record at the end is left)."""
    out, pos = [], 0
    while pos + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        if pos + _LEN.size + n > len(data):
            break
        camera, _, payload = data[pos + _LEN.size:pos + _LEN.size + n].partition(b"\0")
        out.append((camera.decode(), payload))
        pos += _LEN.size + n
    return out, pos


class Spool:
    """Events on disk, oldest first. Not thread-safe: one sink worker thread owns it."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # segments of 8 MiB, or a sixteenth of a small bound: the bound drops a segment at a time
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(8 * 2**20, max(max_bytes // 16, 64 * 2**10))
        self._segments = sorted(self.directory.glob(f"*{_SUFFIX}"))  # oldest first; the last is written
        self._head: list[tuple[str, bytes]] = []  # records read from the oldest segment, not yet taken
        self._head_read = False
        self._tail: BinaryIO | None = None
        self._next = int(self._segments[-1].stem) + 1 if self._segments else 1
        self._bytes = sum(p.stat().st_size for p in self._segments)
        self.pending = sum(len(_records(p.read_bytes())[0]) for p in self._segments)

    def __len__(self) -> int:
        return self.pending

    @property
    def nbytes(self) -> int:
        return self._bytes

    def append(self, records: list[tuple[str, bytes]]) -> Counter[str]:
        """Add ``records`` (camera id, payload) at the tail; returns the events dropped per camera to
        stay under ``max_bytes`` (the oldest segments go first)."""
        for camera, payload in records:
            if self._tail is None or self._tail.tell() >= self.segment_bytes:
                self._open_tail()
            assert self._tail is not None
            body = camera.encode() + b"\0" + payload
            self._tail.write(_LEN.pack(len(body)) + body)
            self._bytes += _LEN.size + len(body)
            self.pending += 1
        if self._tail is not None:
            self._tail.flush()  # in the OS's hands: a crash of this process loses nothing
        dropped: Counter[str] = Counter()
        while self._bytes > self.max_bytes and len(self._segments) > 1:
            dropped.update(camera for camera, _ in self._drop_oldest())
        return dropped

    def peek(self, n: int) -> list[tuple[str, bytes]]:
        """Up to ``n`` of the oldest records (from one segment), left in the spool until ``take``."""
        if not self._head_read and self._segments:
            if self._segments[0] == self._tail_path and self._tail is not None:
                self._tail.close()  # reading the segment being written: start a new one for appends
                self._tail = None
            self._head, _ = _records(self._segments[0].read_bytes())
            self._head_read = True
        return self._head[:n]

    def take(self, n: int) -> None:
        """Remove the ``n`` oldest records (sent, or given up on); a segment emptied is deleted."""
        del self._head[:n]
        self.pending -= n
        if self._head_read and not self._head:
            self._drop_oldest(counted=False)

    @property
    def _tail_path(self) -> Path | None:
        return self._segments[-1] if self._tail is not None else None

    def _open_tail(self) -> None:
        if self._tail is not None:
            self._tail.close()
        path = self.directory / f"{self._next:012d}{_SUFFIX}"
        self._next += 1
        self._segments.append(path)
        self._tail = open(path, "ab")  # noqa: SIM115 - lives until the next segment or close()

    def _drop_oldest(self, *, counted: bool = True) -> list[tuple[str, bytes]]:
        """Delete the oldest segment; its records (not yet taken) when ``counted``."""
        path = self._segments.pop(0)
        if self._tail is not None and not self._segments:  # it was the one being written
            self._tail.close()
            self._tail = None
        lost: list[tuple[str, bytes]] = []
        if counted:
            lost = self._head if self._head_read else _records(path.read_bytes())[0]
            self.pending -= len(lost)
        self._head, self._head_read = [], False
        self._bytes -= path.stat().st_size
        path.unlink()
        return lost

    def close(self) -> None:
        if self._tail is not None:
            self._tail.close()
            self._tail = None


def open_spool(directory: Path | None, *, max_bytes: int, sink: str) -> Spool | None:
    """The spool of a sink with a ``spool_dir`` (None without one); SinkError naming ``sink`` and the folder
    when it cannot be used. Events an earlier run left there go out first, and the log says so."""
    if directory is None:
        return None
    try:
        spool = Spool(directory, max_bytes=max_bytes)
    except OSError as e:
        raise SinkError(f"{sink}: cannot use spool folder {directory}: {e.strerror}") from None
    if len(spool):
        log.info("%s: %d events spooled by an earlier run go out first", sink, len(spool))
    return spool


def spool_counted(spool: Spool, records: list[tuple[str, bytes]], counters: Any, *, sink: str, target: str,
                  camera_of: Callable[[str], str] = str) -> None:
    """Append ``records`` to ``spool`` for a sink: what cannot be kept is counted on ``counters`` (a
    disk error: ``write_error``; past the bound: ``spool_full``), and the first event of an outage says
    so in the log. ``camera_of`` maps a record's key to its camera (when the key is more than that)."""
    was_empty = not len(spool)
    try:
        lost = spool.append(records)
    except OSError as e:  # disk full, folder gone: these events are lost, counted
        counters.error("spool")
        for key, _ in records:
            counters.dropped(camera_of(key), "write_error")
        log.warning("%s: cannot spool to %s: %s", sink, spool.directory, e.strerror)
        return
    if was_empty:
        log.warning("%s: spooling events to %s until %s is back", sink, spool.directory, target)
    for key, n in lost.items():
        counters.dropped(camera_of(key), "spool_full", n)
