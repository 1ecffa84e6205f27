"""segpipe listen: print the events a running pipeline publishes (Redis Streams, ZeroMQ or MQTT), or
take a webhook sink's requests itself (``--webhook``, to try a webhook config before a real receiver).

One line per event (``cam0 seq=12 n=3 person,car,car``), or the raw JSON with ``--json``. With
``--group``/``--consumer`` several listeners share each camera's events through a Redis consumer
group: each event goes to one of them and is acknowledged after it is printed (at-least-once).
"""

from __future__ import annotations

import argparse
import functools
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import zmq

from engines.errors import ConfigError, DataError, SourceError
from engines.urls import redact_url
from pipeline.client import (
    GroupReader,
    StreamReader,
    as_text,
    decode_masks,
    parse_event,
    stream_keys,
    verify_webhook,
)
from pipeline.sinks.redis import connect

NAME = "listen"
HELP = "print events published by a running pipeline (Redis Streams, ZeroMQ, MQTT or webhooks)"

_RESCAN_S = 2.0  # how often to look for new camera streams when no --camera is given
_RECONNECT_S = 1.0  # how often to try a Redis that went away


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--redis", metavar="URL", help="redis://[:password@]host:port/db (rediss:// for TLS)")
    src.add_argument("--zmq", metavar="ENDPOINT", help="the ZeroMQ sink's endpoint, e.g. tcp://127.0.0.1:5555")
    src.add_argument("--mqtt", metavar="URL", help="the MQTT sink's broker, mqtt://[user:password@]host[:port]")
    src.add_argument("--webhook", metavar="[HOST:]PORT",
                     help="receive a webhook sink's POSTs here (default host 127.0.0.1), to try its config")
    p.add_argument("--secret", help="with --webhook: refuse requests whose signature does not verify (the "
                                    "sink's secret; pass it as \"$VAR\")")
    p.add_argument("--tls-ca", metavar="FILE", type=Path,
                   help="with --mqtt mqtts://: CA certificates to trust instead of the system's")
    p.add_argument("--camera", help="only this camera id (default: all)")
    p.add_argument("--group", help="Redis consumer group: listeners in one group share the events")
    p.add_argument("--consumer", help="this listener's name in --group (stable across restarts)")
    p.add_argument("--count", type=int, default=0, help="exit after N events (default: run until Ctrl-C)")
    p.add_argument("--masks", action="store_true", help="decode masks and print their areas in pixels")
    p.add_argument("--json", action="store_true", help="print each event's raw JSON")
    p.add_argument("--prefix", help="Redis stream key prefix (default segpipe:) or MQTT topic prefix (segpipe/)")
    p.add_argument("--from-start", action="store_true",
                   help="without --group: read what the streams hold, not only new events")
    p.add_argument("--claim-idle-ms", type=int, default=30_000,
                   help="with --group: take over events another listener left unacknowledged this long")
    p.add_argument("--idle-timeout", type=float, default=0.0,
                   help="exit with status 1 after this many seconds without an event (default: never)")


def format_event(event: dict[str, Any], *, masks: bool = False) -> str:
    """One human line for an event: ``cam seq=N n=K labels`` (``label#track`` for tracked objects,
    ``label#track@zone:12.3s`` for one in a zone that long; then ``zones NAME=K ...`` and ``crossed
    LINE:in label#track ...`` for cameras with zones and lines, ``overstayed ZONE label#track:31.0s``
    for zones with ``max_dwell_s``, ``crowding ZONE:start=7`` for zones with ``max_objects``) or
    ``cam status=STATE detail``."""
    if event["kind"] == "status":
        return f"{event['camera']} status={event['state']}" + (f" {event['detail']}" if event["detail"] else "")
    dets = event["detections"]
    line = f"{event['camera']} seq={event['seq']} n={len(dets)}"
    if dets:
        line += " " + ",".join(d["label"] + (f"#{d['track_id']}" if "track_id" in d else "")
                               + "".join(f"@{z}:{s:.1f}s" for z, s in d.get("dwell_s", {}).items()) for d in dets)
    if masks and dets:
        areas = ["-" if m is None else str(int(m.sum())) for m in decode_masks(event, crop=True)]
        line += " areas=" + ",".join(areas)
    if event.get("zone_counts"):
        line += " zones " + " ".join(f"{k}={n}" for k, n in event["zone_counts"].items())
    if event.get("crossings"):
        line += " crossed " + " ".join(f"{c['line']}:{c['direction']} {c['label']}#{c['track_id']}"
                                       for c in event["crossings"])
    if event.get("crowding"):
        line += " crowding " + " ".join(f"{c['zone']}:{c['state']}={c['objects']}" for c in event["crowding"])
    if event.get("overstays"):
        line += " overstayed " + " ".join(f"{o['zone']} {o['label']}#{o['track_id']}:{o['dwell_s']:.1f}s"
                                          for o in event["overstays"])
    return line


