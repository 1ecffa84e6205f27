"""MQTT sink against a real mosquitto broker: per-camera topics, retained statuses (cleared for a camera a
reload removes, or that left while segpipe was down: the roster), presence and last will, a broker that is
down at start or restarts mid-stream (nothing lost at qos 1), refused logins."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from engines.errors import ConfigErrors
from pipeline.cli import main
from pipeline.config import CameraConfig, parse_config
from pipeline.events import encode, status_event
from pipeline.messages import CameraState, CameraStatus
from pipeline.sinks import mqtt as mqtt_sink
from pipeline.sinks.base import REMOVED, Envelope, policy_for
from pipeline.sinks.config import MqttSinkConfig
from pipeline.sinks.mqtt import MqttSink
from pipeline.sinks.stage import CamerasUpdate, EventMaker, SinkStage
from pipeline.supervisor import Supervisor
from tests.conftest import MqttBroker
from tests.helpers import wait_for
from tests.pipeline.media import write_clip
from tests.pipeline.test_sink_redis import _env
from tests.pipeline.test_supervisor import config


class Subscriber:
    """A paho client on ``segpipe/#`` (qos 1) that keeps (topic, event or text, retained) as they come.
    A fixed client id and a persistent session: the broker keeps what it missed while away."""

    def __init__(self, broker: MqttBroker, client_id: str = "test-sub", tls_ca: Path | None = None) -> None:
        self.got: list[tuple[str, Any, bool]] = []
        self.ready = threading.Event()
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if tls_ca is not None:
            c.tls_set(ca_certs=str(tls_ca))
        c.on_connect = lambda cl, *_: (cl.subscribe("segpipe/#", qos=1), self.ready.set())
        c.on_subscribe = lambda *_: None
        c.on_message = self._message
        c.reconnect_delay_set(0, 1)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        wait_for(self.ready.is_set, 10, "the subscriber to connect")
        time.sleep(0.2)  # the SUBACK

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        text = msg.payload.decode()
        self.got.append((msg.topic, json.loads(text) if text.startswith("{") else text, bool(msg.retain)))

    def seqs(self, topic: str) -> list[int]:
        return [e["seq"] for t, e, _ in list(self.got) if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _sink(broker: MqttBroker, **kw: Any) -> MqttSink:
    kw.setdefault("policy", policy_for("mqtt"))
    return MqttSink(name="mqtt", url=broker.url, client_id="segpipe-test", backoff_max_s=1, **kw)


def _status(camera: str, state: CameraState) -> Envelope:
    st = CameraStatus(camera_id=camera, state=state, ts=time.time())
    return Envelope(camera_id=camera, kind="status", payload=encode(status_event(st)), item=st)


@pytest.fixture
def subscriber(mqtt_broker: MqttBroker) -> Iterator[Subscriber]:
    sub = Subscriber(mqtt_broker)
    yield sub
    sub.close()


def test_events_go_to_per_camera_topics_with_statuses_retained(mqtt_broker: MqttBroker,
                                                               subscriber: Subscriber) -> None:
    sink = _sink(mqtt_broker)
    wait_for(sink.connected.is_set, 10, "the sink to connect")
    sink.publish(_status("gate", CameraState.LIVE))
    for seq in range(50):
        sink.publish(_env("gate", seq))
        sink.publish(_env("dock", seq))
    assert sink.flush(10) and sink.backlog() == 0
    wait_for(lambda: len(subscriber.seqs("segpipe/dock/frame")) == 50, 10, "every event")
    assert subscriber.seqs("segpipe/gate/frame") == list(range(50))  # in order
    assert sink.counters.totals_sent == {"gate": 51, "dock": 50} and not sink.counters.totals_dropped
    # a subscriber that comes later learns each camera's state and that segpipe is online
    late = Subscriber(mqtt_broker, client_id="late")
    try:
        wait_for(lambda: len(late.got) >= 3, 10, "the retained messages")
        retained = {t: (e if isinstance(e, str) else e["state"]) for t, e, r in late.got if r}
        assert retained == {"segpipe/gate/status": "live", "segpipe/_clients/segpipe-test": "online",
                            "segpipe/_clients/segpipe-test/cameras": '["gate"]'}  # its roster
        sink.close()
        wait_for(lambda: ("segpipe/_clients/segpipe-test", "offline", False) in late.got, 10, "offline")
    finally:
        late.close()


def _retained(broker: MqttBroker, expected: int) -> dict[str, str]:
    """What a subscriber that connects now is given as retained (``expected`` messages are awaited):
    topic -> a status's state, or the text."""
    late = Subscriber(broker, client_id="late")
    try:
        wait_for(lambda: len(late.got) >= expected, 10, "the retained messages")
        time.sleep(0.3)  # room for one more, which would be a test failure
        return {t: (e if isinstance(e, str) else e["state"]) for t, e, r in late.got if r}
    finally:
        late.close()


