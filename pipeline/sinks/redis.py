"""Redis Streams sink: ``XADD <prefix><camera> MAXLEN ~ <maxlen> * event <json>``, pipelined per batch.

Network I/O runs on the sink's worker thread behind a bounded buffer (default 10 000 events,
oldest dropped and counted as ``buffer_full`` when full), so a slow or absent Redis never blocks
the pipeline. While Redis is unreachable the worker reconnects with exponential back-off (with
jitter) and the buffer holds the events; on reconnect they go out oldest first. A connection lost in
the middle of a batch may repeat part of it: consumers get each event at least once, bounded by
MAXLEN trimming. The URL (it may carry a password) is never logged: only ``redact_url`` of it is.
"""

from __future__ import annotations

import logging
import random

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.sinks.base import DropPolicy, Envelope, ThreadedSink, policy_for
from pipeline.sinks.config import RedisSinkConfig, redact_url

log = logging.getLogger(__name__)

STREAM_FIELD = b"event"
"""Each stream entry has one field, ``event``, holding the event JSON."""

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def connect(url: str, *, connect_timeout_s: float = 2.0, socket_timeout_s: float = 2.0) -> redis.Redis:
    """A client for ``url`` that tries each command once (retries are the caller's back-off)."""
    return redis.Redis.from_url(url, socket_connect_timeout=connect_timeout_s, socket_timeout=socket_timeout_s,
                                retry=Retry(NoBackoff(), 0))


class RedisSink(ThreadedSink):
    """Append events to one stream per camera (and optionally PUBLISH them), never blocking."""

    def __init__(self, *, name: str, url: str, policy: DropPolicy, stream_prefix: str = "segpipe:",
                 maxlen: int = 10_000, channel_prefix: str | None = None, batch_size: int = 256,
                 connect_timeout_s: float = 2.0, socket_timeout_s: float = 2.0,
                 backoff_initial_s: float = 0.1, backoff_max_s: float = 5.0) -> None:
        super().__init__(name=name, policy=policy, batch_size=batch_size)
        self._url = url
        self.redacted_url = redact_url(url)
        self._password = redis.connection.parse_url(url).get("password") if "://" in url else None
        self.stream_prefix, self.maxlen, self.channel_prefix = stream_prefix, maxlen, channel_prefix
        self._timeouts = (connect_timeout_s, socket_timeout_s)
        self._backoff_initial, self._backoff_max = backoff_initial_s, backoff_max_s
        self._backoff = backoff_initial_s
        self._client: redis.Redis | None = None
        self._down = False  # log the outage once, and the recovery once
        self.start()

    @classmethod
    def from_config(cls, cfg: RedisSinkConfig) -> RedisSink:
        return cls(name=cfg.sink_name, url=cfg.url, policy=policy_for("redis", maxsize=cfg.queue_size,
                                                                       overflow=cfg.on_full),
                   stream_prefix=cfg.stream_prefix, maxlen=cfg.maxlen, channel_prefix=cfg.channel_prefix,
                   batch_size=cfg.batch_size, connect_timeout_s=cfg.connect_timeout_s,
                   socket_timeout_s=cfg.socket_timeout_s, backoff_initial_s=cfg.backoff_initial_s,
                   backoff_max_s=cfg.backoff_max_s)

    def stream_key(self, camera_id: str) -> str:
        return f"{self.stream_prefix}{camera_id}"

    def _scrub(self, text: str) -> str:
        # Error texts from the client name host and port; make sure a password can never slip in.
        return text.replace(self._password, "***") if self._password else text

    def write_batch(self, envs: list[Envelope]) -> None:
        try:
            if self._client is None:
                self._client = connect(self._url, connect_timeout_s=self._timeouts[0],
                                       socket_timeout_s=self._timeouts[1])
                self._client.ping()
            pipe = self._client.pipeline(transaction=False)
            for env in envs:
                pipe.xadd(self.stream_key(env.camera_id), {STREAM_FIELD: env.payload}, maxlen=self.maxlen,
                          approximate=True)
                if self.channel_prefix is not None:
                    pipe.publish(f"{self.channel_prefix}{env.camera_id}", env.payload)
            results = pipe.execute(raise_on_error=False)
        except (*_CONNECTION_ERRORS, redis.AuthenticationError) as e:
            self._unreachable(envs, e)
            return
        self._reachable()
        step = 2 if self.channel_prefix is not None else 1
        for env, res in zip(envs, results[::step], strict=True):
            if isinstance(res, Exception):  # e.g. WRONGTYPE on a key that is not a stream, OOM
                self.counters.error("command")
                self.counters.dropped(env.camera_id, "write_error")
                log.warning("redis sink %s: XADD %s failed: %s", self.name, self.stream_key(env.camera_id),
                            self._scrub(str(res)))
            else:
                self.counters.sent(env.camera_id)

    def _unreachable(self, envs: list[Envelope], e: Exception) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.counters.error("auth" if isinstance(e, redis.AuthenticationError) else "connection")
        self.buffer.requeue(envs)
        delay = self._backoff * random.uniform(0.5, 1.0)  # jitter: replicas do not reconnect in lockstep
        self._backoff = min(self._backoff * 2, self._backoff_max)
        if not self._down:
            log.warning("redis sink %s: %s unreachable (%s: %s); buffering up to %d events, retrying",
                        self.name, self.redacted_url, type(e).__name__, self._scrub(str(e)),
                        self.buffer.policy.maxsize)
        self._down = True
        self.wait(delay)

    def _reachable(self) -> None:
        self._backoff = self._backoff_initial
        if self._down:
            log.info("redis sink %s: %s reachable again", self.name, self.redacted_url)
        self._down = False

    def close_resources(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
