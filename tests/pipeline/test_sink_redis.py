"""Redis Streams sink against a real redis-server: streams, trimming, pub/sub, outages, AUTH, TLS."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from engines.urls import redact_url
from pipeline.events import encode, to_event
from pipeline.messages import FrameResult
from pipeline.sinks.base import Envelope, policy_for
from pipeline.sinks.config import RedisSinkConfig
from pipeline.sinks.redis import RedisSink
from tests.helpers import accepts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(camera: str, seq: int) -> Envelope:
    res = FrameResult(camera_id=camera, seq=seq, pts=None, capture_ts=time.time(), infer_ts=time.time(),
                      frame_size=(64, 48), model="m")
    return Envelope(camera_id=camera, kind="frame", payload=encode(to_event(res)), item=res)


def _sink(url: str, **kw: object) -> RedisSink:
    kw.setdefault("policy", policy_for("redis"))
    return RedisSink(name="redis", url=url, backoff_initial_s=0.02, backoff_max_s=0.2, connect_timeout_s=0.5,
                     socket_timeout_s=0.5, **kw)


def _seqs(client: redis.Redis, key: str) -> list[int]:
    return [json.loads(fields[b"event"])["seq"] for _, fields in client.xrange(key)]


def _wait(cond, timeout: float = 10.0) -> None:  # noqa: ANN001 - test helper
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_events_go_to_one_stream_per_camera(redis_server: Any) -> None:
    sink = _sink(redis_server.url)
    for i in range(30):
        sink.publish(_env(f"cam{i % 3}", i))
    assert sink.flush(5.0)
    sink.close()
    client = redis.Redis.from_url(redis_server.url)
    assert _seqs(client, "segpipe:cam1") == list(range(1, 30, 3))
    assert sorted(k.decode() for k in client.keys("segpipe:*")) == ["segpipe:cam0", "segpipe:cam1", "segpipe:cam2"]
    assert sink.counters.totals_sent == {"cam0": 10, "cam1": 10, "cam2": 10}


def test_maxlen_trims_approximately(redis_server: Any) -> None:
    sink = _sink(redis_server.url, maxlen=100, batch_size=50)
    for i in range(1500):
        sink.publish(_env("cam", i))
    sink.close()
    client = redis.Redis.from_url(redis_server.url)
    n = client.xlen("segpipe:cam")
    assert 100 <= n < 400  # "~" trims whole radix-tree nodes: never below MAXLEN, never far above
    assert _seqs(client, "segpipe:cam")[-1] == 1499


def test_pubsub_channel(redis_server: Any) -> None:
    client = redis.Redis.from_url(redis_server.url)
    ps = client.pubsub()
    ps.subscribe("live:cam")
    assert ps.get_message(timeout=2)["type"] == "subscribe"
    sink = _sink(redis_server.url, channel_prefix="live:")
    for i in range(3):
        sink.publish(_env("cam", i))
    sink.close()
    got = [ps.get_message(timeout=2) for _ in range(3)]
    assert [json.loads(m["data"])["seq"] for m in got] == [0, 1, 2]
    ps.close()


def test_close_flushes_everything_queued(redis_server: Any) -> None:
    sink = _sink(redis_server.url, batch_size=64)
    for i in range(1000):
        sink.publish(_env("cam", i))
    sink.close(timeout=10.0)
    assert redis.Redis.from_url(redis_server.url).xlen("segpipe:cam") == 1000


def test_redis_restart_mid_run(redis_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Stop Redis while publishing: nothing raises, publish stays instant, the bounded buffer keeps
    the newest events (the rest dropped and counted) and sends them once Redis is back."""
    caplog.set_level(logging.INFO, logger="pipeline.sinks.redis")
    sink = _sink(redis_server.url, policy=policy_for("redis", maxsize=20))
    for i in range(10):
        sink.publish(_env("cam", i))
    assert sink.flush(5.0)
    redis_server.stop()
    t0 = time.perf_counter()
    for i in range(10, 60):
        sink.publish(_env("cam", i))
        time.sleep(0.002)
    assert time.perf_counter() - t0 < 2.0  # 50 publishes while Redis is down never wait on the network
    _wait(lambda: sink.counters.totals_errors["connection"] >= 2)
    redis_server.start()  # same port, empty (no persistence)
    assert sink.flush(10.0)
    for i in range(60, 70):
        sink.publish(_env("cam", i))
    sink.close(timeout=5.0)
    client = redis.Redis.from_url(redis_server.url)
    dropped = sink.counters.totals_dropped["cam", "buffer_full"]
    assert _seqs(client, "segpipe:cam") == list(range(10 + dropped, 70))
    assert dropped >= 30  # 50 published while down, at most 20 (+1 batch in flight) kept
    assert "unreachable" in caplog.text and "reachable again" in caplog.text


