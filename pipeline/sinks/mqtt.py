"""MQTT sink: each event on ``<prefix><camera>/frame`` or ``<prefix><camera>/status`` (paho-mqtt).

Statuses are retained, so a subscriber that connects late learns every camera's state at once. When a
reload takes a camera out of the run, its retained status is cleared (an empty retained message on its
status topic, after its last status, ``stopped``): a late subscriber no longer learns of a camera that
is gone, and one subscribed at the time gets that empty message. The sink announces itself on
``<prefix>_clients/<client id>``: ``online`` (retained) once connected, and the broker publishes
``offline`` there (the last will) if segpipe goes away without closing. Camera ids cannot start with
``_``, so those topics never meet a camera's.

A camera taken out of the config while segpipe was down would keep its retained status for ever, so the
sink keeps a roster on the broker: ``<prefix>_clients/<client id>/cameras``, retained, the JSON list of
the cameras whose status this client may hold retained (client ids are stable across restarts). The
writer keeps it as it sends: a camera goes on it before its first status goes out (a crash in between
leaves no status off the roster), and off it after its status is cleared. At its first connect the sink
reads the roster back before it publishes anything: it subscribes to it, then sends it one empty message,
not retained, which comes back after the retained roster if there is one (a broker sends a topic's retained
message as the subscription is made: mosquitto before any later message, as the tests check), so "none
retained" costs one round trip, not a timeout. A broker that never answers (an ACL that drops the probe)
holds the events back ``ROSTER_WAIT_S``; then the sink publishes without the old roster, counted as a
``roster`` error. Each time the sink stage tells it the cameras this run hands it (``cameras_handed``: at
start and after each reload), a sweep marker is queued; where it comes out, in order with the events
(spooled, too), the sink clears the status of every camera on the roster that it is neither handed nor has
published a status of in this run: one gone from the config, or left out of this sink (``cameras:``,
``statuses: false``). In order, so a status this run publishes is never cleared after it, and a status an
earlier run spooled goes out, then is cleared. Another client id (a ``--shard`` replica) keeps its own
roster and never clears these.

Like the Redis sink, it never blocks the pipeline and survives the broker going away: paho's own
thread keeps the connection (reconnecting with back-off up to ``backoff_max_s``); events wait in the
sink's bounded buffer (oldest dropped and counted as ``buffer_full``) while it is down, or with
``spool_dir`` on disk (``pipeline.sinks.spool``, up to ``spool_max_mb``; a restart during an outage loses
nothing either), and go out in order once it is back. At qos 1 at most ``max_inflight`` events are unacknowledged at a time; those cut
off by a lost connection are sent again after the reconnect, so consumers get each event at least
once. ``sent`` counts acknowledged events (qos 0: written to the socket; those paho had not written
when the link went are lost, counted as ``disconnected``). The URL may carry a password:
only its redacted form is ever logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from engines.errors import SinkError
from engines.urls import redact_url
from pipeline.sinks.base import REMOVED, DropPolicy, Envelope, ThreadedSink, policy_for
from pipeline.sinks.config import MqttSinkConfig, mqtt_client_id
from pipeline.sinks.spool import open_spool, spool_counted

log = logging.getLogger(__name__)

_CLEAR = b""  # an empty retained message: the broker forgets the topic's retained one
# What paho keeps and sends (again after a reconnect) until acknowledged: a qos 1 message published while
# the link is down comes back as MQTT_ERR_NO_CONN but stays queued. Publishing it again would queue a copy.
_KEPT = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)
_CONNECT_MESSAGES = 2  # published by each connect: presence, and the roster probe
_RETRY_S = 0.2  # how long the writer waits before trying again while the broker is away or paho's queue is full
_SWEEP = "_sweep"  # the record of a sweep marker (a REMOVED marker of this non-camera): no topic, no event
ROSTER_WAIT_S = 5.0  # how long the roster's read-back may take before the sink publishes without it


class MqttSink(ThreadedSink):
    """Publish events to an MQTT broker (see the module doc), never blocking."""

    def __init__(self, *, name: str, url: str, policy: DropPolicy, topic_prefix: str = "segpipe/", qos: int = 1,
                 client_id: str | None = None, keepalive_s: int = 30, max_inflight: int = 100,
                 backoff_max_s: float = 10.0, tls_ca: Path | None = None, spool_dir: Path | None = None,
                 spool_max_bytes: int = 2**30) -> None:
        super().__init__(name=name, policy=policy, batch_size=256)
        self.redacted_url = redact_url(url)
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        self.topic_prefix, self.qos = topic_prefix, qos
        self.client_id = client_id or mqtt_client_id(name)
        self.presence_topic = f"{topic_prefix}_clients/{self.client_id}"
        self.roster_topic = f"{self.presence_topic}/cameras"
        self.connected = threading.Event()  # connected, and the roster read back: the writer may publish
        self.max_inflight = max_inflight
        self._lock = threading.Condition()  # guards the two mid tables below (writer and paho's thread)
        self._pending: dict[int, str] = {}  # message id -> camera, published and not yet acknowledged
        self._unwritten0: set[int] = set()  # those of them at qos 0: paho forgets them if the link goes first
        self._early: set[int] = set()  # acknowledged before the writer recorded them
        self._state = ""  # the last connection news logged, so an outage logs once, not every retry
        # the roster: cameras whose status this client may hold retained (None until read back; then the writer's)
        self._roster: set[str] | None = None
        self._roster_sent: frozenset[str] = frozenset()  # what the broker retains of it
        self._roster_due = 0.0  # monotonic: when to stop waiting for its read-back (0: not waiting)
        # the sink stage's thread writes these, the writer's sweep reads them
        self._hand_lock = threading.Lock()
        self._retained: set[str] = set()  # cameras whose status it published
        self._handed: frozenset[str] | None = None  # cameras this run hands it (None: not told yet)
        self.spool = open_spool(spool_dir, max_bytes=spool_max_bytes, sink=f"mqtt sink {name!r}")
        c = self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        c.max_inflight_messages_set(max_inflight)
        # The writer keeps its own window of max_inflight (the sink's buffer holds the rest); the headroom is
        # for what each connect publishes (presence, the roster probe), which a full queue would refuse.
        c.max_queued_messages_set(max_inflight + _CONNECT_MESSAGES)
        c.reconnect_delay_set(min_delay=1, max_delay=max(int(backoff_max_s), 1))
        if parts.username:
            c.username_pw_set(unquote(parts.username), None if parts.password is None else unquote(parts.password))
        try:
            if tls:
                c.tls_set(ca_certs=None if tls_ca is None else str(tls_ca))
        except (OSError, ValueError) as e:
            raise SinkError(f"mqtt sink {name!r}: TLS set-up failed ({tls_ca or 'system CAs'}): {e}") from None
        c.will_set(self.presence_topic, b"offline", qos=1, retain=True)
        c.on_connect, c.on_disconnect, c.on_publish = self._on_connect, self._on_disconnect, self._on_publish
        c.on_connect_fail = self._on_connect_fail
        c.on_subscribe, c.on_message = self._on_subscribe, self._on_message
        # connect_async: a broker that is down at start is waited for, as one that goes away later
        c.connect_async(parts.hostname or "", parts.port or (8883 if tls else 1883), keepalive=keepalive_s)
        c.loop_start()
        self.start()

    @classmethod
    def from_config(cls, cfg: MqttSinkConfig) -> MqttSink:
        return cls(name=cfg.sink_name, url=cfg.url, topic_prefix=cfg.topic_prefix, qos=cfg.qos,
                   client_id=cfg.client_id, keepalive_s=cfg.keepalive_s, max_inflight=cfg.max_inflight,
                   backoff_max_s=cfg.backoff_max_s, tls_ca=cfg.tls_ca, spool_dir=cfg.spool_dir,
                   spool_max_bytes=int(cfg.spool_max_mb * 2**20),
                   policy=policy_for("mqtt", maxsize=cfg.queue_size, overflow=cfg.on_full))

    # ------------------------------------------------------------------------ paho's thread

    def _news(self, state: str, line: str, *args: Any) -> None:
        if state != self._state:
            self._state = state
            (log.info if state == "up" else log.warning)(line, *args)

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.counters.error("connect")
            self._news(f"refused {reason}", "mqtt sink %s: %s refused the connection: %s", self.name,
                       self.redacted_url, reason)
            return
        self._forget_unwritten()
        infos = [client.publish(self.presence_topic, b"online", qos=1, retain=True)]
        if self._roster is None:  # read the roster back first: subscribe, then the probe that ends it
            self._roster_due = time.monotonic() + ROSTER_WAIT_S
            client.subscribe(self.roster_topic, qos=1)
            infos.append(client.publish(self.roster_topic, b"", qos=1))
        # Only what paho kept is waited for: a mid it refused would never be acknowledged, and flush would
        # wait on it for good. Acknowledgements come on this thread, after this callback: no race.
        mids = [info.mid for info in infos if info.rc in _KEPT]
        with self._lock:
            self._pending.update(dict.fromkeys(mids, ""))  # no camera's events: not counted as sent
        if self._roster is not None:
            self._up()

    def _forget_unwritten(self) -> None:
        """Count as lost the qos 0 events the last link took with it: paho drops what it had not written
        yet at a reconnect, and calls no ``on_publish`` for them (they would hold the window for good)."""
        with self._lock:
            lost = [self._pending.pop(mid, "") for mid in self._unwritten0]
            self._unwritten0.clear()
        for camera in lost:
            if camera:
                self.counters.dropped(camera, "disconnected")

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            self._roster_read(set(), why=f"the broker refused the subscription: {refused[0]}")

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.roster_topic or self._roster is not None:
            return  # its own messages echoed before the unsubscribe took effect
        if not msg.retain:  # its probe is back: the broker retained no roster
            self._roster_read(set())
            return
        try:
            old = json.loads(msg.payload)
        except ValueError:
            old = None
        if not isinstance(old, list) or not all(isinstance(c, str) for c in old):
            log.warning("mqtt sink %s: %s holds no list of camera ids; ignored", self.name, self.roster_topic)
            old = []
        self._roster_read(set(old))

    def _roster_read(self, old: set[str], why: str = "") -> None:
        """The roster an earlier run left is ``old``: the writer may publish (paho's thread, or the writer's
        after ``ROSTER_WAIT_S``). ``why``: why it could not be read (``old`` is then empty)."""
        with self._lock:
            if self._roster is not None:
                return
            self._roster, self._roster_sent, self._roster_due = old, frozenset(old), 0.0
        if why:
            self.counters.error("roster")
            log.warning("mqtt sink %s: cannot read its roster back from %s (%s): the retained statuses of cameras "
                        "removed while it was down stay", self.name, self.roster_topic, why)
        self._client.unsubscribe(self.roster_topic)
        self._up()

    def _up(self) -> None:
        if self._client.is_connected():
            self.connected.set()
            self._news("up", "mqtt sink %s: connected to %s", self.name, self.redacted_url)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` (broker down, TLS refused), and passes no reason
        e = sys.exc_info()[1]
        self.counters.error("connect")
        why = f"{type(e).__name__}: {e}" if e is not None else "no answer"
        self._news(f"unreachable {type(e).__name__}", "mqtt sink %s: cannot connect to %s (%s); events wait, "
                   "retrying", self.name, self.redacted_url, why)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        self._roster_due = 0.0  # no wait while away: a roster not read back yet is asked for at the next connect
        if not self._stop.is_set():
            self.counters.error("disconnect")
            self._news("down", "mqtt sink %s: lost %s (%s); reconnecting", self.name, self.redacted_url, reason)

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        with self._lock:
            camera = self._pending.pop(mid, None)
            self._unwritten0.discard(mid)
            if camera is None:
                self._early.add(mid)
            self._lock.notify_all()  # room in the window for a writer waiting on a full paho queue
        if camera:
            self.counters.sent(camera)

    # ---------------------------------------------------------------------- the stage's thread

    def publish(self, env: Envelope) -> None:
        if env.kind == "status" and env.payload:
            with self._hand_lock:
                self._retained.add(env.camera_id)
        super().publish(env)

    def cameras_removed(self, camera_ids: Collection[str]) -> None:
        """Clear the retained statuses this sink published of ``camera_ids``. A ``REMOVED`` marker each,
        behind the cameras' last statuses: they wait and go out in order (spooled, too) while the broker
        is away, and a full queue never drops one (the status would stay retained for good)."""
        with self._hand_lock:
            mine = [camera for camera in camera_ids if camera in self._retained]
            self._retained.difference_update(camera_ids)
        self.queue_removed(mine)

    def cameras_handed(self, camera_ids: Collection[str]) -> None:
        """Take the cameras whose statuses this run hands the sink (at start, and after each reload), and
        queue a sweep marker: where it comes out, in order, the statuses of the cameras on the roster that
        it is not handed and has published none of in this run are cleared (see the module doc)."""
        with self._hand_lock:
            self._handed = frozenset(camera_ids)
        self.queue_removed([_SWEEP])

    # --------------------------------------------------------------------------- the writer

    def write_batch(self, envs: list[Envelope]) -> None:
        self._roster_overdue()
        records = [_record(env) for env in envs]
        if self.spool is not None and (len(self.spool) or not self.connected.is_set()):
            self._to_spool(records)  # behind the backlog: events leave in the order they came
            self._drain()
            return
        n = self._send(records)
        if n == len(records):
            return
        if self.spool is not None and not self.connected.is_set():
            self._to_spool(records[n:])
        else:  # a full window (the broker is slow, not gone), or no spool: wait in memory, in order
            self.buffer.requeue(envs[n:])
            self.connected.wait(_RETRY_S)

    def _send(self, records: list[tuple[str, bytes]]) -> int:
        """Hand ``records`` (topic after the prefix, payload) to paho in order, the roster kept up to date
        around them; how many it took. It stops at a lost connection, or at a full window that no
        acknowledgement frees within ``_RETRY_S``."""
        for i, (key, payload) in enumerate(records):
            roster = self._roster
            if not self.connected.is_set() or roster is None:
                return i
            if key == _SWEEP:
                if not self._sweep(roster):
                    return i
                continue
            camera, _, kind = key.partition("/")
            if kind != "status":
                ok = self._put(self.topic_prefix + key, payload, retain=False, camera=camera)
            elif payload:  # on the roster before its status is retained: a crash in between leaves none off it
                ok = self._put_roster(roster | {camera}) and self._put(self.topic_prefix + key, payload,
                                                                        retain=True, camera=camera)
                if ok:
                    roster.add(camera)
            else:  # a clear, of a status this client may hold retained (not again after a sweep's)
                ok = camera not in roster or self._put(self.topic_prefix + key, _CLEAR, retain=True)
                if ok:
                    roster.discard(camera)
            if not ok:
                return i
        if self._roster is not None and self.connected.is_set():
            self._put_roster(self._roster)  # off it after the clears (tried again when idle)
        return len(records)

    def _sweep(self, roster: set[str]) -> bool:
        """Clear the status of the cameras on ``roster`` that this run does not hand the sink and has
        published none of; False when it must be tried again (those cleared are off the roster)."""
        with self._hand_lock:
            keep = None if self._handed is None else self._handed | self._retained
        if keep is None:  # spooled by an earlier run: this one sweeps once it knows its cameras
            return True
        stale = sorted(roster - keep)
        for camera in stale:
            if not self._put(f"{self.topic_prefix}{camera}/status", _CLEAR, retain=True):
                return False
            roster.discard(camera)
        if stale:
            log.info("mqtt sink %s: cleared the retained status of %d camera(s) no longer handed to it: %s",
                     self.name, len(stale), ", ".join(stale))
        return True

    def _put_roster(self, cameras: set[str]) -> bool:
        """Retain ``cameras`` as the roster unless the broker has it already; False: try again later."""
        if cameras == self._roster_sent:
            return True
        payload = json.dumps(sorted(cameras), separators=(",", ":")).encode()
        if not self._put(self.roster_topic, payload, retain=True, qos=1):
            return False
        self._roster_sent = frozenset(cameras)
        return True

    def _put(self, topic: str, payload: bytes, *, retain: bool, qos: int | None = None, camera: str = "") -> bool:
        """Hand one message to paho; False when it must be tried again (the link went, or a full window
        that no acknowledgement frees within ``_RETRY_S``). One paho refuses for good is counted and done
        with. ``camera``: the event's camera, counted as sent once acknowledged ("": no event)."""
        qos = self.qos if qos is None else qos
        with self._lock:  # the window: until an acknowledgement makes room
            if not self._lock.wait_for(lambda: len(self._pending) < self.max_inflight, _RETRY_S):
                return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE or (info.rc == mqtt.MQTT_ERR_NO_CONN and not qos):
            return False  # not kept (a qos 0 message is lost when the link went since the writer checked)
        if info.rc not in _KEPT:
            self.counters.error("publish")
            if camera:
                self.counters.dropped(camera, "write_error")
            return True
        with self._lock:
            early = info.mid in self._early
            if early:
                self._early.discard(info.mid)
            else:
                self._pending[info.mid] = camera
                if not qos:
                    self._unwritten0.add(info.mid)
        if early and camera:
            self.counters.sent(camera)
        return True

    def _roster_overdue(self) -> None:
        """Publish without the roster when its read-back takes past ``ROSTER_WAIT_S`` (a broker that
        drops the probe)."""
        due = self._roster_due
        if self._roster is None and due and time.monotonic() > due:
            self._roster_read(set(), why=f"no answer in {ROSTER_WAIT_S:g} s")

    def _to_spool(self, records: list[tuple[str, bytes]]) -> None:
        assert self.spool is not None
        spool_counted(self.spool, records, self.counters, sink=f"mqtt sink {self.name}", target=self.redacted_url,
                      camera_of=lambda key: key.partition("/")[0])

    def _drain(self) -> None:
        """Send the spool's oldest events while connected, for up to half a second (new events wait in
        the memory buffer meanwhile)."""
        assert self.spool is not None
        deadline = time.monotonic() + 0.5
        while len(self.spool) and self.connected.is_set() and time.monotonic() < deadline:
            chunk = self.spool.peek(self.batch_size)
            n = self._send(chunk)
            self.spool.take(n)
            if not len(self.spool):
                log.info("mqtt sink %s: spool sent, publishing directly again", self.name)
            elif n == 0:
                return

    def idle(self) -> None:
        self._roster_overdue()
        if not self.connected.is_set():
            return
        if self.spool is not None and len(self.spool):
            self._drain()
        elif self._roster is not None:
            self._put_roster(self._roster)  # one a full window held back

    def backlog(self) -> int:
        with self._lock:
            events = sum(1 for camera in self._pending.values() if camera)
        return len(self.buffer) + events + (len(self.spool) if self.spool is not None else 0)

    def _acked(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.01)
        with self._lock:
            return not self._pending

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event queued so far is written and, at qos 1, acknowledged."""
        t0 = time.monotonic()
        return super().flush(timeout) and self._acked(max(timeout - (time.monotonic() - t0), 0.0))

    def close_resources(self) -> None:
        if self.connected.is_set() and not self.abandoned:
            self._acked(2.0)
            with contextlib.suppress(RuntimeError, ValueError):  # not queued: the will says it instead
                self._client.publish(self.presence_topic, b"offline", qos=1, retain=True).wait_for_publish(2.0)
        with self._lock:
            for camera in self._pending.values():
                if camera:
                    self.counters.dropped(camera, "shutdown")
            self._pending.clear()
            self._unwritten0.clear()
        self._client.disconnect()
        self._client.loop_stop()
        if self.spool is not None:
            self.spool.close()


def _record(env: Envelope) -> tuple[str, bytes]:
    """``env`` as the writer sends and spools it: (topic after the prefix, payload). A ``REMOVED`` marker
    is its camera's status cleared, or the sweep."""
    if env.kind != REMOVED:
        return f"{env.camera_id}/{env.kind}", env.payload
    return (_SWEEP, b"") if env.camera_id == _SWEEP else (f"{env.camera_id}/status", _CLEAR)
