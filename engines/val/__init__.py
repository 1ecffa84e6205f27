"""Validation: COCO-style box and mask metrics, the validator, COCO json writers, plots.

Imports nothing from ``pipeline``. Numbers agree with pycocotools' COCOeval run on the
``predictions.json`` / ground-truth json pair the validator writes.
"""

from engines.val.metrics import MetricSet, SegMetrics, Speed

__all__ = ["MetricSet", "SegMetrics", "Speed"]
