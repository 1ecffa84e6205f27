"""labels.jpg: what it counts of the train split's labels, and a tiny run with plots writing it (and
its final validation the confusion matrix)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.data.labels import ImageLabels
from engines.train.plots import label_stats, plot_labels
from engines.val.confusion import read_csv
from tests.engines.shapes_data import make_shapes_dataset


def _labels(cls: list[int], seed: int = 0) -> ImageLabels:
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0.1, 0.5, (len(cls), 4)).astype(np.float32)
    segs = [np.array([[x - w / 2, y - h / 2], [x + w / 2, y - h / 2], [x, y + h / 2]], np.float32)
            for x, y, w, h in boxes]
    return ImageLabels(Path(f"im{seed}.jpg"), (100, 100), np.array(cls, np.int64), segs, boxes)


def test_label_stats_count_what_was_loaded() -> None:
    labels = [_labels([0, 2, 2], 0), _labels([], 1), _labels([2, 1, 0, 2], 2)]
    s = label_stats(labels, 4)
    assert s.counts.tolist() == [2, 1, 4, 0]  # class 3 has none: still a bar
    assert s.cls.tolist() == [0, 2, 2, 2, 1, 0, 2]
    np.testing.assert_array_equal(s.boxes, np.concatenate([lab.boxes for lab in labels]))
    # --classes 0,2 --single-cls: the dataset's labels as selected, one class
    picked = label_stats([lab.selected([0, 2], True) for lab in labels], 1)
    assert picked.counts.tolist() == [6] and len(picked.boxes) == 6
    # many instances: all counted, a fixed sample of boxes drawn
    many = label_stats(labels * 10, 4, max_boxes=20)
    assert many.counts.tolist() == [20, 10, 40, 0] and len(many.cls) == len(many.boxes) == 20
    assert label_stats(labels * 10, 4, max_boxes=20).cls.tolist() == many.cls.tolist()
    empty = label_stats([], 2)
    assert empty.counts.tolist() == [0, 0] and empty.boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="class ids up to 2 in labels of 2 classes"):
        label_stats(labels, 2)


def test_plot_labels_without_instances(tmp_path: Path) -> None:
    path = plot_labels(label_stats([_labels([], 0)], 2), ("a", "b"), tmp_path / "labels.jpg")
    assert cv2.imread(str(path)) is not None


def test_tiny_run_with_plots_writes_labels_and_confusion_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                one_thread: None) -> None:
    from engines.train import train

    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    data = make_shapes_dataset(tmp_path / "data", n=4, size=64)
    out = tmp_path / "run"
    train(data=data, out=out, epochs=1, plots=True, imgsz=64, batch=2, nbs=2, workers=0, device="cpu",
          close_mosaic=0, optimizer="SGD", val=False)
    img = cv2.imread(str(out / "labels.jpg"))
    assert img is not None and min(img.shape[:2]) > 500
    # the final validation (train = val here) with plots on writes the matrix: one column per true class
    labels, cm = read_csv(out / "confusion_matrix.csv")
    assert labels == ["circle", "rect", "background"]
    assert cm[:, :2].sum() == 6  # 4 images holding 1, 2, 1, 2 shapes
    for name in ("confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert (out / name).stat().st_size > 1000, name