@pytest.mark.parametrize("workers", [False, True], ids=["stage-made-events", "event-workers"])
def test_a_camera_a_reload_removes_leaves_no_retained_status(mqtt_broker: MqttBroker, subscriber: Subscriber,
                                                             workers: bool) -> None:
    cams = {c: CameraConfig(id=c, url=f"{c}.mp4") for c in ("gate", "dock")}
    cfg = MqttSinkConfig(type="mqtt", url=mqtt_broker.url, client_id="segpipe-reload")
    # with event workers the stage is given no cameras, and a removed camera's last status comes after the
    # reload's update (a worker makes its event); without, the supervisor's order holds: status, then update
    stage = SinkStage.from_configs([cfg], cameras=() if workers else list(cams.values()))
    maker = EventMaker()

    def status(camera: str, state: CameraState) -> None:
        st = CameraStatus(camera_id=camera, state=state, ts=time.time())
        stage.take(maker.make(st) if workers else st)

    sink = stage.sinks[0][1]
    try:
        assert isinstance(sink, MqttSink)
        wait_for(sink.connected.is_set, 10, "the sink to connect")
        status("gate", CameraState.LIVE)
        status("dock", CameraState.LIVE)
        update = CamerasUpdate(cameras=(cams["dock"],))
        if workers:
            stage.take(update)
        status("gate", CameraState.STOPPED)
        if not workers:
            stage.take(update)
        assert sink.flush(10)
    finally:
        stage.close()
    # one subscribed all along saw gate stop, then its status cleared (again, after a late last status)
    wait_for(lambda: ("segpipe/gate/status", "", False) in subscriber.got, 10, "the clear")
    seen = [e if isinstance(e, str) else e["state"] for t, e, _ in subscriber.got if t == "segpipe/gate/status"]
    assert seen == (["live", "", "stopped", ""] if workers else ["live", "stopped", ""])
    assert sink.counters.totals_sent == {"gate": 2, "dock": 1}  # a clear is no event
    assert _retained(mqtt_broker, 3) == {"segpipe/dock/status": "live", "segpipe/_clients/segpipe-reload": "offline",
                                         "segpipe/_clients/segpipe-reload/cameras": '["dock"]'}


def test_a_clear_waits_on_disk_for_a_broker_that_is_away(tmp_path: Path) -> None:
    broker = MqttBroker(tmp_path, persistence=True)  # the retained statuses outlive its restart
    broker.start()
    sink = _sink(broker, spool_dir=tmp_path / "spool")
    try:
        wait_for(sink.connected.is_set, 10, "the sink to connect")
        sink.publish(_status("gate", CameraState.LIVE))
        sink.publish(_status("dock", CameraState.LIVE))
        assert sink.flush(10)
        broker.stop()
        wait_for(lambda: not sink.connected.is_set(), 10, "the sink to notice")
        sink.cameras_removed(["gate"])
        wait_for(lambda: sink.spool is not None and len(sink.spool) == 1, 10, "the clear on disk")
        broker.start()
        wait_for(lambda: sink.connected.is_set() and sink.backlog() == 0, 30, "the spool to be sent")
        assert sink.flush(10)
        assert _retained(broker, 3) == {"segpipe/dock/status": "live", "segpipe/_clients/segpipe-test": "online",
                                        "segpipe/_clients/segpipe-test/cameras": '["dock"]'}
    finally:
        sink.close()
        broker.stop()


