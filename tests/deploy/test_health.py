"""/healthz and /readyz through a whole life of `segpipe run`, as a Kubernetes probe sees them: a real
process, a real RTSP camera (ffmpeg publisher + relay) that dies and comes back, a real SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.deploy.procs import MODEL, finish, http_get, segpipe, stop, wait_for, write_config
from tests.pipeline.media import RtspServer, rtsp_camera


@pytest.fixture
def camera(tmp_path: Path, ffmpeg: str) -> Iterator[RtspServer]:
    with rtsp_camera(tmp_path, ffmpeg, size=(96, 64)) as srv:
        yield srv


class Probe:
    """Polls /healthz and /readyz of one `segpipe run` process; liveness must hold at every poll."""

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc, self.base = proc, f"http://127.0.0.1:{port}"
        self.ready: list[tuple[int | None, str]] = []  # every /readyz answer seen, in order

    def get(self, path: str) -> tuple[int | None, str]:
        return http_get(self.base + path)

    def healthy(self) -> bool:
        self._alive()
        return self.get("/healthz")[0] == 200

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            _, err = self.proc.communicate()
            raise AssertionError(f"segpipe run exited with {self.proc.returncode}:\n{err[-3000:]}")

    def until_ready(self, want: int, timeout: float, what: str) -> float:
        """Poll until /readyz answers ``want``, asserting /healthz is 200 all along; returns seconds."""
        def check() -> bool:
            self._alive()
            health = self.get("/healthz")
            assert health == (200, "ok\n"), f"/healthz {health} while waiting for {what}"
            self.ready.append(self.get("/readyz"))
            return self.ready[-1][0] == want

        return wait_for(check, timeout, what, step=0.1)

    def holds(self, want: int, seconds: float, what: str) -> None:
        """/readyz keeps answering ``want`` (and /healthz 200) for ``seconds``: no flapping."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._alive()
            assert self.get("/healthz")[0] == 200, what
            self.ready.append(self.get("/readyz"))
            assert self.ready[-1][0] == want, f"/readyz {self.ready[-1]}: expected {want} ({what})"
            time.sleep(0.1)


def test_health_and_readiness_through_start_camera_loss_recovery_and_sigterm(
        tmp_path: Path, camera: RtspServer) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "cameras.yaml", {
        "model": MODEL,
        "cameras": [{"id": "gate", "url": camera.url, "open_timeout_s": 3, "read_timeout_s": 1.5,
                     "stall_timeout_s": 0.5, "reconnect": {"initial_s": 0.2, "max_s": 1.0}}],
        "metrics": {"port": port},
    })
    proc = segpipe("run", str(cfg), "--no-console")
    probe = Probe(proc, port)
    try:
        # start-up: alive as soon as the server listens, not ready while the engine loads
        t_up = wait_for(probe.healthy, 60, "/healthz", step=0.05)
        first = probe.get("/readyz")
        assert first[0] == 503 and first[1].startswith("not ready:") and "engine_loaded" in first[1], first
        t_ready = probe.until_ready(200, 90, "ready (engine loaded, camera live)")
        assert probe.ready[-1] == (200, "ready\n")
        assert {s for s, _ in probe.ready[:-1]} == {503}  # never ready before that
        status, metrics = probe.get("/metrics")
        assert status == 200 and "segpipe_engine_loaded 1.0" in metrics
        assert 'segpipe_camera_state{camera="gate",segpipe_camera_state="live"} 1.0' in metrics

        camera.stop()  # the camera is lost: not ready, but the process is healthy (no restart wanted)
        t_lost = probe.until_ready(503, 30, "not ready after the camera died")
        assert probe.ready[-1] == (503, "not ready: camera_live\n")
        probe.holds(503, 1.0, "not ready while the camera is down")

        camera.start()
        t_back = probe.until_ready(200, 60, "ready again after the camera came back")

        pid = proc.pid
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc, timeout=30)
        t_exit = time.monotonic() - t0
    finally:
        stop(proc)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err and "reason=SIGTERM" in err
    assert probe.get("/healthz") == (None, "") and probe.get("/readyz") == (None, "")  # the port is closed
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"segpipe_{pid}_")]
    print(f"healthz after {t_up:.2f}s, ready after +{t_ready:.2f}s, camera loss seen in {t_lost:.2f}s, "
          f"back in {t_back:.2f}s, SIGTERM exit in {t_exit:.2f}s")
