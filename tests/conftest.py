"""Shared fixtures: real data, real servers, RNG hygiene, GPU skipping."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import accepts

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "datasets" / "coco128-seg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_port() -> int:
    """A free port below the ephemeral range, for servers a test stops and starts again: while one is
    down, a client retrying 127.0.0.1:P can be handed P itself as its own port (TCP self-connect) and
    hold it, and the restarted server then fails with "Address already in use"."""
    pick = random.Random()  # not the global RNG, which tests seed
    for _ in range(100):
        port = pick.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch intra-op thread for a module's model tests: two spinning OpenMP threads per process
    crawl on a shared 2-core box; the previous count is restored after the module."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def strict_fp32() -> Iterator[None]:
    """fp32 means fp32 on CUDA too (no TF32) while a test runs, so CUDA must agree with the CPU to float
    rounding; torch's flags are restored after. Nothing to do without CUDA."""
    import torch

    if not torch.cuda.is_available():
        yield
        return
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


@pytest.fixture(autouse=True)
def _restore_rng() -> Iterator[None]:
    """Tests may seed freely; the global RNG state is put back afterwards."""
    import torch

    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(th)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def coco128() -> Path:
    """The shared coco128-seg dataset folder (read-only in CI); skips when absent."""
    if not (COCO128 / "coco128-seg.yaml").is_file():
        pytest.skip(f"shared dataset not found at {COCO128}")
    return COCO128


@pytest.fixture(scope="session")
def coco128_images(coco128: Path) -> list[Path]:
    return sorted((coco128 / "images" / "train2017").glob("*.jpg"))


class _ServerProcess:
    """A server process on a loopback ``port``, stopped and started again by the tests that need it."""

    port: int
    proc: subprocess.Popen[bytes] | None = None

    def wait_listening(self, failure: Callable[[], str]) -> None:
        """Return once the port accepts connections; RuntimeError(``failure()``) after 10 s."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if accepts(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(failure())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class RedisServer(_ServerProcess):
    """A real redis-server on a loopback port, stoppable and restartable on the same port."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed (deploy/bootstrap.sh --dev installs it)")
        self.exe, self.workdir, self.password = exe, workdir, password
        self.port = server_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_listening(lambda: "redis-server did not start")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


class MqttBroker(_ServerProcess):
    """A real mosquitto broker on a loopback port, stoppable and restartable on the same port."""

    def __init__(self, workdir: Path, *, persistence: bool = False, anonymous: bool = True,
                 tls: tuple[Path, Path] | None = None) -> None:
        """persistence: sessions and their queued messages survive a restart. anonymous: False refuses
        every client (no password file). tls: (key, certificate): the listener speaks TLS only."""
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            pytest.skip("mosquitto is not installed (deploy/bootstrap.sh --dev installs it)")
        self.exe, self.workdir = exe, workdir
        self.port = server_port()
        self.conf = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", f"allow_anonymous {str(anonymous).lower()}",
                 f"persistence {str(persistence).lower()}"]
        if persistence:
            lines.append(f"persistence_location {workdir}/")
        if tls is not None:
            lines += [f"keyfile {tls[0]}", f"certfile {tls[1]}"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to user mosquitto, which cannot write workdir
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.workdir / "mosquitto.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=out, stderr=out)
        self.wait_listening(lambda: f"mosquitto did not start: {log.read_text()[-500:]}")


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[MqttBroker]:
    broker = MqttBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(key, certificate) of a self-signed EC certificate for 127.0.0.1: servers present it, and clients
    trust it as their CA (``tls_ca``, ``ssl_ca_certs``). Skips without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    key, crt = folder / "tls.key", folder / "tls.crt"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return key, crt


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.skip("ffmpeg is not installed (deploy/bootstrap.sh --dev installs it)")
    return exe


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


os.environ.setdefault("SEGPIPE_CACHE", str(REPO / ".cache" / "test"))