def test_only_a_status_it_retained_is_cleared(tmp_path: Path) -> None:
    """A sink handed a camera's frames but no statuses (statuses: false) has nothing retained to clear."""
    sink = _sink(MqttBroker(tmp_path))  # never started
    queued: list[Envelope] = []  # as put, on this thread (the writer takes and requeues them meanwhile)
    put = sink.buffer.put
    sink.buffer.put = lambda env: (queued.append(env), put(env))[1]  # type: ignore[method-assign]
    try:
        sink.publish(_env("gate", 0))
        sink.publish(_status("dock", CameraState.LIVE))
        sink.cameras_removed(["gate", "dock"])
        sink.cameras_removed(["dock"])  # told again (a late status with event workers): nothing more to clear
        assert [(e.camera_id, e.kind, bool(e.payload)) for e in queued] == [
            ("gate", "frame", True), ("dock", "status", True), ("dock", REMOVED, False)]
    finally:
        sink.close(timeout=0.5)


def test_a_full_queue_never_drops_a_clear(tmp_path: Path) -> None:
    """Queued as a status, a clear was dropped by a full queue while the broker was away (counted as a lost
    event), and the removed camera's status stayed retained for good."""
    sink = _sink(MqttBroker(tmp_path), policy=policy_for("mqtt", maxsize=2))  # never started
    sink.publish(_status("dock", CameraState.LIVE))
    sink.cameras_removed(["dock"])
    for seq in range(4):
        sink.publish(_env("gate", seq))
    sink.close(timeout=0.5)  # the broker never came: what is left is counted as dropped at shutdown
    assert dict(sink.counters.totals_dropped) == {("dock", "buffer_full"): 1, ("gate", "buffer_full"): 3,
                                                  ("gate", "shutdown"): 1}


# ---------------------------------------------------------------- what an earlier run left retained

A, B, C = (CameraConfig(id=c, url=f"{c}.mp4") for c in "abc")
ROSTER = "segpipe/_clients/segpipe-test/cameras"
PRESENCE = "segpipe/_clients/segpipe-test"


def _stage(broker: MqttBroker, run: tuple[CameraConfig, ...], /, *, workers: bool = False,
           **cfg: Any) -> tuple[SinkStage, MqttSink]:
    """A sink stage of the cameras ``run`` with one MQTT sink of ``cfg`` (client id ``segpipe-test`` unless
    it says): with ``workers`` as with event workers, the cameras named by their rings alone."""
    cfg.setdefault("client_id", "segpipe-test")
    config = MqttSinkConfig(type="mqtt", url=broker.url, backoff_max_s=1, **cfg)
    stage = SinkStage.from_configs([config], cameras=() if workers else run,
                                   rings={c.id: f"ring-{c.id}" for c in run} if workers else None)
    sink = stage.sinks[0][1]
    assert isinstance(sink, MqttSink)
    return stage, sink


def _say(stage: SinkStage, camera: CameraConfig, state: CameraState) -> None:
    stage.take(CameraStatus(camera_id=camera.id, state=state, ts=time.time()))


def _first_run(broker: MqttBroker, cameras: tuple[CameraConfig, ...], **cfg: Any) -> None:
    """A run that publishes every camera ``live``, then stops."""
    stage, sink = _stage(broker, cameras, **cfg)
    try:
        for cam in cameras:
            _say(stage, cam, CameraState.LIVE)
        assert sink.flush(10)
    finally:
        stage.close()


