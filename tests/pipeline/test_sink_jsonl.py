"""JSON Lines sink on real files: content, rotation by size, keep-N, flush on close, bad paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.errors import SinkError
from pipeline.events import encode, to_event
from pipeline.messages import FrameResult
from pipeline.sinks.base import Envelope, policy_for
from pipeline.sinks.config import JsonlSinkConfig
from pipeline.sinks.jsonl import JsonlSink, rotated_path


def _env(camera: str, seq: int) -> Envelope:
    # fixed times: every line has the same length, so the rotation arithmetic below is exact
    res = FrameResult(camera_id=camera, seq=seq, pts=None, capture_ts=1000.5, infer_ts=1000.5,
                      frame_size=(64, 48), model="m")
    return Envelope(camera_id=camera, kind="frame", payload=encode(to_event(res, publish_ts=1000.75)), item=res)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_event_per_line_flushed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "out" / "events.jsonl"  # the folder is created
    sink = JsonlSink.from_config(JsonlSinkConfig(type="jsonl", path=path))
    envs = [_env("cam", i) for i in range(25)]
    for env in envs:
        sink.publish(env)
    sink.close()
    assert path.read_bytes() == b"".join(e.payload + b"\n" for e in envs)
    assert sink.counters.totals_sent["cam"] == 25


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    for start in (0, 5):
        sink = JsonlSink(name="j", path=path, policy=policy_for("jsonl"))
        for i in range(start, start + 5):
            sink.publish(_env("cam", i))
        sink.close()
    assert [e["seq"] for e in _lines(path)] == list(range(10))


@pytest.mark.parametrize("keep", [0, 1, 3])
def test_rotation_by_size_keeps_n_files(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "events.jsonl"
    line_len = len(_env("cam", 100).payload) + 1
    max_bytes = line_len * 10 + 5  # ten lines fit
    sink = JsonlSink(name="j", path=path, policy=policy_for("jsonl"), max_bytes=max_bytes, keep=keep)
    for i in range(100, 155):  # 55 lines: 5 full files and a live one with 5 lines
        sink.publish(_env("cam", i))
    sink.close()
    files = sorted(tmp_path.iterdir())
    assert files == sorted(rotated_path(path, i) for i in range(keep + 1))
    for f in files:
        assert f.stat().st_size <= max_bytes
    seqs = [e["seq"] for i in range(keep, -1, -1) for e in _lines(rotated_path(path, i))]
    # oldest file has the highest suffix; together they are the newest events, in order, no line split
    assert seqs == list(range(155 - len(seqs), 155)) and len(seqs) == 5 + 10 * keep


def test_a_line_longer_than_max_bytes_gets_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(name="j", path=path, policy=policy_for("jsonl"), max_bytes=10, keep=5)
    for i in range(3):
        sink.publish(_env("cam", i))
    sink.close()
    assert [len(_lines(rotated_path(path, i))) for i in range(3)] == [1, 1, 1]


def test_unwritable_path_is_a_sink_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError, match=r"jsonl sink 'j': cannot open .*file/events.jsonl"):
        JsonlSink(name="j", path=blocker / "events.jsonl", policy=policy_for("jsonl"))
