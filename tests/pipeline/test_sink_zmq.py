"""ZeroMQ sink with real PUB/SUB sockets on loopback TCP, including a subscriber that reads slowly."""

from __future__ import annotations

import threading
import time

import pytest
import zmq
from pydantic import TypeAdapter, ValidationError

from engines.errors import SinkError
from pipeline.events import encode, to_event
from pipeline.messages import FrameResult
from pipeline.sinks.base import Envelope
from pipeline.sinks.config import SinkConfig, ZmqSinkConfig
from pipeline.sinks.zmq import ZmqSink


def _env(camera: str, seq: int, pad: int = 0) -> Envelope:
    res = FrameResult(camera_id=camera, seq=seq, pts=None, capture_ts=time.time(), infer_ts=time.time(),
                      frame_size=(64, 48), model="m" + "x" * pad)
    return Envelope(camera_id=camera, kind="frame", payload=encode(to_event(res)), item=res)


@pytest.fixture
def ctx() -> zmq.Context:
    c = zmq.Context()
    yield c
    c.term()


def _subscribe(ctx: zmq.Context, sink: ZmqSink, topic: bytes = b"", rcvhwm: int = 1000) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, rcvhwm)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(sink.bound_endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    # PUB/SUB joins late: publish probes until the subscription has reached the publisher.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sink.publish(_env("probe", 0))
        if sub.poll(20):
            while sub.poll(50):
                sub.recv_multipart()
            return sub
    raise AssertionError("subscriber never connected")


def _sink(**kw: object) -> ZmqSink:
    return ZmqSink(name="zmq", endpoint="tcp://127.0.0.1:*", **kw)


@pytest.mark.parametrize("count_drops", [True, False])
def test_events_arrive_as_camera_and_json_multipart(ctx: zmq.Context, count_drops: bool) -> None:
    sink = _sink(count_drops=count_drops)
    try:
        sub = _subscribe(ctx, sink)
        sent = [_env("cam-a" if i % 2 else "cam-b", i) for i in range(20)]
        for env in sent:
            sink.publish(env)
        got = [sub.recv_multipart() for _ in sent]
        assert got == [[e.camera_id.encode(), e.payload] for e in sent]
        assert sink.counters.totals_sent["cam-a"] == 10 and not sink.counters.totals_dropped
        sub.close()
    finally:
        sink.close()


def test_topic_is_the_camera_id(ctx: zmq.Context) -> None:
    sink = _sink()
    try:
        sub = _subscribe(ctx, sink, topic=b"probe")  # probes let the subscription settle
        sub.setsockopt(zmq.SUBSCRIBE, b"cam1")
        sub.setsockopt(zmq.UNSUBSCRIBE, b"probe")
        time.sleep(0.1)
        for cam in ("cam2", "cam1", "cam10"):
            sink.publish(_env(cam, 1))
        got = []
        while sub.poll(300):
            got.append(sub.recv_multipart()[0])
        assert got == [b"cam1", b"cam10"]  # prefix match: listeners compare the id exactly
        sub.close()
    finally:
        sink.close()


def test_slow_subscriber_costs_events_not_pipeline_time(ctx: zmq.Context) -> None:
    sink = _sink(sndhwm=20, linger_ms=0)
    try:
        sub = _subscribe(ctx, sink, rcvhwm=20)
        received: list[bytes] = []
        stop = threading.Event()

        def slow_reader() -> None:
            while not stop.is_set():
                if sub.poll(10):
                    received.append(sub.recv_multipart()[0])
                    time.sleep(0.02)  # 50 events/s: far slower than the publisher

        reader = threading.Thread(target=slow_reader)
        reader.start()
        n = 6000  # ~24 MB: far more than the socket queues plus the kernel's socket buffers hold
        worst = 0.0
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            sink.publish(_env("cam-slow", i, pad=4000))
            worst = max(worst, time.perf_counter() - t)
        total = time.perf_counter() - t0
        stop.set()
        reader.join()
        sub.close()
        dropped = sink.counters.totals_dropped["cam-slow", "hwm"]
        sent = sink.counters.totals_sent["cam-slow"]
        assert sent + dropped == n and dropped > n // 4
        assert len(received) < n // 10
        # Blocking on this reader would take n * 20 ms = 120 s; NOBLOCK sends take microseconds each.
        assert total < 10.0 and worst < 0.5, (total, worst)
    finally:
        sink.close()


def test_bind_conflict_is_a_sink_error() -> None:
    first = _sink()
    try:
        with pytest.raises(SinkError, match="cannot bind tcp://127.0.0.1:"):
            ZmqSink(name="second", endpoint=first.bound_endpoint)
    finally:
        first.close()


def test_from_config_and_publish_after_close(ctx: zmq.Context) -> None:
    cfg = ZmqSinkConfig(type="zmq", endpoint="tcp://127.0.0.1:*", sndhwm=5, name="pub")
    sink = ZmqSink.from_config(cfg)
    assert sink.name == "pub" and sink.bound_endpoint.startswith("tcp://127.0.0.1:")
    sink.close()
    sink.publish(_env("cam", 1))
    assert sink.counters.totals_dropped["cam", "closed"] == 1


@pytest.mark.parametrize("raw, error", [
    ({"type": "zmq", "endpoint": "127.0.0.1:5555"}, "expected tcp://HOST:PORT"),
    ({"type": "zmq", "queue_size": 10}, "set sndhwm instead"),
    ({"type": "zmq", "on_full": "drop_oldest"}, "can only drop the newest"),
    ({"type": "zmq", "sndhwm": 0}, "greater than or equal to 1"),
    ({"type": "zmq", "hwm": 10}, "Extra inputs are not permitted"),
    ({"type": "kafka"}, "does not match any of the expected tags"),
])
def test_config_errors(raw: dict, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        TypeAdapter(SinkConfig).validate_python(raw)
