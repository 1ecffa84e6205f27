"""Small helpers shared by test modules (no fixtures here; those live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(cond: Callable[[], bool], timeout: float, what: str, *, step: float = 0.05) -> float:
    """Poll ``cond`` until true; returns the seconds it took. AssertionError naming ``what`` on timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - t0
