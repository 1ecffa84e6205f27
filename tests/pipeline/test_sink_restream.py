"""Restream sink against a real RTSP server process (tests/pipeline/media.py's relay: it takes one
publisher and serves players): a player pulls the annotated stream, a server that is down at start or
dies mid-stream is reconnected to, config errors never echo a password."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.sinks.base import policy_for
from pipeline.sinks.config import RestreamSinkConfig
from pipeline.sinks.restream import RestreamSink
from tests.conftest import server_port
from tests.helpers import wait_for
from tests.pipeline.media import start_relay, write_clip
from tests.pipeline.test_sink_video import BOX, H, W, _env, _result
from tests.pipeline.test_supervisor import config

FPS = 15


class Player:
    """Pulls ``url`` over RTSP/TCP on a thread (PyAV), keeping each decoded frame (BGR), until closed."""

    def __init__(self, url: str) -> None:
        self.url, self.frames = url, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with av.open(self.url, options={"rtsp_transport": "tcp", "timeout": "2000000"}) as inp:
                    for frame in inp.decode(video=0):
                        self.frames.append(frame.to_ndarray(format="bgr24"))
                        if self._stop.is_set():
                            return
            except (av.FFmpegError, OSError):
                time.sleep(0.2)  # no publisher yet, or the server went away: ask again

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Camera:
    """Publishes one camera's results through ``sink`` at ``FPS`` frames a second of stream time."""

    def __init__(self, sink: RestreamSink, camera: str = "gate") -> None:
        self.sink, self.camera, self.seq = sink, camera, 0

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds * FPS)):
            res = dataclasses.replace(_result(self.camera, self.seq, fps=FPS), capture_ts=time.time())
            self.sink.publish(_env(res, np.full((H, W, 3), 128, np.uint8)))
            self.seq += 1
            time.sleep(1 / FPS)


@pytest.fixture
def relay_port() -> Iterator[int]:
    yield server_port()


def _sink(port: int) -> RestreamSink:
    return RestreamSink(name="live", url=f"rtsp://127.0.0.1:{port}/{{camera}}", policy=policy_for("restream"),
                        fps=FPS, keyframe_s=0.5, backoff_max_s=1.0)


def test_a_player_pulls_the_annotated_stream(relay_port: int, ffmpeg: str) -> None:
    relay = start_relay(relay_port)
    sink = _sink(relay_port)
    player = Player(f"rtsp://127.0.0.1:{relay_port}/gate")
    try:
        Camera(sink).run(3.0)
        wait_for(lambda: len(player.frames) >= 10, 10, "frames at the player")
    finally:
        player.close()
        sink.close()
        relay.kill()
        relay.wait()
    picture = player.frames[-1].astype(int)
    assert picture.shape == (H, W, 3)
    x1, y1, x2, y2 = (int(v) for v in BOX)
    inside, outside = picture[y1 + 6:y2 - 6, x1 + 6:x2 - 6].mean((0, 1)), picture[2:10, 70:90].mean((0, 1))
    assert np.abs(outside - 128).max() < 10 and np.abs(inside - 128).max() > 30  # the mask is drawn in
    assert sink.counters.totals_sent["gate"] == 3 * FPS and not sink.counters.totals_errors


def test_a_camera_a_reload_removes_stops_streaming(relay_port: int, ffmpeg: str) -> None:
    """Its stream stayed published, a frozen picture to its viewers, until segpipe stopped."""
    from pipeline.sinks.base import Retaining

    relay = start_relay(relay_port)
    sink = _sink(relay_port)
    assert isinstance(sink, Retaining)
    player = Player(f"rtsp://127.0.0.1:{relay_port}/gate")
    try:
        Camera(sink).run(1.0)
        wait_for(lambda: len(player.frames) >= 3, 10, "frames at the player")
        sink.cameras_removed(["gate"])
        assert sink.flush(10)
        assert "gate" not in sink._live  # its session torn down
        Camera(sink).run(1.0)  # put back by a later reload: a new stream, from its own first frame
        wait_for(lambda: "gate" in sink._live and sink._live["gate"].container is not None, 10, "a new stream")
    finally:
        player.close()
        sink.close()
        relay.kill()
        relay.wait()
    assert sink.counters.totals_sent["gate"] == 2 * FPS and not sink.counters.totals_errors


