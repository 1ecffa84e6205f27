"""What every sink shares: the Sink protocol, the DropPolicy on its queue, its counters.

Imports nothing from pipeline/ except ``messages``. Sinks never block and never raise into the
pipeline: a full queue drops by its named policy and counts the drop per camera; a failed write is
counted as an error by reason. Network and disk I/O run on the sink's own worker thread so a slow
Redis or disk can only fill that sink's queue.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.messages import CameraStatus, FrameResult

log = logging.getLogger(__name__)


class Overflow(str, enum.Enum):
    """What a full queue does with one more item."""

    DROP_OLDEST = "drop_oldest"  # keep the freshest events: live consumers care about now
    DROP_NEWEST = "drop_newest"  # refuse the incoming event: keep what is already queued in order


@dataclass(frozen=True, slots=True)
class DropPolicy:
    """A named, bounded queue policy. ``name`` is the drop reason in counters and metrics."""

    name: str
    maxsize: int
    overflow: Overflow

    def __post_init__(self) -> None:
        if self.maxsize < 1:
            raise ValueError(f"DropPolicy.maxsize: expected >= 1, got {self.maxsize}")


DEFAULT_POLICIES: Mapping[str, DropPolicy] = MappingProxyType({
    # ZeroMQ queues inside the socket (SNDHWM); what does not fit is refused at send time.
    "zmq": DropPolicy(name="hwm", maxsize=1000, overflow=Overflow.DROP_NEWEST),
    # Holds events while Redis is slow or down; a long outage keeps the newest ones.
    "redis": DropPolicy(name="buffer_full", maxsize=10_000, overflow=Overflow.DROP_OLDEST),
    # Holds events while the broker is away, like redis.
    "mqtt": DropPolicy(name="buffer_full", maxsize=10_000, overflow=Overflow.DROP_OLDEST),
    # Holds alerts while the receiver is away, like redis.
    "webhook": DropPolicy(name="buffer_full", maxsize=10_000, overflow=Overflow.DROP_OLDEST),
    "jsonl": DropPolicy(name="queue_full", maxsize=10_000, overflow=Overflow.DROP_OLDEST),
    # Frames are big (the annotated image travels with them): keep few.
    "video": DropPolicy(name="queue_full", maxsize=32, overflow=Overflow.DROP_OLDEST),
    # A live stream: fewer still, a viewer wants now, not a backlog.
    "restream": DropPolicy(name="queue_full", maxsize=8, overflow=Overflow.DROP_OLDEST),
})
"""Every sink's default queue policy, in one place. Configs may override maxsize and overflow."""


