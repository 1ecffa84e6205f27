"""Turn a user's device spelling into a torch.device, or say clearly why it cannot be had."""

from __future__ import annotations

import torch

from engines.errors import BackendUnavailableError, ConfigError


def parse_device(spec: str | int | torch.device | None) -> torch.device:
    """``None``/"" -> cuda:0 when available else cpu; "cpu"; "0" / 0 / "cuda" / "cuda:1" -> that GPU.

    A multi-GPU spelling ("0,1") is for the trainer; here it selects the first listed GPU.
    """
    if isinstance(spec, torch.device):
        dev = spec
    elif spec is None or spec == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    else:
        s = str(spec).strip().lower()
        if s == "cpu":
            return torch.device("cpu")
        first = s.split(",")[0].strip()
        if s == "cuda":
            dev = torch.device("cuda:0")
        elif s.startswith("cuda:") and s[5:].isdigit():  # "cuda:x" made torch raise a RuntimeError
            dev = torch.device(s)
        elif first.isascii() and first.isdigit():
            dev = torch.device(f"cuda:{first}")
        else:
            raise ConfigError("device", f"expected cpu, a GPU index (0, 1, ...) or cuda:N, got {spec!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {spec!r} asks for CUDA, but no CUDA GPU is available "
                                          "(use --device cpu)")
        idx = dev.index or 0
        if idx >= torch.cuda.device_count():
            raise BackendUnavailableError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA "
                                          "device(s) present")
    return dev
