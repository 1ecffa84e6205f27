"""Helpers for the deploy tests: `segpipe` sub-processes with a clean environment, polling, HTTP probes.

Imports nothing from pipeline/: these tests treat segpipe as a black box, the way an orchestrator does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO
from tests.helpers import wait_for  # noqa: F401 - re-exported for the deploy tests

MODEL = {"path": "yolov8n-seg.yaml", "device": "cpu", "imgsz": 64, "conf": 1e-6, "max_det": 4}
"""A random-weight model at 64 px: fast on a busy CPU, and conf 1e-6 keeps a few detections per frame."""

_SHARD_ENV = ("SEGPIPE_SHARD", "SEGPIPE_REPLICAS", "SEGPIPE_POD_NAME")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any shard settings a developer or CI may have exported."""
    env = {k: v for k, v in os.environ.items() if k not in _SHARD_ENV}
    env.update(extra)
    return env


def write_config(path: Path, raw: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(raw), sort_keys=False))
    return path


def segpipe(*args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m pipeline ARGS`` from the repository root, stdout and stderr captured as text."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=dict(env or clean_env()),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    """Wait for ``proc`` (killing it past ``timeout`` seconds); returns (exit code, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"pid {proc.pid} still running after {timeout} s; stderr:\n{err[-3000:]}") from None
    return proc.returncode, out, err


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if a failed test left it running (cleanup only)."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def http_get(url: str, timeout: float = 2.0) -> tuple[int | None, str]:
    """(status, body) of a GET; status None when nothing answers (refused, reset, timed out)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, ""