@pytest.mark.parametrize("cameras, workers, cfg, retained", [
    ((A,), False, {}, {"segpipe/a/status": "live", ROSTER: '["a"]'}),
    ((A, B), False, {"cameras": ("a",)}, {"segpipe/a/status": "live", ROSTER: '["a"]'}),
    ((A,), True, {}, {"segpipe/a/status": "live", ROSTER: '["a"]'}),
    ((A, B), False, {"statuses": False}, {ROSTER: "[]"}),
], ids=["removed", "filtered-out", "event-workers", "statuses-off"])
def test_a_camera_gone_while_segpipe_was_down_leaves_no_retained_status(
        mqtt_broker: MqttBroker, subscriber: Subscriber, cameras: tuple[CameraConfig, ...], workers: bool,
        cfg: dict[str, Any], retained: dict[str, str]) -> None:
    """Run 1 publishes a and b; run 2 is not handed b's statuses (b left the config, the sink's ``cameras:``
    leaves it out, or the sink publishes no status at all): b's status, retained by run 1, is cleared
    at run 2's start, before any status of its own; a's stays, until run 2 says otherwise."""
    _first_run(mqtt_broker, (A, B))
    stage, sink = _stage(mqtt_broker, cameras, workers=workers, **cfg)
    try:
        assert sink.flush(10)
    finally:
        stage.close()
    assert _retained(mqtt_broker, len(retained) + 1) == {**retained, PRESENCE: "offline"}
    cleared = {t for t, e, _ in subscriber.got if e == "" and t.endswith("/status")}
    assert cleared == ({"segpipe/b/status"} if "segpipe/a/status" in retained else
                       {"segpipe/a/status", "segpipe/b/status"})


def test_with_no_camera_list_nothing_is_cleared_until_a_reload_gives_one(mqtt_broker: MqttBroker) -> None:
    """A sink stage told neither cameras nor rings cannot tell a camera gone from one not heard of yet."""
    _first_run(mqtt_broker, (A, B))
    stage, sink = _stage(mqtt_broker, ())
    try:
        # nothing is queued (no sweep without a camera list), so flush alone would not wait for the connect
        wait_for(sink.connected.is_set, 10, "the sink to connect")
        assert sink.flush(10)
        assert _retained(mqtt_broker, 4) == {"segpipe/a/status": "live", "segpipe/b/status": "live",
                                             PRESENCE: "online", ROSTER: '["a","b"]'}
        stage.take(CamerasUpdate(cameras=(A,)))
        assert sink.flush(10)
        assert _retained(mqtt_broker, 3) == {"segpipe/a/status": "live", PRESENCE: "online", ROSTER: '["a"]'}
    finally:
        stage.close()


@pytest.mark.parametrize("spool", [False, True], ids=["in-memory", "spooled"])
def test_a_broker_down_at_start_is_swept_once_up_and_a_camera_published_meanwhile_stays(tmp_path: Path,
                                                                                      spool: bool) -> None:
    """Run 2 starts while the broker is away, and a reload puts back c, which says ``connecting``: once the
    broker is up b is cleared and c is not (its clear, if any, went before its new status)."""
    broker = MqttBroker(tmp_path, persistence=True)  # what run 1 retained outlives the broker's restart
    broker.start()
    stage: SinkStage | None = None
    try:
        _first_run(broker, (A, B, C))
        broker.stop()
        stage, sink = _stage(broker, (A,), spool_dir=tmp_path / "spool" if spool else None)
        stage.take(CamerasUpdate(cameras=(A, C)))
        _say(stage, C, CameraState.CONNECTING)
        time.sleep(0.3)
        assert not sink.connected.is_set() and (sink.spool is None) is not spool
        broker.start()
        wait_for(lambda: sink.connected.is_set() and sink.backlog() == 0, 30, "the held events to be sent")
        assert sink.flush(10)
        assert _retained(broker, 4) == {"segpipe/a/status": "live", "segpipe/c/status": "connecting",
                                        PRESENCE: "online", ROSTER: '["a","c"]'}
    finally:
        if stage is not None:
            stage.close()
        broker.stop()


def test_a_status_an_earlier_run_spooled_goes_out_then_is_cleared(tmp_path: Path) -> None:
    """Run 1 spools a's and b's statuses (the broker never came); run 2, without b, sends the spool first:
    b's status goes out (the broker never had it on the roster), then is cleared."""
    broker = MqttBroker(tmp_path)  # down through run 1
    spool = tmp_path / "spool"
    stage, sink = _stage(broker, (A, B), spool_dir=spool)
    try:
        for cam in (A, B):
            _say(stage, cam, CameraState.LIVE)
        wait_for(lambda: sink.spool is not None and sink.backlog() == 3, 10, "the statuses on disk")  # + a sweep
    finally:
        stage.close(timeout=1)
    broker.start()
    sub = Subscriber(broker)
    stage, sink = _stage(broker, (A,), spool_dir=spool)
    try:
        wait_for(lambda: sink.connected.is_set() and sink.backlog() == 0, 30, "the spool to be sent")
        assert sink.flush(10)
        assert _retained(broker, 3) == {"segpipe/a/status": "live", PRESENCE: "online", ROSTER: '["a"]'}
        assert [e if isinstance(e, str) else e["state"] for t, e, _ in sub.got if t == "segpipe/b/status"] == [
            "live", ""]
    finally:
        stage.close()
        sub.close()
        broker.stop()


