"""The YOLOv8-seg and YOLO11-seg networks: building blocks, the YAML-built model, anchors and model statistics.

Imports nothing from ``pipeline``.
"""

from __future__ import annotations

from engines.nn.head import dist2bbox, make_anchors
from engines.nn.model import SegmentationModel, resolve_model_cfg
from engines.nn.modules import SegTrainOutput

__all__ = ["SegTrainOutput", "SegmentationModel", "dist2bbox", "make_anchors", "resolve_model_cfg"]
