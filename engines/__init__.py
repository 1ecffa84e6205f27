"""segpipe's model side: YOLOv8-seg model, checkpoints, ops, data, training, validation, export and
inference backends. Never imports ``pipeline``.

The one obvious entry point is :class:`SegModel`::

    from engines import SegModel
    model = SegModel("best.pt")
    results = model("bus.jpg")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from engines.predict import SegModel


def __getattr__(name: str) -> Any:
    # Lazy so ``import engines`` stays cheap (no torch import) for the CLI's --help and config checks.
    if name == "SegModel":
        from engines.predict import SegModel

        return SegModel
    raise AttributeError(name)


__all__ = ["SegModel", "__version__"]