def test_another_client_id_never_clears_the_first_ones_cameras(mqtt_broker: MqttBroker,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A shard replica (its own client id) handed only a leaves b, which another replica published, alone;
    and ``segpipe listen`` prints the statuses, not the rosters."""
    _first_run(mqtt_broker, (A, B), client_id="replica-0")
    stage, sink = _stage(mqtt_broker, (A,), client_id="replica-1")
    try:
        assert sink.flush(10)
    finally:
        stage.close()
    assert _retained(mqtt_broker, 5) == {
        "segpipe/a/status": "live", "segpipe/b/status": "live", "segpipe/_clients/replica-0": "offline",
        "segpipe/_clients/replica-0/cameras": '["a","b"]', "segpipe/_clients/replica-1": "offline"}
    assert main(["listen", "--mqtt", mqtt_broker.url, "--idle-timeout", "1"]) == 1  # no event for 1 s
    out, err = capsys.readouterr()
    assert sorted(out.splitlines()) == ["a status=live", "b status=live"] and "malformed" not in err, (out, err)


def test_a_roster_that_cannot_be_read_back_holds_the_events_back_briefly(mqtt_broker: MqttBroker,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that drops the probe (an ACL): after ``ROSTER_WAIT_S`` the sink publishes without the old
    roster, and says so."""
    monkeypatch.setattr(mqtt_sink, "ROSTER_WAIT_S", 0.5)
    monkeypatch.setattr(MqttSink, "_on_message", lambda *_: None)
    sink = _sink(mqtt_broker)
    try:
        sink.publish(_status("gate", CameraState.LIVE))
        assert sink.flush(10)
        assert sink.counters.totals_errors["roster"] == 1 and sink.counters.totals_sent == {"gate": 1}
    finally:
        sink.close()


def test_a_broker_down_at_start_gets_everything_once_up(tmp_path: Path) -> None:
    broker = MqttBroker(tmp_path)  # not started
    sink = _sink(broker)
    try:
        for seq in range(100):
            sink.publish(_env("gate", seq))
        time.sleep(1.0)
        assert not sink.connected.is_set() and sink.backlog() == 100  # held, not dropped
        assert sink.counters.totals_errors["connect"] >= 1
        broker.start()
        sub = Subscriber(broker)  # before the sink's next retry (at least 1 s apart)
        try:
            assert sink.flush(30)
            wait_for(lambda: len(sub.seqs("segpipe/gate/frame")) >= 100, 10, "the held events")
            assert sub.seqs("segpipe/gate/frame") == list(range(100))
        finally:
            sub.close()
    finally:
        sink.close()
        broker.stop()


def test_a_broker_restart_loses_nothing_at_qos_1(tmp_path: Path) -> None:
    broker = MqttBroker(tmp_path, persistence=True)  # the subscriber's session outlives the restart
    broker.start()
    sub = Subscriber(broker)
    sink = _sink(broker)
    try:
        wait_for(sink.connected.is_set, 10, "the sink to connect")
        for seq in range(300):
            sink.publish(_env("gate", seq))
            if seq == 100:
                broker.stop()
            if seq == 200:
                broker.start()
            time.sleep(0.005)
        assert sink.flush(60)
        wait_for(lambda: set(sub.seqs("segpipe/gate/frame")) == set(range(300)), 30, "every event, at least once")
        assert not sink.counters.totals_dropped and sink.counters.totals_errors["disconnect"] >= 1
    finally:
        sink.close()
        sub.close()
        broker.stop()


def test_an_event_handed_to_paho_as_the_link_goes_is_sent_once_it_is_back(tmp_path: Path) -> None:
    """The writer checks the link, then publishes: when the link goes in between, paho answers "no
    connection" yet keeps a qos 1 message and sends it after the reconnect. It is one of the window, not
    published again (each copy filled paho's queue until it refused the presence message of the next
    connect, whose acknowledgement flush then waited for in vain)."""
    broker = MqttBroker(tmp_path, persistence=True)
    broker.start()
    sub = Subscriber(broker)
    sink = _sink(broker, max_inflight=10)
    try:
        wait_for(sink.connected.is_set, 10, "the sink to connect")
        broker.stop()
        wait_for(lambda: not sink.connected.is_set(), 10, "the sink to see the broker go")
        records = [mqtt_sink._record(_env("gate", seq)) for seq in range(12)]
        taken = [sink._put(sink.topic_prefix + key, payload, retain=False, camera="gate") for key, payload in records]
        assert taken == [True] * 10 + [False] * 2  # the window is full: the writer keeps the last two
        broker.start()
        assert sink.flush(30)
        wait_for(lambda: set(sub.seqs("segpipe/gate/frame")) == set(range(10)), 30, "the ten it took")
        assert sink.counters.totals_sent == {"gate": 10}
    finally:
        sink.close()
        sub.close()
        broker.stop()


def test_qos_0_events_the_link_takes_with_it_are_counted_lost_not_waited_for(tmp_path: Path) -> None:
    """At qos 0 paho reports an event once written to the socket. What it still held unwritten when the link
    went it drops at the reconnect, reporting nothing: those stayed in the window for good, and flush waited
    on them in vain."""
    broker = MqttBroker(tmp_path)
    broker.start()
    sink = _sink(broker, qos=0)
    big = b"x" * 2**20
    try:
        wait_for(sink.connected.is_set, 10, "the sink to connect")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)  # reads nothing: the socket's buffers fill, paho's queue grows
        for _ in range(60):
            sink.publish(Envelope(camera_id="gate", kind="frame", payload=big, item=None))
        wait_for(lambda: len(sink.buffer) == 0, 20, "the writer to hand every event to paho")
        assert sink.backlog() > 0
        broker.proc.kill()
        broker.proc.wait()
        broker.start()
        assert sink.flush(30)
        # not ``lost >= backlog()`` read before the kill: paho may finish writing one more into the socket's
        # buffers meanwhile, which then counts as sent (it did once, 56 lost of a backlog of 57)
        lost = sink.counters.totals_dropped[("gate", "disconnected")]
        assert lost > 0 and lost + sink.counters.totals_sent["gate"] == 60
    finally:
        sink.close()
        broker.stop()


