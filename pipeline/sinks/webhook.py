"""Webhook sink: HTTP POST of chosen events, one JSON event per request, in order.

For alerts, not for every frame: by default only frame events with a line crossing and camera status
changes (a picture gone frozen, blank, moved or blurred, and back, included: those are statuses) go out (``events``), optionally only for some labels (``classes``), and without their masks
(``masks: false``: ``mask`` is null), so a receiver such as n8n, Node-RED, a VMS or a chat relay gets
small bodies. Each request carries ``Idempotency-Key`` (a hash of the body, the same on every retry),
``X-Segpipe-Camera``, and with ``secret`` ``X-Segpipe-Timestamp`` and ``X-Segpipe-Signature: sha256=<hex>``,
the HMAC-SHA256 of ``<timestamp>.<body>`` (``pipeline.client.verify_webhook`` checks it). With
``snapshot``, each frame event carries its picture as a JPEG with its detections drawn in (``"snapshot":
{"format": "jpeg", "width", "height", "data": base64}``), read back from the camera's shared-memory ring (``pipeline.shm.RingPeek``)
when the event is published: nothing is copied for the frames that fire nothing, and a frame the
decoder has already overwritten (the ring holds its last few frames) goes out without one, counted as
a ``snapshot`` error.

Answers: 2xx is delivered. 408, 429 and 5xx, or no answer at all (refused, timed out, cut off), mean
the receiver is away or overloaded: the event and those behind it wait, in order, in the bounded buffer
or with ``spool_dir`` on disk, and are tried again after an exponential back-off with jitter (at least
the ``Retry-After`` a 429 or 503 asks for). Any other answer (a 400, 401, 404: a receiver that will never
take this event) drops it, counted as ``rejected``, so one bad event cannot hold up the rest. One
keep-alive connection is reused; a reused one the receiver had closed is retried at once on a new one.
An event whose answer was lost (a timeout after the receiver took it) is sent again: at least once.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import http.client
import json
import logging
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import cv2

from engines import __version__
from engines.errors import SegpipeError, SinkError
from engines.urls import redact_url
from pipeline.client import webhook_signature
from pipeline.events import encode
from pipeline.images import shrunk
from pipeline.messages import FrameResult
from pipeline.sinks.base import DropPolicy, Envelope, FrameSource, policy_for
from pipeline.sinks.config import WebhookSinkConfig
from pipeline.sinks.draw import draw_event
from pipeline.sinks.remote import Record, RemoteSink

log = logging.getLogger(__name__)

RETRY_AFTER_MAX_S = 300.0  # a Retry-After longer than this is capped: the events behind it wait meanwhile
_LOG_EVERY_S = 60.0  # a receiver that keeps rejecting events is logged at most this often
_RETRIED = {408, 429}  # 4xx answers that mean "later", not "never"

# A frame event's compact JSON holds these only when the trigger may match (events.encode writes no
# spaces, and a quote inside a string is escaped, so no label or id can fake them): most frame events
# are let go without being parsed.
_MARKERS = {"detection": b'"detections":[{', "crossing": b'"crossings":[{', "zone": b'"zones":["',
            "overstay": b'"overstays":[{', "crowding": b'"crowding":[{'}


def _matches(event: dict, events: tuple[str, ...], classes: frozenset[str] | None) -> bool:
    """Whether a frame event fires one of ``events`` for an object of ``classes`` (any when None)."""
    if "frame" in events or ("crowding" in events and event.get("crowding")):  # crowding counts every object
        return True
    dets = [d for d in event.get("detections", ()) if classes is None or d["label"] in classes]
    return (("detection" in events and bool(dets))
            or ("zone" in events and any(d.get("zones") for d in dets))
            or any(e in events and any(classes is None or x["label"] in classes for x in event.get(key) or ())
                   for e, key in (("crossing", "crossings"), ("overstay", "overstays"))))


class WebhookSink(RemoteSink):
    """POST chosen events to ``url`` (see the module doc), never blocking the pipeline."""

    def __init__(self, *, name: str, url: str, policy: DropPolicy, events: tuple[str, ...] = ("crossing", "status"),
                 classes: tuple[str, ...] | None = None, masks: bool = False, headers: dict[str, str] | None = None,
                 secret: str | None = None, timeout_s: float = 5.0, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0, tls_ca: Path | None = None, spool_dir: Path | None = None,
                 spool_max_bytes: int = 2**30, snapshot: tuple[int, int] | None = None) -> None:
        """snapshot: (width, JPEG quality) of each posted frame event's picture; None: no picture."""
        self.redacted_url = redact_url(url)
        super().__init__(name=name, label=f"webhook sink {name!r}", target=self.redacted_url, policy=policy,
                         batch_size=64, backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
                         spool_dir=spool_dir, spool_max_bytes=spool_max_bytes)
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.events, self.masks, self.timeout_s = tuple(events), masks, timeout_s
        self.classes = frozenset(classes) if classes else None
        self._markers = tuple(_MARKERS[e] for e in self.events if e in _MARKERS)
        self._secret = secret
        self._headers = {"Content-Type": "application/json", "User-Agent": f"segpipe/{__version__}", **(headers or {})}
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        self._tls: ssl.SSLContext | None = None
        if self._https:
            try:
                self._tls = ssl.create_default_context(cafile=None if tls_ca is None else str(tls_ca))
            except (OSError, ssl.SSLError) as e:
                raise SinkError(f"webhook sink {name!r}: cannot load tls_ca {tls_ca}: {e}") from None
        self._conn: http.client.HTTPConnection | None = None
        self._last_reject = (0, 0.0)  # (status, monotonic time) of the last rejection logged
        self.snapshot = snapshot
        self._frames: FrameSource | None = None
        self._missed_logged = 0.0  # monotonic time a missed snapshot was last logged
        self.start()

    @classmethod
    def from_config(cls, cfg: WebhookSinkConfig) -> WebhookSink:
        return cls(name=cfg.sink_name, url=cfg.url, policy=policy_for("webhook", maxsize=cfg.queue_size,
                                                                       overflow=cfg.on_full),
                   events=cfg.events, classes=cfg.classes, masks=cfg.masks, headers=dict(cfg.headers),
                   secret=cfg.secret, timeout_s=cfg.timeout_s, backoff_initial_s=cfg.backoff_initial_s,
                   backoff_max_s=cfg.backoff_max_s, tls_ca=cfg.tls_ca, spool_dir=cfg.spool_dir,
                   spool_max_bytes=int(cfg.spool_max_mb * 2**20),
                   snapshot=None if cfg.snapshot is None else (cfg.snapshot.width, cfg.snapshot.quality))

    def use_frames(self, frames: FrameSource) -> None:
        """Where snapshots are read from (the sink stage hands it over when ``snapshot`` is set)."""
        self._frames = frames

    # ------------------------------------------------------------------ choosing (sink stage thread)

    def publish(self, env: Envelope) -> None:
        if env.kind == "status":
            wanted = "status" in self.events
        else:  # cheap and exact for "any": the worker thread checks the classes
            wanted = "frame" in self.events or any(m in env.payload for m in self._markers)
        if not wanted:
            return
        if self.snapshot is not None and env.kind == "frame":
            # now, before the decoder overwrites the frame; done on this thread only for events that go out
            event = json.loads(env.payload)
            if not _matches(event, self.events, self.classes):
                return
            self._add_snapshot(env, event)
            env = dataclasses.replace(env, payload=encode(self._finished(event)), item=None, image=None)
        super().publish(env)

    def _add_snapshot(self, env: Envelope, event: dict[str, Any]) -> None:
        """Add the frame's picture, with the event's detections drawn in, to ``event`` (nothing when the
        ring no longer holds the frame: counted, logged now and then)."""
        assert self.snapshot is not None
        width, quality = self.snapshot
        seq = env.item.seq if isinstance(env.item, FrameResult) else event["seq"]
        picture = None if self._frames is None else self._frames.frame(env.camera_id, seq,
                                                                       functools.partial(shrunk, width=width))
        if picture is None:
            self.counters.error("snapshot")
            now = time.monotonic()
            if now - self._missed_logged > _LOG_EVERY_S:
                self._missed_logged = now
                log.warning("webhook sink %s: camera %s frame %d was overwritten before its snapshot was taken "
                            "(its ring holds the last cameras[].ring_frames frames): posted without one",
                            self.name, env.camera_id, seq)
            return
        try:
            draw_event(picture, event, scale=picture.shape[1] / event["frame"]["width"])
        except (SegpipeError, ValueError, KeyError) as e:  # a mask that does not decode: the picture as it is
            log.warning("webhook sink %s: camera %s frame %d: cannot draw its detections (%s)", self.name,
                        env.camera_id, seq, e)
        ok, buf = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            self.counters.error("snapshot")
            return
        h, w = picture.shape[:2]
        event["snapshot"] = {"format": "jpeg", "width": w, "height": h, "data": base64.b64encode(buf.tobytes()).decode()}

    # ------------------------------------------------------------------------- the worker thread

    def records(self, envs: list[Envelope]) -> list[Record]:
        out: list[Record] = []
        for env in envs:
            body = self._prepared(env.payload)
            if body is not None:
                out.append((env.camera_id, body))
        return out

    def _prepared(self, body: bytes) -> bytes | None:
        """The event as posted (masks left out unless ``masks``), or None when it fires nothing for
        ``classes``. The same for its own output."""
        if self.classes is None and self.masks:
            return body
        event: dict[str, Any] = json.loads(body)
        if event["kind"] != "frame":
            return body
        if not _matches(event, self.events, self.classes):
            return None
        if not self.masks and any(d.get("mask") is not None for d in event["detections"]):
            return encode(self._finished(event))
        return body

    def _finished(self, event: dict[str, Any]) -> dict[str, Any]:
        """A frame event as posted: its masks left out unless ``masks`` (in place)."""
        if not self.masks:
            for det in event["detections"]:
                det["mask"] = None
        return event

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout_s,
                                                         context=self._tls)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _post(self, camera: str, body: bytes) -> http.client.HTTPResponse:
        headers = {**self._headers, "X-Segpipe-Camera": camera,
                   "Idempotency-Key": hashlib.sha256(body).hexdigest()[:32]}
        if self._secret is not None:
            ts = str(int(time.time()))
            headers["X-Segpipe-Timestamp"] = ts
            headers["X-Segpipe-Signature"] = webhook_signature(self._secret, ts, body)
        reused = self._conn is not None
        try:
            return self._request(body, headers)
        except (OSError, http.client.HTTPException):
            if not reused:
                raise
            return self._request(body, headers)  # the receiver had closed the idle connection: a new one

    def _request(self, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()  # the whole answer, so the connection can carry the next request
        except (OSError, http.client.HTTPException):
            self._drop_connection()
            raise
        if resp.will_close:
            self._drop_connection()
        return resp

    def deliver(self, records: list[Record]) -> int:
        for i, (camera, body) in enumerate(records):
            try:
                resp = self._post(camera, body)
            except (OSError, http.client.HTTPException) as e:
                self.unreachable("connection", f"{type(e).__name__}: {e}")
                return i
            status = resp.status
            if 200 <= status < 300:
                self.reachable()
                self.counters.sent(camera)
            elif status >= 500 or status in _RETRIED:
                self.unreachable("http", f"HTTP {status} {resp.reason}",
                                 retry_after_s=_retry_after(resp.getheader("Retry-After")))
                return i
            else:
                self.reachable()
                self._rejected(camera, status, resp.reason)
        return len(records)

    def _rejected(self, camera: str, status: int, reason: str) -> None:
        self.counters.error("rejected")
        self.counters.dropped(camera, "rejected")
        now = time.monotonic()
        if status != self._last_reject[0] or now - self._last_reject[1] > _LOG_EVERY_S:
            self._last_reject = (status, now)
            hint = " (redirects are not followed: give the final URL)" if 300 <= status < 400 else ""
            log.warning("webhook sink %s: %s answered HTTP %d %s: event dropped%s", self.name, self.redacted_url,
                        status, reason, hint)

    def close_resources(self) -> None:
        self._drop_connection()
        super().close_resources()


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After: <seconds>`` header (capped); None for none or an HTTP date."""
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_MAX_S) if value else None
    except ValueError:
        return None