def test_a_server_down_at_start_or_gone_mid_stream_is_reconnected(relay_port: int, ffmpeg: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.sinks.restream")
    sink = _sink(relay_port)
    camera = Camera(sink)
    relay: subprocess.Popen[bytes] | None = None
    player = None
    try:
        camera.run(1.0)  # no server: refused, dropped, counted
        assert sink.flush(5)
        assert sink.counters.totals_errors["connection"] >= 1
        assert sink.counters.totals_dropped["gate", "disconnected"] >= FPS - 2
        relay = start_relay(relay_port)
        player = Player(f"rtsp://127.0.0.1:{relay_port}/gate")
        camera.run(3.0)  # within the 1 s back-off the stream is up again
        wait_for(lambda: len(player.frames) >= 5, 10, "frames after the server came up")
        relay.kill()
        relay.wait()
        player.close()
        camera.run(1.0)  # the server died: the stream breaks, frames are dropped
        relay = start_relay(relay_port)
        player = Player(f"rtsp://127.0.0.1:{relay_port}/gate")
        camera.run(3.0)
        wait_for(lambda: len(player.frames) >= 5, 10, "frames after the server came back")
    finally:
        if player is not None:
            player.close()
        sink.close()
        if relay is not None:
            relay.kill()
            relay.wait()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("refused or went away" in line for line in lines) == 2  # once per outage, not per frame
    assert sum("streaming to rtsp://127.0.0.1" in line for line in lines) == 2


def test_a_run_restreams_a_camera(tmp_path: Path, relay_port: int, ffmpeg: str) -> None:
    from pipeline.supervisor import Supervisor

    relay = start_relay(relay_port)
    player = Player(f"rtsp://127.0.0.1:{relay_port}/cam")
    clip = write_clip(tmp_path / "cam.mp4", frames=45, fps=15, size=(160, 120))
    cfg = config(tmp_path, [{"id": "cam", "url": str(clip), "realtime": True}],
                 sinks=[{"type": "restream", "url": f"rtsp://127.0.0.1:{relay_port}/{{camera}}", "max_width": 96}])
    try:
        assert Supervisor(cfg=cfg).run() == 0
        wait_for(lambda: len(player.frames) >= 5, 10, "frames at the player")
    finally:
        player.close()
        relay.kill()
        relay.wait()
    assert player.frames[0].shape == (72, 96, 3)  # the frames forwarded and encoded at max_width


@pytest.mark.parametrize("raw, error", [
    ({"url": "http://x/{camera}"}, "expected rtsp://HOST[:PORT]/PATH or rtmp://HOST/APP/KEY"),
    ({"url": "rtsp://u:hunter2@x/live"}, "url: put {camera} in it"),
    ({"url": "rtsp://u:hunter2@x:99999/{camera}"}, "not a valid URL"),
    ({"url": "rtmp://x/live/{camera}", "queue_size": 1000}, "at most 256 frames"),
])
def test_config_errors_never_echo_a_password(raw: dict, error: str) -> None:
    with pytest.raises(ValidationError) as info:
        RestreamSinkConfig(type="restream", **raw)
    text = " ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in info.value.errors())
    assert error in text and "hunter2" not in text


def test_config_takes_one_camera_without_a_template() -> None:
    cfg = RestreamSinkConfig(type="restream", url="rtsp://ops:hunter2@mtx:8554/gate", cameras=["gate"])
    assert "hunter2" not in repr(cfg) and cfg.redacted_url() == "rtsp://***@mtx:8554/gate"
    assert not cfg.statuses


def test_rtmp_to_a_listening_server(tmp_path: Path, relay_port: int, ffmpeg: str) -> None:
    """RTMP (FLV): a real ffmpeg listening as the server records what the sink pushes."""
    out = tmp_path / "got.flv"
    server = subprocess.Popen([ffmpeg, "-hide_banner", "-loglevel", "quiet", "-y", "-listen", "1", "-i",
                               f"rtmp://127.0.0.1:{relay_port}/live/gate", "-c", "copy", str(out)])
    sink = RestreamSink(name="live", url=f"rtmp://127.0.0.1:{relay_port}/live/{{camera}}",
                        policy=policy_for("restream"), fps=FPS, keyframe_s=0.5, backoff_max_s=1.0)
    try:
        Camera(sink).run(3.0)  # refused until ffmpeg listens (its start takes about a second): retried
    finally:
        sink.close()
        server.wait(20)
    with av.open(str(out)) as got:
        frames = [f.to_ndarray(format="bgr24") for f in got.decode(video=0)]
    assert len(frames) >= FPS and frames[0].shape == (H, W, 3)
    assert sink.counters.totals_sent["gate"] == len(frames)  # every frame sent was recorded
