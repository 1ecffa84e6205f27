"""ruff and mypy over the code, as CI runs them (STYLE.md: "run ruff and a type checker in CI").

The versions are pinned in pyproject's dev extra, so a new linter release cannot fail CI on its own.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install -e '.[dev]')")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_ruff_finds_nothing() -> None:
    r = _run("ruff", "check", "--no-cache", "pipeline", "engines", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_finds_nothing() -> None:
    r = _run("mypy", "pipeline", "engines")  # its cache is .mypy_cache (ignored by git)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr
