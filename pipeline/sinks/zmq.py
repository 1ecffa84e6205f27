"""ZeroMQ PUB sink: multipart ``[camera id, event JSON]``, at-most-once, never blocks.

Sends are NOBLOCK into the socket's own queue (SNDHWM messages per subscriber); ZeroMQ's I/O
thread does the network writes, so no worker thread is needed here. With ``count_drops`` (the
default) the socket is an XPUB with XPUB_NODROP: a message that would overflow any subscriber's
queue is refused at send time and counted per camera (reason ``hwm``), so a slow subscriber costs
events, never pipeline time. Plain PUB semantics (``count_drops: false``) let each subscriber lose
only its own overflow, but ZeroMQ does not report those losses.

Subscribers filter by topic prefix, so ``cam1`` also matches ``cam10``: compare the first frame
exactly (``segpipe listen`` does).
"""

from __future__ import annotations

import logging

import zmq

from engines.errors import SinkError
from pipeline.sinks.base import Envelope, SinkCounters, policy_for
from pipeline.sinks.config import ZmqSinkConfig

log = logging.getLogger(__name__)

_DRAIN_EVERY = 64  # publishes between reads of XPUB's subscription notices (they queue up otherwise)


class ZmqSink:
    """Publish envelopes on a PUB/XPUB socket bound (or connected) to ``endpoint``."""

    def __init__(self, *, name: str, endpoint: str, bind: bool = True, sndhwm: int = 1000,
                 count_drops: bool = True, linger_ms: int = 1000) -> None:
        self.name, self.endpoint = name, endpoint
        self.counters = SinkCounters()
        self.drop_reason = policy_for("zmq").name
        self._xpub = count_drops
        self._ctx = zmq.Context()  # one per sink: close() can end its I/O thread without touching others
        self._sock = self._ctx.socket(zmq.XPUB if count_drops else zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        if count_drops:
            self._sock.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            (self._sock.bind if bind else self._sock.connect)(endpoint)
        except zmq.ZMQError as e:
            self._sock.close(linger=0)
            self._ctx.term()
            raise SinkError(f"zmq sink {name!r}: cannot {'bind' if bind else 'connect'} {endpoint}: {e}") from None
        self._since_drain = 0
        self._closed = False

    @classmethod
    def from_config(cls, cfg: ZmqSinkConfig) -> ZmqSink:
        return cls(name=cfg.sink_name, endpoint=cfg.endpoint, bind=cfg.bind, sndhwm=cfg.sndhwm,
                   count_drops=cfg.count_drops, linger_ms=cfg.linger_ms)

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (resolves ``tcp://127.0.0.1:*`` to its port)."""
        return self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def backlog(self) -> int:
        return 0  # the socket queues per subscriber (sndhwm), out of sight; what it refuses is counted

    def publish(self, env: Envelope) -> None:
        if self._closed:
            self.counters.dropped(env.camera_id, "closed")
            return
        try:
            self._sock.send_multipart([env.camera_id.encode(), env.payload], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.counters.dropped(env.camera_id, self.drop_reason)
        except zmq.ZMQError as e:
            self.counters.error("send")
            self.counters.dropped(env.camera_id, "send_error")
            log.warning("zmq sink %s: send failed: %s", self.name, e)
        else:
            self.counters.sent(env.camera_id)
        self._since_drain += 1
        if self._xpub and self._since_drain >= _DRAIN_EVERY:
            self._drain_subscriptions()

    def _drain_subscriptions(self) -> None:
        self._since_drain = 0
        while self._sock.poll(0, zmq.POLLIN):
            self._sock.recv(zmq.NOBLOCK)

    def flush(self, timeout: float = 5.0) -> bool:
        """ZeroMQ owns the queue and cannot report it empty; ``close`` lingers instead."""
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Close the socket, letting queued messages go out for up to ``linger_ms``."""
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        self._ctx.term()
