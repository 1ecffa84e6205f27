"""Limits every entry point (CLI flags, training config, export) checks its input against. Imports only
``engines.errors``."""

from __future__ import annotations

from engines.errors import ConfigError

# The largest model input side. 65536 asked the letterbox for 38 GB and ended in an allocator's traceback;
# past 8192 the training loader ran out of memory the same way.
MAX_IMGSZ = 8192


def check_mask_threshold(value: float, name: str = "mask_threshold") -> None:
    """A mask threshold (the mask probability a pixel must exceed) is in (0, 1): at 0 or 1 every or no pixel
    of a box would count. Else a ``ConfigError`` naming ``name``."""
    if not 0.0 < value < 1.0:
        raise ConfigError(name, f"must be in (0, 1), got {value}")


def imgsz_hw(imgsz: int | tuple[int, int] | list[int], stride: int = 32) -> tuple[int, int]:
    """``(H, W)`` from a side or a pair: each a positive multiple of ``stride``, at most ``MAX_IMGSZ``; else a
    ``ConfigError`` naming ``--imgsz`` and the value as given (``N`` or ``H,W``)."""
    sides = (imgsz,) if isinstance(imgsz, int) else tuple(imgsz)
    given = ",".join(map(str, sides))
    if len(sides) not in (1, 2) or any(not isinstance(v, int) or v < stride or v % stride for v in sides):
        raise ConfigError("--imgsz", f"must be a positive multiple of {stride}, got {given}")
    if max(sides) > MAX_IMGSZ:
        raise ConfigError("--imgsz", f"at most {MAX_IMGSZ}, got {given}")
    return (sides[0], sides[-1])
