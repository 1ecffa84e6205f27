"""Redis Streams sink: ``XADD <prefix><camera> MAXLEN ~ <maxlen> * event <json>``, pipelined per batch.

Network I/O runs on the sink's worker thread behind a bounded buffer (default 10 000 events,
oldest dropped and counted as ``buffer_full`` when full), so a slow or absent Redis never blocks
the pipeline. While Redis is unreachable the worker reconnects with exponential back-off (with
jitter) and the buffer holds the events; on reconnect they go out oldest first. With ``spool_dir``
they go to disk instead (``pipeline.sinks.spool``, up to ``spool_max_mb``), so an outage of hours, or
a restart during one, loses nothing: once Redis is back the spool is sent first, in order, and new
events queue behind it until it is empty. A connection lost in
the middle of a batch may repeat part of it: consumers get each event at least once, bounded by
MAXLEN trimming. The URL (it may carry a password) is never logged: only ``redact_url`` of it is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engines.urls import redact_url
from pipeline.sinks.base import DropPolicy, policy_for
from pipeline.sinks.config import RedisSinkConfig
from pipeline.sinks.remote import Record, RemoteSink

log = logging.getLogger(__name__)

STREAM_FIELD = b"event"
"""Each stream entry has one field, ``event``, holding the event JSON."""

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def connect(url: str, *, connect_timeout_s: float = 2.0, socket_timeout_s: float = 2.0) -> redis.Redis:
    """A client for ``url`` that tries each command once (retries are the caller's back-off)."""
    return redis.Redis.from_url(url, socket_connect_timeout=connect_timeout_s, socket_timeout=socket_timeout_s,
                                retry=Retry(NoBackoff(), 0))


class RedisSink(RemoteSink):
    """Append events to one stream per camera (and optionally PUBLISH them), never blocking."""

    def __init__(self, *, name: str, url: str, policy: DropPolicy, stream_prefix: str = "segpipe:",
                 maxlen: int = 10_000, channel_prefix: str | None = None, batch_size: int = 256,
                 connect_timeout_s: float = 2.0, socket_timeout_s: float = 2.0,
                 backoff_initial_s: float = 0.1, backoff_max_s: float = 5.0, spool_dir: Path | None = None,
                 spool_max_bytes: int = 2**30) -> None:
        self.redacted_url = redact_url(url)
        super().__init__(name=name, label=f"redis sink {name!r}", target=self.redacted_url, policy=policy,
                         batch_size=batch_size, backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
                         spool_dir=spool_dir, spool_max_bytes=spool_max_bytes)
        self._url = url
        self._password = redis.connection.parse_url(url).get("password") if "://" in url else None
        self.stream_prefix, self.maxlen, self.channel_prefix = stream_prefix, maxlen, channel_prefix
        self._timeouts = (connect_timeout_s, socket_timeout_s)
        self._client: redis.Redis | None = None
        self.start()

    @classmethod
    def from_config(cls, cfg: RedisSinkConfig) -> RedisSink:
        return cls(name=cfg.sink_name, url=cfg.url, policy=policy_for("redis", maxsize=cfg.queue_size,
                                                                       overflow=cfg.on_full),
                   stream_prefix=cfg.stream_prefix, maxlen=cfg.maxlen, channel_prefix=cfg.channel_prefix,
                   batch_size=cfg.batch_size, connect_timeout_s=cfg.connect_timeout_s,
                   socket_timeout_s=cfg.socket_timeout_s, backoff_initial_s=cfg.backoff_initial_s,
                   backoff_max_s=cfg.backoff_max_s, spool_dir=cfg.spool_dir,
                   spool_max_bytes=int(cfg.spool_max_mb * 2**20))

    def stream_key(self, camera_id: str) -> str:
        return f"{self.stream_prefix}{camera_id}"

    def _scrub(self, text: str) -> str:
        # Error texts from the client name host and port; make sure a password can never slip in.
        return text.replace(self._password, "***") if self._password else text

    def deliver(self, records: list[Record]) -> int:
        """XADD (and PUBLISH) ``records`` in one pipelined round trip: all of them, or none when Redis is
        unreachable (nothing is counted as sent then)."""
        try:
            if self._client is None:
                self._client = connect(self._url, connect_timeout_s=self._timeouts[0],
                                       socket_timeout_s=self._timeouts[1])
                self._client.ping()
            pipe = self._client.pipeline(transaction=False)
            for camera, payload in records:
                pipe.xadd(self.stream_key(camera), {STREAM_FIELD: payload}, maxlen=self.maxlen, approximate=True)
                if self.channel_prefix is not None:
                    pipe.publish(f"{self.channel_prefix}{camera}", payload)
            results = pipe.execute(raise_on_error=False)
        except (*_CONNECTION_ERRORS, redis.AuthenticationError) as e:
            if self._client is not None:
                self._client.close()
                self._client = None
            self.unreachable("auth" if isinstance(e, redis.AuthenticationError) else "connection",
                             f"{type(e).__name__}: {self._scrub(str(e))}")
            return 0
        self.reachable()
        step = 2 if self.channel_prefix is not None else 1
        for (camera, _), res in zip(records, results[::step], strict=True):
            if isinstance(res, Exception):  # e.g. WRONGTYPE on a key that is not a stream, OOM
                self.counters.error("command")
                self.counters.dropped(camera, "write_error")
                log.warning("redis sink %s: XADD %s failed: %s", self.name, self.stream_key(camera),
                            self._scrub(str(res)))
            else:
                self.counters.sent(camera)
        return len(records)

    def close_resources(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        super().close_resources()
