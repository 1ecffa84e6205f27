"""Validation: COCO-style box and mask metrics, the validator, COCO json writers, plots.

Imports nothing from ``pipeline``. Numbers agree with pycocotools' COCOeval run on the
``predictions.json`` / ``ground_truth.json`` pair the validator writes.
"""

from __future__ import annotations

from typing import Any

from engines.val.metrics import MetricSet, SegMetrics, Speed

__all__ = ["MetricSet", "SegMetrics", "Speed", "Validator", "validate"]


def __getattr__(name: str) -> Any:
    # The validator pulls in data loading and post-processing; metrics users should not pay for that.
    if name in ("Validator", "validate"):
        from engines.val import validator

        return getattr(validator, name)
    raise AttributeError(f"module 'engines.val' has no attribute {name!r}")