def _check_args(args: argparse.Namespace) -> None:
    if (args.group is None) != (args.consumer is None):
        raise ConfigError("--group" if args.group is None else "--consumer",
                          "--group and --consumer go together")
    if args.group is not None and not args.redis:
        raise ConfigError("--group", "consumer groups need --redis")
    if args.count < 0:
        raise ConfigError("--count", f"expected >= 0, got {args.count}")
    if args.idle_timeout < 0:  # a negative one used to end the listener at its first quiet half second
        raise ConfigError("--idle-timeout", f"expected >= 0 seconds, got {args.idle_timeout:g}")
    if args.claim_idle_ms < 0:
        raise ConfigError("--claim-idle-ms", f"expected >= 0, got {args.claim_idle_ms}")
    if args.redis:
        try:
            urlsplit(args.redis).port  # noqa: B018 - parsing it raises for a port out of range
        except ValueError as e:  # redis-py raises it in from_url: said here as the flag it is
            raise ConfigError("--redis", f"invalid URL: {e}") from None
    if args.from_start and (not args.redis or args.group is not None):  # was silently ignored
        raise ConfigError("--from-start", "only for --redis without --group (a new group starts at the oldest "
                                          "entry anyway; ZeroMQ, MQTT and webhooks keep no history)")
    if args.masks and args.json:
        raise ConfigError("--masks", "the mask areas go on the one-line form; --json prints the events as they came")
    if args.prefix is not None and not (args.redis or args.mqtt):
        raise ConfigError("--prefix", "only for --redis (stream_prefix) and --mqtt (topic_prefix)")
    if args.secret is not None and not args.webhook:
        raise ConfigError("--secret", "only for --webhook")
    if args.tls_ca is not None:
        if not (args.mqtt or "").startswith("mqtts://"):
            raise ConfigError("--tls-ca", "only for --mqtt mqtts://... (Redis: rediss://...?ssl_ca_certs=FILE)")
        if not args.tls_ca.is_file():
            raise ConfigError("--tls-ca", f"no such file: {args.tls_ca}")


Received = tuple[bytes, Callable[[], None] | None]
"""An event's JSON and how to acknowledge it (None where the transport has no acknowledgements)."""


class _RedisSource:
    def __init__(self, args: argparse.Namespace) -> None:
        try:
            self.client = connect(args.redis, socket_timeout_s=10.0)
            self.client.ping()
            keys = stream_keys(self.client, args.prefix or "segpipe:", args.camera)
        except ValueError as e:
            raise ConfigError("--redis", f"invalid URL {redact_url(args.redis)}: {e}") from None
        except redis.RedisError as e:
            raise SourceError(f"cannot reach Redis at {redact_url(args.redis)}: {type(e).__name__}: {e}") from None
        self.prefix, self.follow_new = args.prefix or "segpipe:", args.camera is None
        try:
            for key in keys if args.camera is not None else ():  # stream_keys lists only streams otherwise
                kind = as_text(self.client.type(key))
                if kind not in ("stream", "none"):  # XREAD / XGROUP CREATE would answer WRONGTYPE
                    raise ConfigError("--camera", f"Redis key {key!r} is a {kind}, not a segpipe event stream")
            if args.group:
                self.reader: GroupReader | StreamReader = GroupReader(
                    self.client, keys, group=args.group, consumer=args.consumer, claim_idle_ms=args.claim_idle_ms)
            else:
                self.reader = StreamReader(self.client, keys, start="0-0" if args.from_start else "$")
        except redis.RedisError as e:
            raise SourceError(f"Redis at {redact_url(args.redis)}: {type(e).__name__}: {e}") from None
        self._rescan = time.monotonic() + _RESCAN_S
        self.url, self._lost_at = redact_url(args.redis), 0.0  # monotonic time Redis went away (0: it is here)

    def read(self, max_n: int) -> list[Received]:
        """What arrived; nothing while Redis is away (a restart): said once on stderr, retried every
        second, and the group is created again if the restart lost it (``GroupReader``)."""
        try:
            if self.follow_new and time.monotonic() >= self._rescan:
                self.reader.add_keys(stream_keys(self.client, self.prefix))
                self._rescan = time.monotonic() + _RESCAN_S
            msgs = self.reader.read(count=max_n, block_ms=500)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            if not self._lost_at:
                self._lost_at = time.monotonic()
                print(f"segpipe listen: lost Redis at {self.url} ({type(e).__name__}: {e}); reconnecting",
                      file=sys.stderr, flush=True)
            time.sleep(_RECONNECT_S)
            return []
        if self._lost_at:
            print(f"segpipe listen: Redis at {self.url} is back after {time.monotonic() - self._lost_at:.0f} s",
                  file=sys.stderr, flush=True)
            self._lost_at = 0.0
        if isinstance(self.reader, GroupReader):
            group = self.reader
            return [(m.data, functools.partial(group.ack, m)) for m in msgs]
        return [(m.data, None) for m in msgs]

    def close(self) -> None:
        self.client.close()


