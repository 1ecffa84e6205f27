"""What a sink for a server that may go away (Redis, a webhook receiver) does while it is away.

Imports nothing from pipeline/ except the other sink modules. A subclass says how to deliver a batch
of ``(camera id, payload)`` records (``deliver``) and reports a server it cannot reach with
``unreachable``; this base holds the events in order meanwhile, in the memory buffer or, with
``spool_dir``, on disk, backs off exponentially with jitter between attempts, logs an outage once and
its end once, and sends a spool first once the server is back, with new events queued behind it.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from pipeline.sinks.base import DropPolicy, Envelope, ThreadedSink
from pipeline.sinks.spool import open_spool, spool_counted

Record = tuple[str, bytes]
"""(camera id, payload): what is delivered, and what the spool keeps."""


class RemoteSink(ThreadedSink):
    """Base for sinks whose server may be down (see the module doc). ``label`` names the sink in logs
    (``"redis sink 'events'"``), ``target`` the server (without credentials)."""

    def __init__(self, *, name: str, label: str, target: str, policy: DropPolicy, batch_size: int,
                 backoff_initial_s: float, backoff_max_s: float, spool_dir: Path | None,
                 spool_max_bytes: int) -> None:
        super().__init__(name=name, policy=policy, batch_size=batch_size)
        self.label, self.target = label, target
        self.log = logging.getLogger(type(self).__module__)  # its lines come from the sink's own module
        self._backoff_initial, self._backoff_max = backoff_initial_s, backoff_max_s
        self._backoff = backoff_initial_s
        self._down = False  # log the outage once, and the recovery once
        self._retry_at = 0.0  # monotonic time of the next attempt after a failure
        self.spool = open_spool(spool_dir, max_bytes=spool_max_bytes, sink=f"{label}")

    def deliver(self, records: list[Record]) -> int:
        """Send ``records`` in order; how many from the front were handled (sent, or refused for good and
        counted). Fewer than all when the server cannot be reached: call ``unreachable`` then."""
        raise NotImplementedError

    def records(self, envs: list[Envelope]) -> list[Record]:
        """What ``envs`` become on the wire (a subclass may filter or rewrite them). Records not delivered
        come back here as envelopes of their own payload (kind ""), so this must keep them as they are."""
        return [(env.camera_id, env.payload) for env in envs]

    def write_batch(self, envs: list[Envelope]) -> None:
        records = self.records(envs)
        if not records:
            return
        if self.spool is not None and (len(self.spool) or self._down):
            self._to_spool(records)  # behind the backlog: events leave in the order they came
            self._drain()
            return
        n = self.deliver(records) if not self.backing_off else 0
        if n == len(records):
            return
        if self.spool is not None:
            self._to_spool(records[n:])
        else:
            self.buffer.requeue([Envelope(camera_id=c, kind="", payload=p, item=None) for c, p in records[n:]])
            self.wait(max(self._retry_at - time.monotonic(), 0.0))

    def backlog(self) -> int:
        return len(self.buffer) + (len(self.spool) if self.spool is not None else 0)

    def idle(self) -> None:
        if self.spool is not None and len(self.spool):
            self._drain()

    @property
    def backing_off(self) -> bool:
        """The server was unreachable and the back-off since has not run out."""
        return self._down and time.monotonic() < self._retry_at

    def _to_spool(self, records: list[Record]) -> None:
        assert self.spool is not None
        spool_counted(self.spool, records, self.counters, sink=self.label, target=self.target)

    def _drain(self) -> None:
        """Send the spool's oldest events, a batch at a time, for up to half a second (new events wait
        in the memory buffer meanwhile)."""
        assert self.spool is not None
        deadline = time.monotonic() + 0.5
        while len(self.spool) and time.monotonic() < deadline and not self.backing_off:
            chunk = self.spool.peek(self.batch_size)
            n = self.deliver(chunk)
            self.spool.take(n)
            if not len(self.spool):
                self.log.info("%s: spool sent, publishing directly again", self.label)
            elif n < len(chunk):
                return

    def unreachable(self, reason: str, detail: str, *, retry_after_s: float | None = None) -> None:
        """The server could not take the events: count ``reason``, log ``detail`` once per outage, and
        wait the next back-off step (at least ``retry_after_s``, which a server may ask for)."""
        self.counters.error(reason)
        delay = self._backoff * random.uniform(0.5, 1.0)  # jitter: replicas do not retry in lockstep
        self._backoff = min(self._backoff * 2, self._backoff_max)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        self._retry_at = time.monotonic() + delay
        if not self._down:
            held = (f"spooling to {self.spool.directory}" if self.spool is not None
                    else f"buffering up to {self.buffer.policy.maxsize} events")
            self.log.warning("%s: %s unreachable (%s); %s, retrying", self.label, self.target, detail, held)
        self._down = True

    def reachable(self) -> None:
        """A delivery went through: the back-off starts again from its first step."""
        self._backoff = self._backoff_initial
        if self._down:
            self.log.info("%s: %s reachable again", self.label, self.target)
        self._down = False

    def close_resources(self) -> None:
        if self.spool is not None:
            self.spool.close()
