"""Device spellings: one reading for run configs (checked at load, without torch) and every CLI flag."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from engines.device import device_spelling, parse_device
from engines.errors import ConfigError


@pytest.mark.parametrize("spec, want", [
    (None, ""), ("", ""), ("auto", ""), (" AUTO ", ""), ("cpu", "cpu"), ("CPU", "cpu"), (0, "0"), ("1", "1"),
    ("cuda", "cuda"), ("cuda:1", "cuda:1"), ("0,1", "0,1"),
])
def test_spellings_read(spec: str | int | None, want: str) -> None:
    assert device_spelling(spec) == want


@pytest.mark.parametrize("spec", ["nvidia", "cuda:x", "cuda:", "0,", "0,x", "\u0661", True, 1.5, -1, "mps"])
def test_other_spellings_are_refused_with_the_ones_read(spec: object) -> None:
    with pytest.raises(ConfigError, match=r"^device: expected auto, cpu, a GPU index \(0, 1, \.\.\.\) or cuda:N, got "):
        device_spelling(spec)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_auto_is_the_cpu_without_a_gpu() -> None:
    assert parse_device("auto") == parse_device(None) == torch.device("cpu")


def test_a_run_config_checks_its_device_without_importing_torch() -> None:
    code = ("import sys; from pipeline.config import ModelConfig; ModelConfig(path='m.pt', device=0); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