def _check_zmq_host(endpoint: str) -> None:
    """ZeroMQ resolves a tcp:// host in the background and retries for ever: a typo in it would only
    show as silence. Resolve it once here, so that it fails in one line instead."""
    if not endpoint.startswith("tcp://"):
        return
    host = endpoint.removeprefix("tcp://").rpartition(":")[0].rpartition(";")[2].strip("[]")
    if not host or host == "*":
        return
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as e:
        raise ConfigError("--zmq", f"cannot resolve host {host!r} of {endpoint}: {e}") from None


class _ZmqSource:
    def __init__(self, args: argparse.Namespace) -> None:
        _check_zmq_host(args.zmq)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        try:
            self.sock.connect(args.zmq)
        except zmq.ZMQError as e:
            self.close()
            raise ConfigError("--zmq", f"cannot connect to {args.zmq}: {e}") from None
        self.topic = args.camera.encode() if args.camera else b""
        self.sock.setsockopt(zmq.SUBSCRIBE, self.topic)

    def read(self, max_n: int) -> list[Received]:
        out: list[Received] = []
        timeout = 500
        while len(out) < max_n and self.sock.poll(timeout):
            camera, payload = self.sock.recv_multipart()[:2]
            # topics are prefixes ("cam1" also matches "cam10"): keep exact matches only
            if not self.topic or camera == self.topic:
                out.append((payload, None))
            timeout = 0
        return out

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def _take(inbox: queue.Queue[bytes], max_n: int) -> list[Received]:
    """Up to ``max_n`` events a receiving thread put in ``inbox``, waiting at most 0.5 s for the first."""
    out: list[Received] = []
    try:
        out.append((inbox.get(timeout=0.5), None))
        while len(out) < max_n:
            out.append((inbox.get_nowait(), None))
    except queue.Empty:
        pass
    return out


def _mqtt_filters(prefix: str, camera: str | None) -> tuple[list[tuple[str, int]], str]:
    """The qos-1 subscriptions for the sink's ``<prefix><camera>/frame`` and ``.../status`` topics, and the
    prefix every received topic must start with. A prefix that does not end a topic level (the sink's
    ``topic_prefix: site1`` publishes ``site1cam0/frame``) cannot take a ``+``: its level is matched by
    ``+`` and checked against the prefix on arrival."""
    for flag, text in (("--prefix", prefix), ("--camera", camera or "")):
        if any(ch in text for ch in "+#\0"):
            raise ConfigError(flag, f"{text!r}: MQTT wildcards (+, #) and NUL cannot be in a topic")
    if camera is not None:
        return [(f"{prefix}{camera}/{kind}", 1) for kind in ("frame", "status")], prefix
    head, slash, _ = prefix.rpartition("/")
    return [(f"{head}{slash}+/{kind}", 1) for kind in ("frame", "status")], prefix


