"""Shared-memory frame rings: newest wins, drops counted, resizes followed, nothing left behind."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline import shm


@pytest.fixture
def prefix() -> Iterator[str]:
    p = shm.prefix_for(90 + os.getpid() % 10)
    control = shm.ControlBlock(p, create=True)
    yield p
    control.close()
    shm.unlink_all(p)
    assert shm.list_segments(p) == []


def alloc(shape: tuple[int, int, int]) -> np.ndarray:
    return np.empty(shape, np.uint8)


def frame(value: int, h: int = 24, w: int = 32) -> np.ndarray:
    return np.full((h, w, 3), value % 256, np.uint8)


def test_round_trip_keeps_pixels_and_header(prefix: str) -> None:
    w, r = shm.RingWriter(prefix, nslots=3), shm.RingReader(prefix, camera_id="cam")
    assert r.take(alloc) is None and not r.pending()
    img = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    assert w.write(img, pts=1.5, capture_ts=123.0) == 0
    assert w.write(img[:10, :7].copy(), pts=None, capture_ts=124.0) == 1  # smaller frame, same slots
    f = r.take(alloc)
    assert f is not None and (f.camera_id, f.seq, f.pts, f.capture_ts, f.size) == ("cam", 1, None, 124.0, (7, 10))
    assert np.array_equal(f.image, img[:10, :7])
    assert r.dropped == 1  # frame 0 was superseded before it was read
    assert r.take(alloc) is None
    w.close(), r.close()


def test_newest_wins_and_skipped_frames_are_counted(prefix: str) -> None:
    w, r = shm.RingWriter(prefix, nslots=3), shm.RingReader(prefix, camera_id="cam")
    for i in range(10):  # the writer laps the 3 slots: never blocks on the reader
        w.write(frame(i), pts=i / 10, capture_ts=time.time())
    f = r.take(alloc)
    assert f is not None and f.seq == 9 and f.image[0, 0, 0] == 9 and f.pts == pytest.approx(0.9)
    assert r.dropped == 9
    w.write(frame(10), pts=1.0, capture_ts=time.time())
    assert r.take(alloc).seq == 10 and r.dropped == 9
    snap = shm.ControlBlock(prefix).snapshot()
    assert (snap["decoded"], snap["dropped"], snap["latest_seq"]) == (11, 9, 10)
    w.close(), r.close()


def test_a_new_reader_goes_on_where_the_last_one_left_off(prefix: str) -> None:
    """A device stage started again after a crash: the newest frame the dead one had not taken is
    taken (a lossless writer waits for it), and the drop counters go on (metrics take their deltas)."""
    w, first = shm.RingWriter(prefix, nslots=3), shm.RingReader(prefix, camera_id="cam")
    for i in range(5):
        w.write(frame(i), pts=i / 10, capture_ts=time.time())
    assert first.take(alloc).seq == 4 and first.dropped == 4
    w.write(frame(5), pts=0.5, capture_ts=time.time())
    w.write(frame(6), pts=0.6, capture_ts=time.time())
    first.close()  # died before taking 5 and 6
    second = shm.RingReader(prefix, camera_id="cam")
    assert second.pending() and (second.last_seq, second.dropped) == (4, 4)
    assert second.take(alloc).seq == 6 and second.dropped == 5
    assert shm.ControlBlock(prefix).get("dropped") == 5  # never back
    w.close(), second.close()


def test_stale_frames_are_dropped_not_returned(prefix: str) -> None:
    w, r = shm.RingWriter(prefix), shm.RingReader(prefix, camera_id="cam")
    w.write(frame(1), pts=0.0, capture_ts=100.0)
    assert r.take(alloc, max_age_s=0.5, now=100.6) is None
    assert (r.stale, r.dropped, r.last_seq) == (1, 0, 0)
    w.write(frame(2), pts=0.1, capture_ts=100.7)
    assert r.take(alloc, max_age_s=0.5, now=100.8).seq == 1
    assert shm.ControlBlock(prefix).get("stale") == 1
    w.close(), r.close()


def test_bigger_frame_moves_to_a_new_generation(prefix: str) -> None:
    w, r = shm.RingWriter(prefix, nslots=2), shm.RingReader(prefix, camera_id="cam")
    w.write(frame(1, 24, 32), pts=0.0, capture_ts=time.time())
    assert r.take(alloc).size == (32, 24)
    assert shm.list_segments(prefix) == [f"{prefix}_c", f"{prefix}_d0"]
    w.write(frame(2, 48, 64), pts=0.1, capture_ts=time.time())  # e.g. the camera reconnected in HD
    assert shm.list_segments(prefix) == [f"{prefix}_c", f"{prefix}_d1"]  # the old one is unlinked
    f = r.take(alloc)
    assert f.size == (64, 48) and f.image[0, 0, 0] == 2
    torn = shm.RingWriter(prefix, nslots=2)
    torn._seg.headers[1]["lock"] += 1  # as if this decoder had been killed in the middle of a write
    torn.close()
    w.close()
    # A restarted decoder reattaches to the current generation and continues the sequence.
    w2 = shm.RingWriter(prefix, nslots=2)
    assert all(int(h["lock"][0]) % 2 == 0 for h in w2._seg.headers)  # seqlock parity restored
    assert w2.write(frame(3, 48, 64), pts=0.2, capture_ts=time.time()) == 2
    assert r.take(alloc).seq == 2 and shm.list_segments(prefix) == [f"{prefix}_c", f"{prefix}_d1"]
    w2.close(), r.close()


def _hammer(prefix: str, n: int) -> None:
    w = shm.RingWriter(prefix, nslots=3)
    for i in range(n):
        w.write(frame(i, 120, 160), pts=float(i), capture_ts=time.time())
    w.close()


def test_reader_never_sees_a_torn_frame_from_another_process(prefix: str) -> None:
    # Writer in its own process overwrites 3 slots as fast as it can; every frame the reader gets must
    # be whole (all pixels equal to its seq), which only the per-slot seqlock guarantees.
    r = shm.RingReader(prefix, camera_id="cam")
    proc = mp.get_context("spawn").Process(target=_hammer, args=(prefix, 3000))
    proc.start()
    got = 0
    while proc.is_alive() or r.pending():
        f = r.take(alloc)
        if f is None:
            continue
        got += 1
        assert (f.image == f.seq % 256).all(), f.seq
        assert f.pts == float(f.seq)
    proc.join()
    assert proc.exitcode == 0 and got > 0
    assert r.dropped + got <= 3000 and r.last_seq == 2999
    r.close()


def test_sweep_removes_segments_of_dead_supervisors_only(prefix: str) -> None:
    child = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    child.start()
    child.join()  # a pid that no longer runs
    dead = shm.prefix_for(0, pid=child.pid)
    shm.ControlBlock(dead, create=True).close()
    assert shm.list_segments(dead) == [f"{dead}_c"]
    assert shm.sweep_stale() >= 1
    assert shm.list_segments(dead) == [] and shm.list_segments(prefix) == [f"{prefix}_c"]
