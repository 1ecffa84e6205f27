"""Datasets for training and validation: data YAML, label checks + cache, augmentation, COCO convert.

Imports nothing from pipeline/. Contract (docs/architecture.md, "Data"): ``load_data_yaml`` ->
``DataSpec``; ``ImageLabels`` per image; ``SegDataset`` (train mode augments, val mode letterboxes);
``collate`` -> ``TrainBatch``.
"""

from engines.data.augment import AugmentConfig
from engines.data.batch import Sample, TrainBatch, collate
from engines.data.cache import SplitLabels, load_split
from engines.data.dataset import SegDataset
from engines.data.labels import ImageLabels, SplitStats, parse_label_file
from engines.data.loader import SegLoader
from engines.data.spec import DataSpec, img2label_path, load_data_yaml, resolve_images

__all__ = [
    "AugmentConfig",
    "DataSpec",
    "ImageLabels",
    "Sample",
    "SegDataset",
    "SegLoader",
    "SplitLabels",
    "SplitStats",
    "TrainBatch",
    "collate",
    "img2label_path",
    "load_data_yaml",
    "load_split",
    "parse_label_file",
    "resolve_images",
]