class _MqttSource:
    """Subscribes to the frame and status topics (qos 1) of every camera, or of ``--camera``."""

    def __init__(self, args: argparse.Namespace) -> None:
        import paho.mqtt.client as mqtt
        from pydantic import ValidationError

        from pipeline.sinks.config import MqttSinkConfig

        try:
            MqttSinkConfig(type="mqtt", url=args.mqtt)
        except ValidationError as e:
            raise ConfigError("--mqtt", e.errors()[0]["msg"].removeprefix("Value error, ")) from None
        parts = urlsplit(args.mqtt)
        self.url = redact_url(args.mqtt)
        self.inbox: queue.Queue[bytes] = queue.Queue()
        self.connected, self.refused = threading.Event(), ""
        topics, prefix = _mqtt_filters(args.prefix if args.prefix is not None else "segpipe/", args.camera)
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

        self._lost_at, self._closing, self._subscribed = 0.0, False, False  # _lost_at: monotonic, 0 while here

        def on_connect(client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                self.refused = str(reason)
            else:
                client.subscribe(topics)  # again after every reconnect
                self._subscribed = True  # a refused login is no "lost" broker
                if self._lost_at:
                    print(f"segpipe listen: the MQTT broker at {self.url} is back after "
                          f"{time.monotonic() - self._lost_at:.0f} s", file=sys.stderr, flush=True)
                    self._lost_at = 0.0
            self.connected.set()

        def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if self._subscribed and not self._closing and not self._lost_at:  # paho reconnects by itself
                self._lost_at = time.monotonic()
                print(f"segpipe listen: lost the MQTT broker at {self.url} ({reason}); reconnecting",
                      file=sys.stderr, flush=True)

        c.on_connect, c.on_disconnect = on_connect, on_disconnect

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            # "+" in place of a partial level matches more than the prefix; an empty message is no event
            # but the sink clearing a removed camera's retained status
            if msg.topic.startswith(prefix) and msg.payload:
                self.inbox.put(bytes(msg.payload))

        c.on_message = on_message
        if parts.username:
            c.username_pw_set(unquote(parts.username), None if parts.password is None else unquote(parts.password))
        tls = parts.scheme == "mqtts"
        try:
            if tls:
                c.tls_set(ca_certs=None if args.tls_ca is None else str(args.tls_ca))
            c.connect(parts.hostname or "", parts.port or (8883 if tls else 1883))
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError; a CA file that is not PEM, ValueError
            raise SourceError(f"cannot reach the MQTT broker at {self.url}: {e}") from None
        c.loop_start()
        if not self.connected.wait(10.0) or self.refused:
            self.close()
            raise SourceError(f"the MQTT broker at {self.url} refused the connection: {self.refused or 'no answer'}")

    def read(self, max_n: int) -> list[Received]:
        return _take(self.inbox, max_n)

    def close(self) -> None:
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (reset, timed out) is no news; anything else is still a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _QuietServer6(_QuietServer):
    address_family = socket.AF_INET6


class _WebhookSource:
    """An HTTP server taking a webhook sink's POSTs (any path): 204 for each event; 401 when ``--secret``
    is given and the request's signature does not verify, 400 for a body that is not a segpipe event,
    411 without a Content-Length (each said on stderr)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from http.server import BaseHTTPRequestHandler

        host, _, port_text = args.webhook.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError("--webhook", f"expected [HOST:]PORT, got {args.webhook!r}")
        self.inbox: queue.Queue[bytes] = queue.Queue()
        source = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = self.headers.get("Content-Length", "")
                if not (length.isascii() and length.isdigit()):  # chunked, or a broken header: not the sink
                    self.close_connection = True  # what follows the headers is not a request
                    self._refuse(411, f"no valid Content-Length ({length!r})")
                    return
                body = self.rfile.read(int(length))
                if args.secret is not None and not verify_webhook(args.secret, body, dict(self.headers.items())):
                    self._refuse(401, "its signature does not verify with --secret")
                    return
                try:
                    parse_event(body)
                except DataError as e:  # 400: the sink counts it as rejected, instead of "delivered"
                    self._refuse(400, str(e))
                    return
                if not args.camera or self.headers.get("X-Segpipe-Camera") == args.camera:
                    source.inbox.put(body)
                self._answer(204)

            def _refuse(self, code: int, why: str) -> None:
                print(f"segpipe listen: refused a request from {self.client_address[0]} ({code}): {why}",
                      file=sys.stderr, flush=True)
                self._answer(code)

            def _answer(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        try:
            server_class = _QuietServer6 if ":" in host else _QuietServer  # an IPv6 literal, [::1]:8088
            self.server = server_class((host, int(port_text)), Handler)
        except OSError as e:
            raise SourceError(f"cannot listen on {host}:{port_text}: {e.strerror or e}") from None
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        shown = f"[{host}]" if ":" in host else host
        print(f"segpipe listen: taking webhooks on http://{shown}:{self.server.server_address[1]}/", file=sys.stderr,
              flush=True)

    def read(self, max_n: int) -> list[Received]:
        return _take(self.inbox, max_n)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    source: _RedisSource | _ZmqSource | _MqttSource | _WebhookSource
    if args.redis:
        source = _RedisSource(args)
    elif args.mqtt:
        source = _MqttSource(args)
    elif args.webhook:
        source = _WebhookSource(args)
    else:
        source = _ZmqSource(args)
    printed, last = 0, time.monotonic()
    try:
        while True:
            batch = source.read(min(args.count - printed, 100) if args.count else 100)
            if not batch and args.idle_timeout and time.monotonic() - last > args.idle_timeout:
                print(f"segpipe listen: no event for {args.idle_timeout:g} s", file=sys.stderr)
                return 1
            for data, ack in batch:
                last = time.monotonic()
                try:
                    event = parse_event(data)
                    print(data.decode() if args.json else format_event(event, masks=args.masks), flush=True)
                except (DataError, KeyError, TypeError, ValueError) as e:  # one bad event must not stop the listener
                    why = f"no field {e}" if isinstance(e, KeyError) else str(e)  # KeyError's own text is the key
                    print(f"segpipe listen: skipping a malformed event: {why}", file=sys.stderr)
                if ack is not None:
                    ack()  # after printing: a crash before this line means redelivery, not loss
                printed += 1
            if args.count and printed >= args.count:
                return 0
    except redis.RedisError as e:
        raise SourceError(f"Redis at {redact_url(args.redis)}: {type(e).__name__}: {e}") from None
    finally:
        source.close()
