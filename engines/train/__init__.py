"""Training: task-aligned assignment, the YOLOv8-seg loss, and a short train step with hooks.

``engines.train.train`` is :func:`engines.train.trainer.train`, resolved on first access so that
``import engines.train.loss`` does not pull in data loading and validation.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from engines.train.trainer import train

        return train
    raise AttributeError(f"module 'engines.train' has no attribute {name!r}")
