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
