"""segpipe listen and the stream readers: real Redis (plain reads, consumer groups) and ZeroMQ."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis
from pycocotools import mask as mask_utils

from pipeline.cli import main
from pipeline.cli.listen import format_event
from pipeline.client import GroupReader, StreamReader, parse_event, stream_keys, webhook_signature
from pipeline.events import encode, status_event, to_event
from pipeline.messages import CameraState, CameraStatus, Detection, FrameResult
from pipeline.sinks.base import Envelope, policy_for
from pipeline.sinks.mqtt import MqttSink
from pipeline.sinks.redis import RedisSink
from pipeline.sinks.zmq import ZmqSink
from tests.conftest import server_port
from tests.helpers import accepts, listen_beside, wait_for


def _result(camera: str, seq: int, labels: tuple[str, ...] = ("person",)) -> FrameResult:
    m = np.zeros((6, 8), bool)
    m[1:4, 2:5] = True  # 9 pixels
    rle = mask_utils.encode(np.asfortranarray(m))
    dets = tuple(Detection(class_id=i, label=lb, score=0.5, box=(2, 1, 5, 4), mask=rle) for i, lb in enumerate(labels))
    return FrameResult(camera_id=camera, seq=seq, pts=None, capture_ts=time.time(), infer_ts=time.time(),
                       frame_size=(8, 6), model="m", detections=dets)


def _env(item: FrameResult | CameraStatus) -> Envelope:
    if isinstance(item, FrameResult):
        return Envelope(camera_id=item.camera_id, kind="frame", payload=encode(to_event(item)), item=item)
    return Envelope(camera_id=item.camera_id, kind="status", payload=encode(status_event(item)), item=item)


def _publish(url: str, items: list[FrameResult | CameraStatus], **kw: Any) -> None:
    sink = RedisSink(name="r", url=url, policy=policy_for("redis"), **kw)
    for item in items:
        sink.publish(_env(item))
    sink.close()
    assert sum(sink.counters.totals_sent.values()) == len(items)


@pytest.mark.parametrize("event, masks, line", [
    (to_event(_result("cam0", 12, ("person", "car"))), False, "cam0 seq=12 n=2 person,car"),
    (to_event(_result("cam0", 12, ("person", "car"))), True, "cam0 seq=12 n=2 person,car areas=9,9"),
    (to_event(_result("cam0", 3, ())), True, "cam0 seq=3 n=0"),
    ({"kind": "frame", "camera": "c", "seq": 4, "detections": [{"label": "car", "track_id": 7}, {"label": "car"}]},
     False, "c seq=4 n=2 car#7,car"),
    ({"kind": "frame", "camera": "c", "seq": 5, "detections": [{"label": "car", "track_id": 7, "zones": ["dock"],
                                                                "dwell_s": {"dock": 12.34}}],
      "zone_counts": {"dock": 1, "aisle": 0},
      "crossings": [{"line": "gate", "direction": "in", "track_id": 7, "class_id": 0, "label": "car"}]},
     False, "c seq=5 n=1 car#7@dock:12.3s zones dock=1 aisle=0 crossed gate:in car#7"),
    ({"kind": "frame", "camera": "c", "seq": 6, "detections": [{"label": "person", "track_id": 2}],
      "overstays": [{"zone": "dock", "track_id": 2, "class_id": 1, "label": "person", "dwell_s": 30.04}]},
     False, "c seq=6 n=1 person#2 overstayed dock person#2:30.0s"),
    ({"kind": "frame", "camera": "c", "seq": 7, "detections": [], "crowding": [{"zone": "q", "state": "end",
                                                                               "objects": 2}]},
     False, "c seq=7 n=0 crowding q:end=2"),
    (status_event(CameraStatus(camera_id="cam0", state=CameraState.STALLED, ts=1.0, detail="no frames")), False,
     "cam0 status=stalled no frames"),
    (status_event(CameraStatus(camera_id="cam0", state=CameraState.LIVE, ts=1.0)), False, "cam0 status=live"),
])
def test_format_event(event: dict, masks: bool, line: str) -> None:
    assert format_event(event, masks=masks) == line


@pytest.mark.parametrize("argv, error", [
    (["--redis", "redis://x", "--group", "g"], "--consumer: --group and --consumer go together"),
    (["--redis", "redis://x", "--consumer", "c"], "--group: --group and --consumer go together"),
    (["--zmq", "tcp://127.0.0.1:1", "--group", "g", "--consumer", "c"], "--group: consumer groups need --redis"),
    (["--redis", "redis://x", "--count", "-1"], "--count: expected >= 0"),
    (["--redis", "http://:hunter2@x"], "--redis: invalid URL http://***@x"),
    (["--zmq", "nowhere"], "--zmq: cannot connect to nowhere"),
    # ZeroMQ retries an unknown host silently for ever: only --idle-timeout used to end it
    (["--zmq", "tcp://nosuchhost.invalid:5555"], "--zmq: cannot resolve host 'nosuchhost.invalid'"),
    (["--redis", "redis://:hunter2@127.0.0.1:99999/0"], "--redis: invalid URL: Port out of range"),  # was a traceback
    (["--zmq", "tcp://127.0.0.1:1", "--idle-timeout", "-1"], "--idle-timeout: expected >= 0 seconds, got -1"),
    (["--redis", "redis://x", "--group", "g", "--consumer", "c", "--claim-idle-ms", "-5"],
     "--claim-idle-ms: expected >= 0, got -5"),
    # an MQTT filter paho refuses raised in its network thread: a traceback, then 10 s of "no answer"
    (["--mqtt", "mqtt://127.0.0.1:1", "--camera", "cam#"], "--camera: 'cam#': MQTT wildcards"),
    (["--mqtt", "mqtt://127.0.0.1:1", "--prefix", "site/+/"], "--prefix: 'site/+/': MQTT wildcards"),
    # flags that did nothing for the source they were given with, silently
    (["--zmq", "tcp://127.0.0.1:1", "--from-start"], "--from-start: only for --redis without --group"),
    (["--redis", "redis://x", "--group", "g", "--consumer", "c", "--from-start"], "--from-start: only for --redis"),
    (["--webhook", "8088", "--prefix", "x/"], "--prefix: only for --redis (stream_prefix) and --mqtt"),
    (["--zmq", "tcp://127.0.0.1:1", "--masks", "--json"], "--masks: the mask areas go on the one-line form"),
])
def test_argument_errors_are_one_line(argv: list[str], error: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["listen", *argv]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"segpipe listen: error: {error}"), err
    assert "hunter2" not in err[0]


def test_unreachable_redis_is_one_line_without_password(capsys: pytest.CaptureFixture) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["listen", "--redis", f"redis://:hunter2@127.0.0.1:{port}/0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"segpipe listen: error: cannot reach Redis at redis://***@127.0.0.1:{port}/0")
    assert "hunter2" not in err[0]


def test_listen_reads_a_camera_stream(redis_server: Any, capsys: pytest.CaptureFixture) -> None:
    items = [CameraStatus(camera_id="cam0", state=CameraState.LIVE, ts=1.0)] + [_result("cam0", i) for i in range(4)]
    _publish(redis_server.url, items + [_result("cam1", 9)])
    assert main(["listen", "--redis", redis_server.url, "--camera", "cam0", "--count", "5", "--from-start",
                 "--masks"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "cam0 status=live", *(f"cam0 seq={i} n=1 person areas=9" for i in range(4))]
    assert main(["listen", "--redis", redis_server.url, "--count", "6", "--from-start", "--json"]) == 0
    events = [parse_event(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((e["camera"], e.get("seq", -1)) for e in events) == [
        ("cam0", -1), ("cam0", 0), ("cam0", 1), ("cam0", 2), ("cam0", 3), ("cam1", 9)]


def test_listen_idle_timeout(redis_server: Any, capsys: pytest.CaptureFixture) -> None:
    assert main(["listen", "--redis", redis_server.url, "--camera", "quiet", "--idle-timeout", "0.3"]) == 1
    assert "no event for 0.3 s" in capsys.readouterr().err


def test_stream_reader_from_now_misses_nothing_between_reads(redis_server: Any) -> None:
    """start="$" means "from construction on": neither an event added before the first read nor one
    added to another camera's stream between two reads is lost (XREAD's own "$" would lose both)."""
    client = redis.Redis.from_url(redis_server.url)
    for key in ("segpipe:a", "segpipe:b"):
        client.xadd(key, {"event": b"old"})
    reader = StreamReader(client, ["segpipe:a", "segpipe:b", "segpipe:later"], start="$")
    client.xadd("segpipe:a", {"event": b"a1"})
    assert [m.data for m in reader.read(block_ms=100)] == [b"a1"]
    client.xadd("segpipe:b", {"event": b"b1"})
    client.xadd("segpipe:later", {"event": b"l1"})  # a stream created after the reader
    assert sorted(m.data for m in reader.read(block_ms=100)) == [b"b1", b"l1"]
    client.close()


def test_group_readers_share_events_exactly_once(redis_server: Any) -> None:
    n = 120
    _publish(redis_server.url, [_result("cam0", i) for i in range(n)])
    seen: dict[str, list[int]] = {"r1": [], "r2": []}
    lock, done = threading.Lock(), threading.Event()

    def work(name: str) -> None:
        client = redis.Redis.from_url(redis_server.url)
        reader = GroupReader(client, ["segpipe:cam0"], group="workers", consumer=name)
        while not done.is_set():
            for msg in reader.read(count=7, block_ms=100):
                seen[name].append(json.loads(msg.data)["seq"])
                time.sleep(0.001)  # some work, so both readers get turns
                reader.ack(msg)
                with lock:
                    if len(seen["r1"]) + len(seen["r2"]) >= n:
                        done.set()
        client.close()

    threads = [threading.Thread(target=work, args=(name,)) for name in seen]
    for t in threads:
        t.start()
    assert done.wait(20)
    for t in threads:
        t.join(5)
    assert sorted(seen["r1"] + seen["r2"]) == list(range(n))  # every event once, none twice
    assert seen["r1"] and seen["r2"]  # and both readers did work
    client = redis.Redis.from_url(redis_server.url)
    assert client.xpending("segpipe:cam0", "workers")["pending"] == 0  # all acknowledged


def test_cli_group_consumer_acks_and_claims_stale_entries(redis_server: Any, capsys: pytest.CaptureFixture) -> None:
    _publish(redis_server.url, [_result("cam0", i) for i in range(10)])
    client = redis.Redis.from_url(redis_server.url)
    crashed = GroupReader(client, ["segpipe:cam0"], group="g", consumer="crashed")
    taken = crashed.read(count=4, block_ms=10)  # read, never acknowledged: the reader "crashed"
    assert len(taken) == 4 and client.xpending("segpipe:cam0", "g")["pending"] == 4
    time.sleep(0.15)
    assert main(["listen", "--redis", redis_server.url, "--camera", "cam0", "--group", "g", "--consumer", "live",
                 "--claim-idle-ms", "100", "--count", "10"]) == 0
    seqs = [int(line.split()[1].split("=")[1]) for line in capsys.readouterr().out.splitlines()]
    assert sorted(seqs) == list(range(10)) and seqs[:4] == [0, 1, 2, 3]  # claimed ones first
    assert client.xpending("segpipe:cam0", "g")["pending"] == 0


def test_restarted_consumer_rereads_its_own_pending(redis_server: Any) -> None:
    _publish(redis_server.url, [_result("cam0", i) for i in range(5)])
    client = redis.Redis.from_url(redis_server.url)
    first = GroupReader(client, ["segpipe:cam0"], group="g", consumer="w1")
    assert len(first.read(count=3, block_ms=10)) == 3  # delivered, not acknowledged
    again = GroupReader(client, ["segpipe:cam0"], group="g", consumer="w1", claim_idle_ms=60_000)
    got = []
    for _ in range(4):
        for msg in again.read(count=10, block_ms=10):
            got.append(json.loads(msg.data)["seq"])
            again.ack(msg)
    assert got == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("group", [None, "alerts"])
def test_listen_rides_out_a_redis_restart(redis_server: Any, group: str | None,
                                          capsys: pytest.CaptureFixture) -> None:
    """Redis restarted (without persistence: the streams and the group are gone) while a listener
    runs: it says so once, waits, creates its group again and prints what comes after. It used to
    exit 1 ("lost Redis"), and a GroupReader raised NOGROUP for ever after."""
    _publish(redis_server.url, [_result("cam0", 0)])
    argv = ["listen", "--redis", redis_server.url, "--camera", "cam0", "--count", "2", "--idle-timeout", "20"]
    argv += ["--group", group, "--consumer", "w1"] if group else ["--from-start"]
    rc: list[int] = []
    listener = threading.Thread(target=lambda: rc.append(main(argv)))
    listener.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        wait_for(lambda: any(g["pending"] == 0 and g["last-delivered-id"] != b"0-0"
                             for g in client.xinfo_groups("segpipe:cam0")) if group
                 else "seq=0" in capsys.readouterr().out, 10, "the first event")
        redis_server.stop()
        time.sleep(1.5)  # the listener finds it gone
        redis_server.start()
        _publish(redis_server.url, [_result("cam0", 1)])
        listener.join(20)
    finally:
        client.close()
    assert rc == [0]
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "cam0 seq=1 n=1 person"
    assert "lost Redis at" in err and "reconnecting" in err and "is back after" in err


@pytest.mark.parametrize("prefix, expected", [
    ("segpipe:", ["segpipe:a", "segpipe:b"]),
    ("cams[1]:", ["cams[1]:a"]),  # was a glob: cams1:b too
    ("c*x:", ["c*x:a"]),
    ("a?:", ["a?:a"]),
])
def test_stream_keys_take_the_prefix_literally(redis_server: Any, prefix: str, expected: list[str]) -> None:
    client = redis.Redis.from_url(redis_server.url)
    for key in ("segpipe:a", "segpipe:b", "cams[1]:a", "cams1:b", "c*x:a", "cx:a", "a?:a", "ab:a"):
        client.xadd(key, {"event": b"x"})
    client.set("segpipe:not-a-stream", b"x")
    assert stream_keys(client, prefix) == expected
    client.close()


def test_group_reader_recreates_a_lost_group(redis_server: Any) -> None:
    client = redis.Redis.from_url(redis_server.url)
    reader = GroupReader(client, ["segpipe:cam0"], group="g", consumer="w1")
    client.delete("segpipe:cam0")  # what a Redis restart without persistence leaves
    client.xadd("segpipe:cam0", {"event": b"after"})
    assert [m.data for m in reader.read(block_ms=100)] == [b"after"]
    client.close()


@contextlib.contextmanager
def _zmq_publishing(items: Callable[[int], list[FrameResult | CameraStatus]], *,
                    rounds: int | None = None) -> Iterator[ZmqSink]:
    """A ZMQ sink publishing ``items(i)`` every 5 ms, round ``i`` after round, until the block ends (or
    ``rounds`` are out): a subscriber joins whenever it joins."""
    sink = ZmqSink(name="z", endpoint="tcp://127.0.0.1:*")
    stop = threading.Event()

    def publish() -> None:
        i = 0
        while not stop.is_set() and (rounds is None or i < rounds):
            for item in items(i):
                sink.publish(_env(item))
            i += 1
            time.sleep(0.005)

    t = threading.Thread(target=publish)
    t.start()
    try:
        yield sink
    finally:
        stop.set()
        t.join()
        sink.close()


def test_listen_zmq_filters_the_exact_camera(capsys: pytest.CaptureFixture) -> None:
    with _zmq_publishing(lambda i: [_result(cam, i) for cam in ("cam1", "cam10")]) as sink:
        assert main(["listen", "--zmq", sink.bound_endpoint, "--camera", "cam1", "--count", "3",
                     "--idle-timeout", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith("cam1 seq=") for line in lines)


@pytest.mark.parametrize("timestamp, signature", [
    ("\u00b2", "sha256=00"),        # a digit to str.isdigit(), not to int()
    ("1700000000", "sha256=\u00e9"),  # hmac.compare_digest refuses non-ASCII str
])
def test_listen_webhook_answers_forged_headers_401(timestamp: str, signature: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    """A forged request gets 401 and the listener carries on: the check used to raise in the handler
    thread (a traceback on stderr, the connection dropped without an answer)."""
    port, statuses = server_port(), []

    def send() -> None:
        wait_for(lambda: accepts(port), 10, "the listener")
        body = encode(status_event(CameraStatus(camera_id="gate", state=CameraState.LIVE, ts=1.0)))
        ts = str(int(time.time()))
        for headers in ({"X-Segpipe-Timestamp": timestamp, "X-Segpipe-Signature": signature},
                        {"X-Segpipe-Timestamp": ts, "X-Segpipe-Signature": webhook_signature("s3cret", ts, body)}):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/", body=body, headers=headers)
            statuses.append(conn.getresponse().status)
            conn.close()

    assert listen_beside(send, ["--webhook", str(port), "--secret", "s3cret", "--count", "1",
                                "--idle-timeout", "10"]) == 0
    out, err = capsys.readouterr()
    assert statuses == [401, 204] and out.splitlines() == ["gate status=live"]
    assert "Traceback" not in err and "does not verify with --secret" in err


@pytest.mark.parametrize("prefix, camera", [("site1", None), ("site1", "cam1"), ("plant/site1-", None)])
def test_listen_mqtt_follows_a_prefix_that_does_not_end_a_level(mqtt_broker: Any, prefix: str, camera: str | None,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """A sink with ``topic_prefix: site1`` publishes ``site1cam1/status``: ``--prefix site1`` used to
    subscribe to ``site1+/status``, a filter paho refuses (a traceback, then "no answer" after 10 s).
    A sink with another prefix on the same broker is not listened to."""
    # two names: one client id would have the broker knock one sink off each time the other connects
    sinks = [MqttSink(name=f"m{i}", url=mqtt_broker.url, policy=policy_for("mqtt"), topic_prefix=p)
             for i, p in enumerate((prefix, "other"))]
    try:
        for sink in sinks:
            wait_for(sink.connected.is_set, 10, "the sink to connect")
            cam = "cam1" if sink is sinks[0] else "cam2"
            sink.publish(_env(CameraStatus(camera_id=cam, state=CameraState.LIVE, ts=1.0)))  # retained
            assert sink.flush(10)
        argv = ["listen", "--mqtt", mqtt_broker.url, "--prefix", prefix, "--idle-timeout", "3"]
        assert main(argv + (["--camera", camera] if camera else [])) == 1
    finally:
        for sink in sinks:
            sink.close()
    out, err = capsys.readouterr()
    assert out.splitlines() == ["cam1 status=live"] and "Traceback" not in err


@pytest.mark.parametrize("request_head, body, status, said", [
    (b"Content-Length: abc", b"", 411, "no valid Content-Length ('abc')"),
    (b"Content-Length: -5", b"", 411, "no valid Content-Length ('-5')"),
    (b"Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n", 411, "no valid Content-Length ('')"),
    (b"Content-Length: 5", b"hello", 400, "event is not JSON"),
    (b"Content-Length: 2", b"{}", 400, "event has no kind 'frame' or 'status'"),
])
def test_listen_webhook_answers_bad_requests(request_head: bytes, body: bytes, status: int, said: str,
                                             capsys: pytest.CaptureFixture) -> None:
    """Requests no webhook sink sends get a 4xx and a line on stderr, and the listener carries on. A
    broken Content-Length raised in the handler (a traceback, no answer); a chunked body was read as
    the next request; a body that is no event was answered 204, "delivered"."""
    import socket

    port, answers = server_port(), []
    event = encode(status_event(CameraStatus(camera_id="gate", state=CameraState.LIVE, ts=1.0)))

    def send() -> None:
        wait_for(lambda: accepts(port), 10, "the listener")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n" + request_head + b"\r\n\r\n" + body)
            answers.append(sock.recv(100).split(b" ")[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/", body=event)
        answers.append(str(conn.getresponse().status).encode())
        conn.close()

    assert listen_beside(send, ["--webhook", str(port), "--count", "1", "--idle-timeout", "10"]) == 0
    out, err = capsys.readouterr()
    assert answers == [str(status).encode(), b"204"] and out.splitlines() == ["gate status=live"]
    assert f"({status}): {said}" in err and "Traceback" not in err


def _docs_consumer(index: int, url: str, loops: int) -> str:
    """docs/events.md's Python consumer ``index`` (in "Reading events"), pointed at ``url``, its endless
    loop cut to ``loops`` rounds: everything else as written."""
    from tests.conftest import REPO

    text = (REPO / "docs" / "events.md").read_text()
    section = text[text.index("## Reading events"):text.index("## Cost")]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[index]
    code = re.sub(r"(tcp|redis)://127\.0\.0\.1:\d+(/0)?", url, code)
    assert "while True:" in code
    return code.replace("while True:", f"for _ in range({loops}):")


def test_docs_zmq_consumer_runs_as_written(capsys: pytest.CaptureFixture) -> None:
    def items(i: int) -> list[FrameResult | CameraStatus]:
        live = CameraStatus(camera_id="gate-north", state=CameraState.LIVE, ts=1.0)
        return [live, *(_result(cam, i) for cam in ("gate-north", "gate-north-2"))]

    with _zmq_publishing(items, rounds=2000) as sink:  # until the consumer has its rounds
        exec(_docs_consumer(0, sink.bound_endpoint, 12), {})  # noqa: S102 - the documentation's own code
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line == "gate-north live " or re.fullmatch(r"\d+ person None 9", line) for line in lines)
    assert "gate-north live " in lines


def test_docs_redis_group_consumer_runs_as_written(redis_server: Any, capsys: pytest.CaptureFixture) -> None:
    import dataclasses

    from pipeline.messages import Crossing, FrameAnalytics

    crossing = Crossing(line="stop", direction="in", track_id=4, class_id=0, label="person")
    crossed = dataclasses.replace(_result("gate-north", 1), analytics=FrameAnalytics(crossings=(crossing,)))
    _publish(redis_server.url, [CameraStatus(camera_id="gate-north", state=CameraState.LIVE, ts=1.0),
                                _result("gate-north", 0), crossed, _result("dock", 0)])
    exec(_docs_consumer(1, redis_server.url, 3), {})  # noqa: S102
    assert capsys.readouterr().out.splitlines() == ["gate-north stop in person 4"]
    client = redis.Redis.from_url(redis_server.url)
    assert [g["pending"] for key in ("segpipe:dock", "segpipe:gate-north")
            for g in client.xinfo_groups(key)] == [0, 0]  # every event acknowledged
    client.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])  # an IPv6 literal was "Address family not supported"
def test_listen_webhook_on_a_host(host: str, capsys: pytest.CaptureFixture) -> None:
    port = server_port()
    event = encode(status_event(CameraStatus(camera_id="gate", state=CameraState.LIVE, ts=1.0)))

    def send() -> None:
        def up() -> bool:
            try:
                conn = http.client.HTTPConnection(host.strip("[]"), port, timeout=5)
                conn.request("POST", "/hook", body=event)
                return conn.getresponse().status == 204
            except OSError:
                return False

        wait_for(up, 10, "the listener")

    assert listen_beside(send, ["--webhook", f"{host}:{port}", "--count", "1", "--idle-timeout", "10"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["gate status=live"] and f"taking webhooks on http://{host}:{port}/" in err


@pytest.mark.parametrize("payload, said", [
    (b"not json", "event is not JSON"),
    (b'{"version":1,"kind":"frame","camera":"c","seq":1}', "no field 'detections'"),  # was just "'detections'"
    (b'{"version":1,"kind":"status","camera":"c"}', "no field 'state'"),
    (b'{"version":1,"kind":"frame","camera":"c","seq":1,"frame":{"width":4,"height":4},"detections":'
     b'[{"label":"a","box":[0,0,2,2],"mask":{"format":"polygon","polygons":[[0,0,1]]}}]}', "polygons: expected"),
])
def test_listen_skips_a_malformed_event_in_one_line(redis_server: Any, payload: bytes, said: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.xadd("segpipe:c", {"event": payload})
    client.xadd("segpipe:c", {"event": encode(status_event(CameraStatus(camera_id="c", state=CameraState.LIVE,
                                                                         ts=1.0)))})
    client.close()
    assert main(["listen", "--redis", redis_server.url, "--from-start", "--masks", "--count", "2",
                 "--idle-timeout", "10"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["c status=live"]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"segpipe listen: skipping a malformed event: {said}"), err


@pytest.mark.parametrize("extra", [[], ["--group", "g", "--consumer", "c"]])  # the group: a traceback
def test_listen_camera_key_that_is_not_a_stream(redis_server: Any, extra: list[str],
                                                capsys: pytest.CaptureFixture) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("segpipe:cam0", b"x")
    client.close()
    assert main(["listen", "--redis", redis_server.url, "--camera", "cam0", "--idle-timeout", "2", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["segpipe listen: error: --camera: Redis key 'segpipe:cam0' is a string, not a segpipe event stream"]


def test_listen_mqtt_says_when_the_broker_goes_and_comes_back(mqtt_broker: Any,
                                                              capsys: pytest.CaptureFixture) -> None:
    """A broker restart: the listener resubscribes (it did) and now also says so, as --redis does."""
    import paho.mqtt.client as mqtt

    payload = encode(status_event(CameraStatus(camera_id="cam9", state=CameraState.LIVE, ts=1.0)))

    def publish(retain: bool) -> mqtt.Client:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", mqtt_broker.port)
        pub.loop_start()
        pub.publish("segpipe/cam9/status", payload, qos=1, retain=retain).wait_for_publish(5)
        return pub

    first = publish(retain=True)  # the listener's first event, once it has subscribed
    first.loop_stop()
    first.disconnect()
    rc: list[int] = []
    listener = threading.Thread(target=lambda: rc.append(main(
        ["listen", "--mqtt", mqtt_broker.url, "--camera", "cam9", "--count", "2", "--idle-timeout", "20"])))
    listener.start()
    seen: list[str] = []
    wait_for(lambda: bool(seen.extend(capsys.readouterr().out.splitlines()) or seen), 10, "the retained status")
    mqtt_broker.stop()
    time.sleep(0.5)
    mqtt_broker.start()
    pub = publish(retain=False)
    try:
        deadline = time.monotonic() + 20
        while listener.is_alive() and time.monotonic() < deadline:  # until the listener is back and has it
            pub.publish("segpipe/cam9/status", payload, qos=1).wait_for_publish(5)
            listener.join(0.5)
    finally:
        pub.loop_stop()
        pub.disconnect()
    assert rc == [0]
    out, err = capsys.readouterr()
    assert seen + out.splitlines() == ["cam9 status=live"] * 2
    assert "lost the MQTT broker at" in err and "reconnecting" in err and "is back after" in err
