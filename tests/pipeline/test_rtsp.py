"""A real RTSP camera (ffmpeg publisher + RTSP relay, TCP-interleaved RTP) that stalls, dies and comes
back: its decoder reconnects by itself while a file camera in another process keeps flowing."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import shm
from pipeline.camera import Backoff
from pipeline.decoder import DecoderSettings, decoder_main
from pipeline.messages import CameraState, CameraStatus
from tests.helpers import wait_for
from tests.pipeline.media import RtspServer, rtsp_camera, write_clip

S = CameraState


class DecoderProc:
    """decoder_main in a real spawned process, with its control block and status pipe."""

    def __init__(self, index: int, settings: DecoderSettings) -> None:
        self.prefix = shm.prefix_for(60 + index)
        self.control = shm.ControlBlock(self.prefix, create=True)
        ctx = mp.get_context("spawn")
        self.conn, writer = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=decoder_main, args=(settings, self.prefix, writer))
        self.proc.start()
        writer.close()
        self.statuses: list[CameraStatus] = []

    def poll(self) -> None:
        while self.conn.poll():
            try:
                self.statuses.append(self.conn.recv())
            except EOFError:
                return

    @property
    def states(self) -> list[CameraState]:
        self.poll()
        return [s.state for s in self.statuses]

    @property
    def decoded(self) -> int:
        return int(self.control.get("decoded"))

    def stop(self) -> None:
        self.control.set("stop", 1)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
        self.poll()
        self.control.close()
        shm.unlink_all(self.prefix)


def after(states: list[CameraState], *seq: CameraState) -> bool:
    """True when ``seq`` occurs in ``states`` in order (not necessarily adjacent)."""
    it = iter(states)
    return all(s in it for s in seq)


@pytest.fixture
def server(tmp_path: Path, ffmpeg: str) -> Iterator[RtspServer]:
    with rtsp_camera(tmp_path, ffmpeg, size=(160, 120)) as srv:
        yield srv


def test_rtsp_camera_stalls_dies_and_comes_back(server: RtspServer, tmp_path: Path) -> None:
    fast = Backoff(initial_s=0.2, max_s=1.0, jitter=0.1)
    rtsp = DecoderProc(0, DecoderSettings(camera_id="rtsp", url=server.url, is_file=False, open_timeout_s=3.0,
                                          read_timeout_s=1.5, stall_timeout_s=0.5, backoff=fast))
    clip = write_clip(tmp_path / "file.mp4", frames=15, fps=15, size=(160, 120))
    file = DecoderProc(1, DecoderSettings(camera_id="file", url=str(clip), is_file=True, loop=True))
    try:
        wait_for(lambda: S.LIVE in rtsp.states, 30, "the RTSP camera to go live")
        assert rtsp.states[:2] == [S.CONNECTING, S.LIVE]
        assert rtsp.statuses[1].detail == "160x120"

        server.pause()  # publisher frozen: the connection stays up, frames stop
        wait_for(lambda: after(rtsp.states, S.LIVE, S.STALLED), 10, "STALLED")
        server.stop()  # the camera dies
        wait_for(lambda: after(rtsp.states, S.STALLED, S.RECONNECTING), 10, "RECONNECTING")
        file_before, rtsp_before = file.decoded, rtsp.decoded
        time.sleep(1.0)  # a few failed attempts against a closed port
        assert file.decoded > file_before  # the other camera never noticed
        assert rtsp.decoded == rtsp_before

        server.start()
        wait_for(lambda: after(rtsp.states, S.STALLED, S.RECONNECTING, S.CONNECTING, S.LIVE), 30,
                 "the RTSP camera to come back")
        wait_for(lambda: rtsp.decoded > rtsp_before + 5, 10, "frames after the reconnect")
        assert file.decoded > file_before + 10
        assert rtsp.proc.is_alive() and file.proc.is_alive()  # reconnects happen inside the process
        assert all("secret" not in s.detail and server.url not in s.detail for s in rtsp.statuses)
    finally:
        rtsp.stop()
        file.stop()
    assert rtsp.states[-1] is S.STOPPED and file.states[-1] is S.STOPPED


def test_udp_transport_is_passed_to_ffmpeg(server: RtspServer) -> None:
    # The relay speaks TCP only (answers 461 to UDP), so a camera configured for UDP cannot connect:
    # that proves the transport setting reaches FFmpeg rather than being ignored.
    cam = DecoderProc(2, DecoderSettings(camera_id="udp", url=server.url, is_file=False, transport="udp",
                                         open_timeout_s=2.0, read_timeout_s=1.0,
                                         backoff=Backoff(initial_s=0.1, max_s=0.2), max_restarts=1))
    try:
        wait_for(lambda: S.FAILED in cam.states, 30, "the UDP camera to give up")
        assert cam.states == [S.CONNECTING, S.RECONNECTING, S.CONNECTING, S.FAILED]
        assert "gave up after 1 reconnects" in cam.statuses[-1].detail
    finally:
        cam.stop()
