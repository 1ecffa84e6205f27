"""The disk spool (pipeline/sinks/spool.py) and the Redis sink that spools while Redis is away."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.sinks.base import policy_for
from pipeline.sinks.spool import Spool
from tests.pipeline.test_sink_redis import _env, _seqs, _sink, _wait, free_port


def _recs(camera: str, n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [(camera, f'{{"seq":{i}}}'.encode()) for i in range(start, start + n)]


def test_spool_is_a_fifo_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2**20, segment_bytes=200)
    spool.append(_recs("a", 30))
    spool.append(_recs("b", 5))
    assert len(spool) == 35 and len(list(tmp_path.glob("*.spool"))) == 3
    got = []
    while len(spool):
        chunk = spool.peek(7)
        got += chunk
        spool.take(len(chunk))
        if len(got) == 14:
            spool.append(_recs("c", 2))  # appends while draining go behind
    assert got == _recs("a", 30) + _recs("b", 5) + _recs("c", 2)
    assert not list(tmp_path.glob("*.spool")) and spool.nbytes == 0


def test_spool_survives_a_restart_and_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2**20)
    spool.append(_recs("cam", 10))
    spool.close()
    (path,) = tmp_path.glob("*.spool")
    with path.open("ab") as f:
        f.write(b"\x00\x00\x00\x40partial")  # a record cut short by a crash
    again = Spool(tmp_path, max_bytes=2**20)
    assert len(again) == 10 and again.peek(100) == _recs("cam", 10)
    again.append(_recs("cam", 2, start=10))  # new events go to a new segment, after the old ones
    again.take(10)
    assert again.peek(100) == _recs("cam", 2, start=10)


def test_segments_are_a_sixteenth_of_a_small_bound(tmp_path: Path) -> None:
    assert Spool(tmp_path / "a", max_bytes=5 * 2**20).segment_bytes == 5 * 2**20 // 16
    assert Spool(tmp_path / "b", max_bytes=2**30).segment_bytes == 8 * 2**20


def test_spool_drops_the_oldest_past_its_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=400, segment_bytes=150)  # 40 records of 18-19 bytes: 740
    lost = spool.append(_recs("old", 20) + _recs("new", 20))
    assert spool.nbytes <= 400 and sum(lost.values()) + len(spool) == 40
    assert lost["old"] > 0 and "new" not in lost
    left = []
    while len(spool):
        left += spool.peek(1000)
        spool.take(len(spool.peek(1000)))
    assert left == (_recs("old", 20) + _recs("new", 20))[-len(left):]  # the newest kept, in order


def test_redis_outage_with_a_spool_loses_nothing(redis_server: Any, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Redis down for longer than the memory buffer holds: with a spool every event arrives, in order."""
    caplog.set_level(logging.INFO, logger="pipeline.sinks.redis")
    sink = _sink(redis_server.url, policy=policy_for("redis", maxsize=100), spool_dir=tmp_path / "spool")
    for i in range(10):
        sink.publish(_env("cam", i))
    assert sink.flush(5.0)
    redis_server.stop()
    t0 = time.perf_counter()
    for i in range(10, 510):  # 5x what the memory buffer holds
        sink.publish(_env("cam", i))
        if i % 50 == 0:
            time.sleep(0.05)
    assert time.perf_counter() - t0 < 5.0  # publishing never waits on the network
    _wait(lambda: sink.spool is not None and len(sink.spool) >= 400)
    assert sink.backlog() >= 400  # what a segpipe_sink_backlog{sink} gauge shows
    redis_server.start()
    for i in range(510, 520):  # events that come while the spool is being sent go behind it
        sink.publish(_env("cam", i))
    _wait(lambda: sink.spool is not None and not len(sink.spool) and sink.flush(0.1), timeout=20)
    assert sink.backlog() == 0
    sink.close(timeout=5.0)
    client = redis.Redis.from_url(redis_server.url)
    assert _seqs(client, "segpipe:cam") == list(range(10, 520))  # the server restarted empty
    assert not sink.counters.totals_dropped and sink.counters.totals_sent["cam"] == 520
    assert "spooling events to" in caplog.text and "spool sent" in caplog.text


def test_a_restart_during_an_outage_keeps_the_spooled_events(redis_server: Any, tmp_path: Path) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: the first run never reaches Redis
    first = _sink(down, spool_dir=tmp_path / "spool")
    for i in range(100):
        first.publish(_env("cam", i))
    first.close(timeout=10.0)  # what was in memory goes to the spool, not away
    assert not first.counters.totals_dropped and len(list((tmp_path / "spool").glob("*.spool"))) >= 1
    second = _sink(redis_server.url, spool_dir=tmp_path / "spool")
    for i in range(100, 110):
        second.publish(_env("cam", i))
    _wait(lambda: second.counters.totals_sent.get("cam", 0) == 210 - 100, timeout=20)
    second.close(timeout=5.0)
    assert _seqs(redis.Redis.from_url(redis_server.url), "segpipe:cam") == list(range(110))
