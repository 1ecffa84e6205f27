"""Fair cross-camera batching over real shared-memory rings."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.batching import Arena, Batcher, BatchPolicy
from tests.pipeline.rings import CameraRings


class Rings(CameraRings):
    """N camera rings with writers (the test plays the decoders) and readers (for the batcher)."""

    def __init__(self, n: int, base: int = 100) -> None:
        super().__init__(n, base, nslots=2, camera_id="cam{:02d}")

    def publish(self, cams: range | list[int] | None = None, *, capture_ts: float | None = None) -> None:
        for i in cams if cams is not None else range(len(self.writers)):
            img = np.full((12 + i, 16, 3), i, np.uint8)  # every camera its own size
            self.writers[i].write(img, pts=None, capture_ts=time.time() if capture_ts is None else capture_ts)


@pytest.fixture
def rings() -> Iterator[Rings]:
    r = Rings(16)
    yield r
    r.close()


def arena() -> Arena:
    return Arena(allocate=lambda n: np.empty(n, np.uint8), capacity=64)


def test_no_camera_starves_with_16_cameras_and_batches_of_4(rings: Rings) -> None:
    batcher = Batcher(readers=rings.readers, policy=BatchPolicy(max_batch=4, max_wait_s=0.0, max_age_s=60))
    stop, a = threading.Event(), arena()
    served: Counter[str] = Counter()
    for _ in range(40):
        rings.publish()  # every camera always has a fresh frame: the worst case for fairness
        batch = batcher.gather(a, stop)
        assert batch is not None and len(batch.frames) == 4
        for f in batch.frames:
            served[f.camera_id] += 1
            assert f.image.shape == (12 + int(f.camera_id[3:]), 16, 3)
            assert (f.image == int(f.camera_id[3:])).all()  # pixels copied out whole, per camera
    assert set(served) == {f"cam{i:02d}" for i in range(16)}
    assert set(served.values()) == {10}  # 40 batches x 4 / 16 cameras, exactly round robin


def test_one_frame_per_camera_and_quiet_cameras_do_not_block(rings: Rings) -> None:
    batcher = Batcher(readers=rings.readers, policy=BatchPolicy(max_batch=8, max_wait_s=0.05, max_age_s=60))
    rings.publish([3, 7, 11])
    rings.publish([3])  # a second frame of cam03 supersedes the first (counted as a drop)
    t0 = time.monotonic()
    batch = batcher.gather(arena(), threading.Event())
    waited = time.monotonic() - t0
    assert batch is not None
    assert sorted(f.camera_id for f in batch.frames) == ["cam03", "cam07", "cam11"]
    assert next(f for f in batch.frames if f.camera_id == "cam03").seq == 1
    assert rings.readers[3].dropped == 1 and rings.controls[3].get("dropped") == 1
    assert waited >= 0.05  # fewer than max_batch frames: it waited max_wait for more


def test_late_frames_join_within_max_wait(rings: Rings) -> None:
    batcher = Batcher(readers=rings.readers, policy=BatchPolicy(max_batch=3, max_wait_s=5.0, max_age_s=60))
    rings.publish([0])
    timer = threading.Timer(0.05, rings.publish, args=([5, 9],))
    timer.start()
    batch = batcher.gather(arena(), threading.Event())
    timer.join()
    assert sorted(f.camera_id for f in batch.frames) == ["cam00", "cam05", "cam09"]  # full before 5 s


def test_stale_frames_are_counted_per_camera_and_never_batched(rings: Rings) -> None:
    batcher = Batcher(readers=rings.readers, policy=BatchPolicy(max_batch=4, max_wait_s=0.0, max_age_s=0.2))
    rings.publish([1, 2], capture_ts=time.time() - 1.0)  # a second old: past max_age
    rings.publish([4])
    batch = batcher.gather(arena(), threading.Event())
    assert [f.camera_id for f in batch.frames] == ["cam04"]
    assert [r.stale for r in rings.readers[:5]] == [0, 1, 1, 0, 0]
    assert rings.controls[1].get("stale") == 1 and rings.controls[1].get("dropped") == 0


def test_stop_returns_what_was_gathered(rings: Rings) -> None:
    batcher = Batcher(readers=rings.readers, policy=BatchPolicy(max_batch=4, max_wait_s=10.0, max_age_s=60))
    stop = threading.Event()
    stop.set()
    assert batcher.gather(arena(), stop) is None
    rings.publish([2])
    assert [f.camera_id for f in batcher.gather(arena(), stop).frames] == ["cam02"]


def test_arena_grows_and_keeps_earlier_views_valid() -> None:
    a = Arena(allocate=lambda n: np.zeros(n, np.uint8), capacity=100)
    first = a.alloc((4, 4, 3))
    first[:] = 7
    big = a.alloc((40, 40, 3))  # does not fit: a larger store replaces the old one
    big[:] = 1
    assert (first == 7).all() and big.shape == (40, 40, 3)
    a.reset()
    assert a.alloc((40, 40, 3)).base is big.base  # reused from now on
