"""Turn a user's device spelling into a torch.device, or say clearly why it cannot be had.

Importing it does not import torch: run configs check a camera wall's device spelling at load with
:func:`device_spelling`, before anything heavy is loaded."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from engines.errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:
    import torch

# "0,1" (several GPUs) is for the trainer; everywhere else it selects the first listed GPU.
_SPELLING = re.compile(r"^(auto|cpu|cuda|cuda:\d+|\d+(,\d+)*|)$")
SPELLINGS = "auto, cpu, a GPU index (0, 1, ...) or cuda:N"


def device_spelling(spec: str | int | None) -> str:
    """``spec`` in lower case, stripped ("" for None or "auto": the first GPU, else the CPU); ``ConfigError``
    on anything :func:`parse_device` could not read (an int is a GPU index, as YAML's ``device: 0``)."""
    if spec is None:
        return ""
    s = str(spec) if isinstance(spec, int) and not isinstance(spec, bool) else spec
    if not isinstance(s, str) or not s.isascii() or not _SPELLING.match(s.strip().lower()):
        raise ConfigError("device", f"expected {SPELLINGS}, got {spec!r}")
    s = s.strip().lower()
    return "" if s == "auto" else s


def parse_device(spec: str | int | torch.device | None) -> torch.device:
    """``None``/""/"auto" -> cuda:0 when available else cpu; "cpu"; "0" / 0 / "cuda" / "cuda:1" -> that GPU.

    A multi-GPU spelling ("0,1") is for the trainer; here it selects the first listed GPU.
    """
    import torch

    if isinstance(spec, torch.device):
        dev = spec
    else:
        s = device_spelling(spec)
        if s == "":
            return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        if s == "cpu":
            return torch.device("cpu")
        dev = torch.device("cuda:0" if s == "cuda" else s if s.startswith("cuda:") else f"cuda:{s.split(',')[0]}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {spec!r} asks for CUDA, but no CUDA GPU is available "
                                          "(use --device cpu)")
        idx = dev.index or 0
        if idx >= torch.cuda.device_count():
            raise BackendUnavailableError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA "
                                          "device(s) present")
    return dev
