"""Small helpers shared by test modules (no fixtures here; those live in conftest.py)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(cond: Callable[[], bool], timeout: float, what: str, *, step: float = 0.05) -> float:
    """Poll ``cond`` until true; returns the seconds it took. AssertionError naming ``what`` on timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - t0


def accepts(port: int) -> bool:
    """Whether a server on 127.0.0.1:``port`` accepts connections now."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file another process may be appending to (a line being
    written, with no newline yet, is left for the next read); [] when there is no file."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]]


def sigterm_once(argv: list[str], ready: Callable[[], bool], what: str, *, step: float = 0.005,
                 settle_s: float = 0.0) -> tuple[int, str]:
    """Run ``segpipe argv`` (one torch thread), poll ``ready`` until it holds (AssertionError naming
    ``what`` if the command ends or 120 s pass first), wait ``settle_s``, send SIGTERM; returns the exit
    status and stderr."""
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, f"never saw {what}"
            time.sleep(step)
        time.sleep(settle_s)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


def listen_beside(send: Callable[[], None], argv: list[str]) -> int:
    """``segpipe listen argv``'s exit status, run while ``send`` runs on a thread (sending to the listener
    once it is up); the thread is joined before returning."""
    import threading

    from pipeline.cli import main

    sender = threading.Thread(target=send)
    sender.start()
    try:
        return main(["listen", *argv])
    finally:
        sender.join(10)