def policy_for(sink_type: str, *, maxsize: int | None = None, overflow: Overflow | None = None) -> DropPolicy:
    """The default policy of ``sink_type`` with the given overrides (None keeps the default)."""
    base = DEFAULT_POLICIES[sink_type]
    return DropPolicy(name=base.name, maxsize=maxsize or base.maxsize, overflow=overflow or base.overflow)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event ready for the sinks, serialised once (by the sink stage or an event worker).

    payload: compact JSON bytes (``pipeline.events.encode``). item: what the event was made from, for
    sinks that draw; None when an event worker made it and no sink draws (a FrameResult's masks are
    not pickled once more for nothing). image: optional (H, W, 3) uint8 BGR frame for sinks that draw
    (video); None when the runtime does not forward pixels. capture_ts: a frame's capture time (Unix
    seconds), for the capture-to-publish latency. objects: a frame event's detections (after the camera's
    classes), known even when ``item`` was dropped.
    """

    camera_id: str
    kind: str  # "frame" or "status"
    payload: bytes
    item: FrameResult | CameraStatus | None
    image: np.ndarray | None = None
    capture_ts: float | None = None
    objects: int | None = None


REMOVED = "removed"
"""The ``kind`` of an Envelope that is a marker, not an event: its camera left the run (a reload). A
threaded sink that holds something per camera (an open file, a live stream) lets go of it when the
marker comes out of its queue, after the camera's events queued before it. Queue overflow never drops
a marker: there is one per removed camera, and a lost one would hold its file or stream for good."""


@dataclass(frozen=True, slots=True)
class CounterDeltas:
    """Counts since the previous ``SinkCounters.take()``."""

    sent: Mapping[str, int] = field(default_factory=dict)  # camera -> events delivered
    dropped: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (camera, reason) -> events
    errors: Mapping[str, int] = field(default_factory=dict)  # reason -> failures


class SinkCounters:
    """Thread-safe per-camera counters; the sink stage takes deltas to report them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: Counter[str] = Counter()
        self._dropped: Counter[tuple[str, str]] = Counter()
        self._errors: Counter[str] = Counter()
        self.totals_sent: Counter[str] = Counter()
        self.totals_dropped: Counter[tuple[str, str]] = Counter()
        self.totals_errors: Counter[str] = Counter()

    def sent(self, camera: str, n: int = 1) -> None:
        with self._lock:
            self._sent[camera] += n
            self.totals_sent[camera] += n

    def dropped(self, camera: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self._dropped[camera, reason] += n
            self.totals_dropped[camera, reason] += n

    def error(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._errors[reason] += n
            self.totals_errors[reason] += n

    def take(self) -> CounterDeltas:
        """Counts since the last call (and reset them)."""
        with self._lock:
            out = CounterDeltas(sent=dict(self._sent), dropped=dict(self._dropped), errors=dict(self._errors))
            self._sent.clear()
            self._dropped.clear()
            self._errors.clear()
        return out


class BoundedBuffer:
    """A bounded FIFO of envelopes that never blocks the producer: overflow follows ``policy`` and
    every drop is counted per camera under ``policy.name``.

    Like ``queue.Queue`` it tracks taken-but-unfinished items (``take`` / ``done``) so ``join`` can
    wait until everything put so far is written. Its length is the events queued: ``REMOVED`` markers
    are no events (a sink's backlog).
    """

    def __init__(self, *, policy: DropPolicy, counters: SinkCounters) -> None:
        self.policy, self.counters = policy, counters
        self._items: deque[Envelope] = deque()
        self._markers = 0  # REMOVED markers among _items
        self._inflight = 0
        self._cond = threading.Condition()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items) - self._markers

    def put(self, env: Envelope) -> None:
        with self._cond:
            if env.kind != REMOVED and len(self._items) >= self.policy.maxsize:
                if self.policy.overflow is Overflow.DROP_NEWEST:
                    self.counters.dropped(env.camera_id, self.policy.name)
                    return
                self._drop_oldest()
            self._items.append(env)
            self._markers += env.kind == REMOVED
            self._cond.notify_all()

    def requeue(self, envs: list[Envelope]) -> None:
        """Put taken ``envs`` back at the front (a failed write to retry); the oldest overflow is
        dropped and counted. The taker still calls ``done`` for them."""
        with self._cond:
            self._items.extendleft(reversed(envs))
            self._markers += sum(env.kind == REMOVED for env in envs)
            while len(self._items) > self.policy.maxsize and self._drop_oldest():
                pass
            self._cond.notify_all()

    def _drop_oldest(self) -> bool:
        """Drop and count the oldest event (markers stay); False when only markers are queued."""
        for i, old in enumerate(self._items):
            if old.kind != REMOVED:
                del self._items[i]
                self.counters.dropped(old.camera_id, self.policy.name)
                return True
        return False

    def take(self, max_items: int, timeout: float) -> list[Envelope]:
        """Up to ``max_items`` envelopes, waiting at most ``timeout`` seconds for the first one.
        Call ``done(len(batch))`` (or ``requeue``) when they are handled."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            n = min(max_items, len(self._items))
            self._inflight += n
            batch = [self._items.popleft() for _ in range(n)]
            self._markers -= sum(env.kind == REMOVED for env in batch)
            return batch

    def done(self, n: int) -> None:
        with self._cond:
            self._inflight -= n
            self._cond.notify_all()

    def drop_all(self, reason: str) -> int:
        """Empty the buffer, counting every envelope as dropped for ``reason``; returns how many."""
        with self._cond:
            events = [env for env in self._items if env.kind != REMOVED]
            n = len(events)
            for env in events:
                self.counters.dropped(env.camera_id, reason)
            self._items.clear()
            self._markers = 0
            self._cond.notify_all()
            return n

    def join(self, timeout: float) -> bool:
        """Wait until the buffer is empty and nothing taken is unfinished; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._items or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@runtime_checkable
class Sink(Protocol):
    """A destination for events. ``publish`` never blocks and never raises; ``close`` flushes."""

    name: str
    counters: SinkCounters

    def publish(self, env: Envelope) -> None: ...

    def backlog(self) -> int:
        """Events accepted and not yet delivered (queued in memory, spooled on disk)."""
        ...

    def flush(self, timeout: float = 5.0) -> bool: ...

    def close(self, timeout: float = 5.0) -> None: ...


@runtime_checkable
class Watched(Protocol):
    """A sink that shows pictures on demand (preview): the cameras someone is looking at now."""

    def watching(self) -> frozenset[str]: ...


@runtime_checkable
class Retaining(Protocol):
    """A sink that keeps something per camera beyond its events: a server's retained status (MQTT), a
    camera on a page (preview), an open file (video) or a live stream (restream). Told when cameras leave
    the run, or it would hold them, and show them, for good."""

    def cameras_removed(self, camera_ids: Collection[str]) -> None:
        """Let go of ``camera_ids``, after their events already queued (threaded sinks queue a
        ``REMOVED`` marker each); like ``publish``, never blocks and never raises."""
        ...


class FrameSource(Protocol):
    """Frames read back by camera and seq (``pipeline.shm.FrameLookup``), while the rings hold them."""

    def frame(self, camera_id: str, seq: int, copy: Callable[[np.ndarray], np.ndarray] = ...) -> np.ndarray | None:
        """``copy`` (np.copy, or one that also shrinks) of the frame's pixels; None once overwritten."""
        ...


@runtime_checkable
class Pictured(Protocol):
    """A sink that attaches the picture of some events (webhook snapshots): handed the run's frames."""

    def use_frames(self, frames: FrameSource) -> None: ...


class ThreadedSink:
    """Base for sinks whose I/O runs on a worker thread fed by a ``BoundedBuffer``.

    Subclasses implement ``write_batch(envs)``: raise to report a failure (the batch is counted as
    dropped with reason ``write_error``) or requeue it themselves to retry; long retry waits use
    ``self.wait(seconds)``, which returns True once the sink is abandoned at close. They may
    override ``close_resources()``, which runs on the worker thread after the last batch.
    """

    def __init__(self, *, name: str, policy: DropPolicy, batch_size: int = 256, idle_s: float = 0.05) -> None:
        self.name = name
        self.counters = SinkCounters()
        self.buffer = BoundedBuffer(policy=policy, counters=self.counters)
        self.batch_size, self.idle_s = batch_size, idle_s
        self._stop = threading.Event()  # no more input: write what is queued, then end
        self._abandon = threading.Event()  # close timed out: drop what is left, then end
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)

    def start(self) -> None:
        """Start the worker thread (subclasses call it at the end of ``__init__``)."""
        self._thread.start()

    def publish(self, env: Envelope) -> None:
        if self._stop.is_set():
            if env.kind != REMOVED:  # a marker is no event: nothing lost
                self.counters.dropped(env.camera_id, "closed")
            return
        self.buffer.put(env)

    def write_batch(self, envs: list[Envelope]) -> None:
        raise NotImplementedError

    def queue_removed(self, camera_ids: Collection[str]) -> None:
        """Queue a ``REMOVED`` marker per camera, behind its events (for ``Retaining.cameras_removed``)."""
        for camera in camera_ids:
            self.publish(Envelope(camera_id=camera, kind=REMOVED, payload=b"", item=None))

    def backlog(self) -> int:
        return len(self.buffer)

    def close_resources(self) -> None:
        """Release files/sockets (worker thread)."""

    def idle(self) -> None:
        """Called on the worker thread when no event came for ``idle_s`` (e.g. to send a backlog)."""

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the sink was abandoned meanwhile (stop retrying)."""
        return self._abandon.wait(seconds)

    @property
    def abandoned(self) -> bool:
        return self._abandon.is_set()

    def _run(self) -> None:
        while not self._abandon.is_set():
            batch = self.buffer.take(self.batch_size, self.idle_s)
            if batch:
                self._write(batch)
            elif self._stop.is_set() and not len(self.buffer):
                break
            else:
                self.idle()
        self.buffer.drop_all("shutdown")
        try:
            self.close_resources()
        except Exception as e:  # closing must not kill the stage; the count tells the operator
            self.counters.error("close")
            log.warning("sink %s: close failed: %s", self.name, type(e).__name__)

    def _write(self, batch: list[Envelope]) -> None:
        n = len(batch)
        try:
            self.write_batch(batch)
        except Exception as e:
            self.counters.error("write")
            events = [env for env in batch if env.kind != REMOVED]  # a marker is no event
            for env in events:
                self.counters.dropped(env.camera_id, "write_error")
            log.warning("sink %s: write failed (%d events dropped): %s", self.name, len(events), e)
        finally:
            self.buffer.done(n)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (or dropped); False on timeout."""
        if not self._thread.is_alive():
            return not len(self.buffer)
        return self.buffer.join(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout`` seconds, then drop and count the rest as
        ``shutdown``), then release the resources."""
        self._stop.set()
        self.buffer.wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("sink %s: not drained after %.1f s; dropping %d events", self.name, timeout,
                        len(self.buffer))
            self._abandon.set()
            self.buffer.wake()
            self._thread.join(2.0)