def test_never_blocks_without_redis() -> None:
    port = free_port()  # nothing listens here
    sink = _sink(f"redis://127.0.0.1:{port}/0", policy=policy_for("redis", maxsize=100))
    t0 = time.perf_counter()
    for i in range(5000):
        sink.publish(_env("cam", i))
    assert time.perf_counter() - t0 < 2.0
    sink.close(timeout=0.3)
    dropped = sum(sink.counters.totals_dropped.values())
    assert dropped == 5000 and sink.counters.totals_dropped["cam", "buffer_full"] >= 4900
    assert sink.counters.totals_errors["connection"] >= 1


def test_auth_password_is_used_and_never_logged(redis_server: Any, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # a second server from the fixture's class (conftest's RedisServer), this one with a password
    server = type(redis_server)(tmp_path, password="s3cret-Pw")
    server.start()
    try:
        caplog.set_level(logging.DEBUG)
        ok = _sink(server.url)
        ok.publish(_env("cam", 1))
        ok.close()
        assert ok.counters.totals_sent["cam"] == 1
        bad = _sink(server.url.replace("s3cret-Pw", "wrong-Pw"))
        bad.publish(_env("cam", 2))
        _wait(lambda: bad.counters.totals_errors["auth"] >= 1)
        bad.close(timeout=0.2)
        assert bad.counters.totals_dropped["cam", "shutdown"] == 1
        assert "s3cret-Pw" not in caplog.text and "wrong-Pw" not in caplog.text
        assert f"redis://***@127.0.0.1:{server.port}/0" in caplog.text
        cfg = RedisSinkConfig(type="redis", url=server.url)
        assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg)
    finally:
        server.stop()


@pytest.mark.parametrize("url, redacted", [
    ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
    ("rediss://user:pw@redis.example:6380/1?ssl_cert_reqs=none", "rediss://***@redis.example:6380/1?ssl_cert_reqs=none"),
    ("redis://host:6379/0", "redis://host:6379/0"),
    ("redis://:p%40ss@[::1]:6379", "redis://***@[::1]:6379"),
    ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ("redis://:pw@h:99999/0", "redis://***@h:99999/0"),  # a port out of range raised, in the error line about it
])
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize("raw, error", [
    ({"url": "http://:secretpw@host"}, "got scheme 'http'"),
    ({"url": "redis://h", "maxlen": 0}, "greater than or equal to 1"),
    ({"url": "redis://h", "max_len": 10}, "Extra inputs are not permitted"),
    ({"url": "redis://h", "on_full": "block"}, "'drop_oldest' or 'drop_newest'"),
])
def test_config_errors_do_not_echo_passwords(raw: dict, error: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error) as info:
        RedisSinkConfig(type="redis", **raw)
    assert all("secretpw" not in str(e["msg"]) for e in info.value.errors())


def _tls_server(tmp_path: Path, tls_cert: tuple[Path, Path]) -> tuple[subprocess.Popen, int, Path]:
    key, crt = tls_cert
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port),
                             "--bind", "127.0.0.1", "--tls-cert-file", str(crt), "--tls-key-file", str(key),
                             "--tls-ca-cert-file", str(crt), "--tls-auth-clients", "no", "--save", "",
                             "--requirepass", "tls-pw", "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.skip(f"redis-server without TLS support: {out.strip().splitlines()[-1:]}")
        if accepts(port):
            return proc, port, crt
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("TLS redis-server did not start")


def test_tls_via_rediss_url(tmp_path: Path, tls_cert: tuple[Path, Path]) -> None:
    proc, port, crt = _tls_server(tmp_path, tls_cert)
    try:
        url = f"rediss://:tls-pw@127.0.0.1:{port}/0?ssl_ca_certs={crt}&ssl_cert_reqs=required"
        sink = _sink(url)
        sink.publish(_env("cam", 5))
        sink.close()
        assert sink.counters.totals_sent["cam"] == 1
        client = redis.Redis.from_url(url)
        assert _seqs(client, "segpipe:cam") == [5]
        client.close()
    finally:
        proc.terminate()
        proc.wait(5)
