"""Fair cross-camera batch gathering. Imports pipeline.shm and pipeline.messages only (no torch).

The batcher takes at most one frame per camera (its newest; older unread frames were already
superseded in the ring and are counted as drops there) until ``max_batch`` frames are gathered or
``max_wait_ms`` has passed since the first one. Each gather starts scanning at the camera after the
last one served, so with more cameras than ``max_batch`` every camera gets its turn (no starvation).
A frame older than ``max_age_ms`` when the batcher would take it is dropped and counted (``stale``),
never inferred: late results are worse than none for live video.

Frames are copied out of shared memory straight into a staging ``Arena`` (pinned host memory on CUDA,
so the upload can be asynchronous), never into per-frame allocations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.messages import Batch, Frame
from pipeline.shm import RingReader

if TYPE_CHECKING:
    from pipeline.config import BatchConfig

_IDLE_POLL_S = 0.002  # nothing gathered yet: how often the rings are looked at
# no camera had a frame for this long (cameras down, a quiet night, one slow camera): look every
# _QUIET_POLL_S. Waiting with 2 ms polls cost 2.7 % of a core with 4 idle cameras and 5.7 % with 64,
# with these 1.5 % and 2.0 % (one run, 2 cores); the first frame after such a spell waits up to 8 ms more.
_QUIET_AFTER_S = 0.1
_QUIET_POLL_S = 0.010
_WAIT_POLL_S = 0.0005  # inside the max_wait window: look more often, latency counts here


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPolicy:
    """max_batch: frames per batch (one per camera). max_wait_s: longest wait after the first frame.
    max_age_s: frames older than this (capture to gather, wall clock) are dropped as stale."""

    max_batch: int = 8
    max_wait_s: float = 0.010
    max_age_s: float = 0.5

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"BatchPolicy.max_batch: expected >= 1, got {self.max_batch}")

    @classmethod
    def from_config(cls, cfg: BatchConfig) -> BatchPolicy:
        return cls(max_batch=cfg.max_batch, max_wait_s=cfg.max_wait_ms / 1000.0,
                   max_age_s=cfg.max_age_ms / 1000.0)


class Arena:
    """A reusable flat uint8 staging buffer handing out (H, W, 3) views, one batch at a time.

    ``allocate(nbytes)`` makes the backing store (pinned on CUDA); when a batch needs more than the
    capacity a larger store replaces it (views already handed out keep the old one alive).
    """

    def __init__(self, *, allocate: Callable[[int], np.ndarray], capacity: int = 0) -> None:
        self._allocate = allocate
        self._buf = allocate(max(capacity, 1))
        self._used = 0

    def reset(self) -> None:
        self._used = 0

    def alloc(self, shape: tuple[int, int, int]) -> np.ndarray:
        n = int(np.prod(shape))
        start = (self._used + 63) // 64 * 64  # cache-line aligned views
        if start + n > self._buf.size:
            self._buf = self._allocate(max(2 * self._buf.size, start + n))
            start = 0
        self._used = start + n
        return self._buf[start:start + n].reshape(shape)


class Batcher:
    """Gathers ``Batch``es from camera rings by ``policy`` (see the module docstring)."""

    def __init__(self, *, readers: Sequence[RingReader], policy: BatchPolicy,
                 clock: Callable[[], float] = time.time) -> None:
        if not readers:
            raise ValueError("Batcher.readers: expected at least one camera ring")
        self.readers = list(readers)
        self.policy = policy
        self._clock = clock
        self._next = 0  # index of the camera the next scan starts at

    def add_reader(self, reader: RingReader) -> None:
        """Serve one more camera from the next gather on (a camera added by a config reload)."""
        self.readers.append(reader)

    def remove_reader(self, camera_id: str) -> RingReader | None:
        """Stop serving ``camera_id``; returns its reader (None if unknown). Call between gathers."""
        for i, r in enumerate(self.readers):
            if r.camera_id == camera_id:
                del self.readers[i]
                self._next = self._next % len(self.readers) if self.readers else 0
                return r
        return None

    def gather(self, arena: Arena, stop: threading.Event, *, idle_s: float | None = None) -> Batch | None:
        """Block until a batch is ready (or ``stop`` is set: then return what is gathered, or None;
        or no camera had a frame for ``idle_s`` seconds: then None)."""
        arena.reset()
        since = time.monotonic()
        frames: list[Frame] = []
        taken: set[int] = set()
        first: float | None = None
        while True:
            self._scan(arena, frames, taken)
            if frames and first is None:
                first = time.monotonic()
            if len(frames) >= self.policy.max_batch:
                break
            waited = time.monotonic() - first if first is not None else 0.0
            if frames and waited >= self.policy.max_wait_s:
                break
            if stop.is_set():
                break
            if first is None and idle_s is not None and time.monotonic() - since >= idle_s:
                break
            if first is None:
                time.sleep(_QUIET_POLL_S if time.monotonic() - since >= _QUIET_AFTER_S else _IDLE_POLL_S)
            else:
                time.sleep(min(_WAIT_POLL_S, self.policy.max_wait_s - waited))
        if not frames:
            return None
        return Batch(frames=tuple(frames), created_ts=self._clock())

    def _scan(self, arena: Arena, frames: list[Frame], taken: set[int]) -> None:
        """One round-robin pass over the cameras not yet in this batch."""
        n = len(self.readers)
        start = self._next
        for k in range(n):
            if len(frames) >= self.policy.max_batch:
                return
            i = (start + k) % n
            if i in taken:
                continue
            frame = self.readers[i].take(arena.alloc, max_age_s=self.policy.max_age_s, now=self._clock())
            if frame is not None:
                frames.append(frame)
                taken.add(i)
                self._next = (i + 1) % n  # the next scan begins after the last camera served

    def close(self) -> None:
        for r in self.readers:
            r.close()