def test_a_refused_login_is_counted_and_the_events_wait(tmp_path: Path) -> None:
    broker = MqttBroker(tmp_path, anonymous=False)
    broker.start()
    sink = _sink(broker)
    try:
        sink.publish(_env("gate", 0))
        wait_for(lambda: sink.counters.totals_errors["connect"] >= 1, 10, "the refusal")
        assert sink.backlog() == 1 and not sink.connected.is_set()
    finally:
        sink.close(timeout=0.5)
        broker.stop()
    assert sink.counters.totals_dropped == {("gate", "shutdown"): 1}


def test_mqtts_with_a_private_ca(tmp_path: Path, tls_cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    broker = MqttBroker(tmp_path, tls=tls_cert)
    broker.start()
    url = f"mqtts://127.0.0.1:{broker.port}"
    sub = Subscriber(broker, tls_ca=tls_cert[1])
    untrusting = MqttSink(name="mqtt", url=url, client_id="untrusting", backoff_max_s=1, policy=policy_for("mqtt"))
    sink = MqttSink(name="mqtt", url=url, client_id="segpipe-test", backoff_max_s=1, policy=policy_for("mqtt"),
                    tls_ca=tls_cert[1])
    try:
        for seq in range(20):
            sink.publish(_env("gate", seq))
            untrusting.publish(_env("dock", seq))
        assert sink.flush(10)
        wait_for(lambda: len(sub.seqs("segpipe/gate/frame")) == 20, 10, "the events over TLS")
        assert sub.seqs("segpipe/gate/frame") == list(range(20))
        # a broker whose certificate the system's CAs do not vouch for gets nothing: the events wait
        time.sleep(1.0)
        assert not untrusting.connected.is_set() and untrusting.backlog() == 20
        assert not sub.seqs("segpipe/dock/frame") and untrusting.counters.totals_errors["connect"] >= 1
        refusals = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
        assert len(refusals) == 1 and "certificate verify failed" in refusals[0]  # once, not every retry
    finally:
        for s in (sink, untrusting):
            s.close(timeout=0.5)
        sub.close()
        broker.stop()
    assert untrusting.counters.totals_dropped == {("dock", "shutdown"): 20}


def test_listen_trusts_a_private_ca(tmp_path: Path, tls_cert: tuple[Path, Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    broker = MqttBroker(tmp_path, tls=tls_cert)
    broker.start()
    url = f"mqtts://127.0.0.1:{broker.port}"
    sink = MqttSink(name="mqtt", url=url, client_id="segpipe-test", backoff_max_s=1, policy=policy_for("mqtt"),
                    tls_ca=tls_cert[1])
    try:
        sink.publish(_status("cam1", CameraState.LIVE))
        assert sink.flush(10)
        assert main(["listen", "--mqtt", url, "--tls-ca", str(tls_cert[1]), "--count", "1",
                     "--idle-timeout", "10"]) == 0
        assert capsys.readouterr().out.splitlines() == ["cam1 status=live"]
        assert main(["listen", "--mqtt", url]) == 1  # the system's CAs do not know it
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "certificate verify failed" in err[0], err
    finally:
        sink.close()
        broker.stop()


def test_config_checks_the_url_without_echoing_it() -> None:
    base = {"model": {"path": "yolov8n-seg.yaml"}, "cameras": [{"id": "a", "url": "demo://factory"}]}
    with pytest.raises(ConfigErrors) as e:
        parse_config({**base, "sinks": [{"type": "mqtt", "url": "tcp://user:hunter2@broker:1883"}]}, env={})
    text = str(e.value)
    assert "sinks[0].url: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got scheme 'tcp'" in text
    assert "hunter2" not in text
    with pytest.raises(ConfigErrors, match=r"sinks\[0\]\.topic_prefix: 'plant/#/': MQTT wildcards"):
        parse_config({**base, "sinks": [{"type": "mqtt", "url": "mqtt://b", "topic_prefix": "plant/#/"}]}, env={})
    cfg = MqttSinkConfig(type="mqtt", url="mqtts://ops:hunter2@broker")
    assert "hunter2" not in repr(cfg) and cfg.redacted_url() == "mqtts://***@broker"


def _listen_while(sink: MqttSink, publish: Callable[[int], None], argv: list[str]) -> int:
    """``segpipe listen argv``'s exit status, run while ``publish(seq)`` is called every 5 ms for seq 0, 1,
    ... (the listener subscribes whenever it does), once the sink is connected."""
    stop = threading.Event()

    def keep_publishing() -> None:
        seq = 0
        while not stop.is_set():
            publish(seq)
            seq += 1
            time.sleep(0.005)

    wait_for(sink.connected.is_set, 10, "the sink to connect")
    t = threading.Thread(target=keep_publishing)
    t.start()
    try:
        return main(["listen", *argv])
    finally:
        stop.set()
        t.join()


def test_listen_prints_a_camera_and_its_retained_status(mqtt_broker: MqttBroker,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    sink = _sink(mqtt_broker)
    try:
        wait_for(sink.connected.is_set, 10, "the sink to connect")
        sink.publish(_status("cam1", CameraState.LIVE))
        assert sink.flush(10)

        def frames(seq: int) -> None:
            for cam in ("cam1", "cam10"):
                sink.publish(_env(cam, seq))

        assert _listen_while(sink, frames, ["--mqtt", mqtt_broker.url, "--camera", "cam1", "--count", "4",
                                            "--idle-timeout", "10"]) == 0
    finally:
        sink.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "cam1 status=live" and all(line.startswith("cam1 seq=") for line in lines[1:4])


def test_listen_skips_the_clear_of_a_removed_cameras_status(mqtt_broker: MqttBroker,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    sink = _sink(mqtt_broker)
    sub = Subscriber(mqtt_broker)  # sees the clears the listener must skip

    def removed_and_back(seq: int) -> None:  # its status, its clear (an empty message), a frame
        sink.publish(_status("cam1", CameraState.LIVE))
        sink.cameras_removed(["cam1"])
        sink.publish(_env("cam1", seq))

    try:
        assert _listen_while(sink, removed_and_back, ["--mqtt", mqtt_broker.url, "--camera", "cam1", "--count",
                                                      "12", "--idle-timeout", "10"]) == 0
    finally:
        sink.close()
        sub.close()
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert "malformed" not in err and len(lines) == 12, (out, err)
    assert all(line.startswith(("cam1 seq=", "cam1 status=live")) for line in lines), out
    assert ("segpipe/cam1/status", "", False) in sub.got  # the clears went out among them


@pytest.mark.parametrize("argv, error", [
    (["--mqtt", "mqtt://127.0.0.1:1", "--group", "g", "--consumer", "c"], "--group: consumer groups need --redis"),
    (["--mqtt", "redis://:hunter2@x"], "--mqtt: expected mqtt://HOST[:PORT]"),
    (["--mqtt", "mqtt://:hunter2@127.0.0.1:1"], "cannot reach the MQTT broker at mqtt://***@127.0.0.1:1"),
])
def test_listen_mqtt_errors_are_one_line(argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["listen", *argv]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"segpipe listen: error: {error}"), err
    assert "hunter2" not in err[0]


def test_listen_refused_login_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broker = MqttBroker(tmp_path, anonymous=False)
    broker.start()
    try:
        assert main(["listen", "--mqtt", broker.url]) == 1
    finally:
        broker.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused the connection: Not authorized" in err[0], err


def test_a_run_publishes_frames_and_statuses(tmp_path: Path, mqtt_broker: MqttBroker,
                                             subscriber: Subscriber) -> None:
    clip = write_clip(tmp_path / "cam.mp4", frames=6, fps=15, size=(96, 64))
    cfg = config(tmp_path, [{"id": "cam", "url": str(clip), "realtime": False, "lossless": True}],
                 sinks=[{"type": "mqtt", "url": mqtt_broker.url, "client_id": "run"}])
    assert Supervisor(cfg=cfg).run() == 0
    wait_for(lambda: len(subscriber.seqs("segpipe/cam/frame")) == 6, 10, "every frame")
    states = [e["state"] for t, e, _ in subscriber.got if t == "segpipe/cam/status"]
    assert states == ["connecting", "live", "ended"]
    assert ("segpipe/_clients/run", "offline", False) in subscriber.got


def test_an_outage_and_a_restart_during_it_lose_nothing_with_a_spool(tmp_path: Path) -> None:
    broker = MqttBroker(tmp_path)  # down while the first run publishes, then shuts down
    spool = tmp_path / "spool"
    first = _sink(broker, spool_dir=spool)
    for seq in range(300):
        first.publish(_env("gate", seq))
    wait_for(lambda: first.spool is not None and len(first.spool) == 300, 10, "the events on disk")
    first.close(timeout=2)
    assert not first.counters.totals_dropped and list(spool.glob("*.spool"))
    broker.start()
    sub = Subscriber(broker)
    second = _sink(broker, spool_dir=spool)  # the next run: the spool goes out first, then new events
    try:
        assert second.backlog() == 300
        for seq in range(300, 350):
            second.publish(_env("gate", seq))
        assert second.flush(30)
        wait_for(lambda: len(sub.seqs("segpipe/gate/frame")) >= 350, 10, "every event")
        wait_for(lambda: second.backlog() == 0, 10, "the last acknowledgements")  # the spool drains when idle
        assert sub.seqs("segpipe/gate/frame") == list(range(350))
        assert second.counters.totals_sent["gate"] == 350 and not list(spool.glob("*.spool"))
    finally:
        second.close()
        sub.close()
        broker.stop()
