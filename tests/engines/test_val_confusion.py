"""The detection confusion matrix: a known answer (worked by hand and checked against Ultralytics'),
the matching rule, and `segpipe val --plots` writing it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.val.confusion import ConfusionMatrix, match_greedy, read_csv
from engines.val.truth import ImageTruth


def _truth(xyxy: list[list[float]], cls: list[int], crowd: list[bool] | None = None) -> ImageTruth:
    b = np.array(xyxy, np.float64).reshape(-1, 4)
    masks = np.zeros((len(b), 120, 120), bool)  # the matrix reads boxes only
    return ImageTruth.from_masks(np.array(cls, np.int64), np.c_[b[:, :2], b[:, 2:] - b[:, :2]], masks,
                                 None if crowd is None else np.array(crowd))


def _add(cm: ConfusionMatrix, dets: list[tuple[list[float], float, int]], truth: ImageTruth) -> None:
    b = np.array([d[0] for d in dets], np.float64).reshape(-1, 4)
    cm.add(np.c_[b[:, :2], b[:, 2:] - b[:, :2]], np.array([d[1] for d in dets]),
           np.array([d[2] for d in dets], np.int64), truth)


# Three classes a, b, c (background = index 3). Boxes are x0, y0, x1, y1 pixels.
TRUTHS = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10], [80, 0, 90, 10], [84, 0, 94, 10]]
TRUTH_CLS = [0, 1, 2, 0, 1, 1]
DETS = [
    ([0, 0, 10, 10], 0.9, 0),        # right: truth 0 (a as a)                  -> [a, a]
    ([21, 0, 30, 10], 0.8, 2),       # wrong class: truth 1, IoU 0.9 (b as c)   -> [c, b]
    ([100, 100, 110, 110], 0.7, 1),  # over nothing                             -> [b, background]
    ([61, 0, 71, 10], 0.6, 0),       # truth 3, IoU 0.82: first by score         -> [a, a]
    ([60, 0, 70, 10], 0.5, 0),       # duplicate of truth 3 (IoU 1, lower score) -> [a, background]
    ([40, 0, 50, 10], 0.0005, 2),    # below conf 0.001: not counted; truth 2 missed -> [background, c]
    ([80, 0, 90, 10], 0.95, 1),      # truth 4, IoU 1 (truth 5 only 0.43)          -> [b, b]
    ([81, 0, 91, 10], 0.4, 1),       # truth 4 taken: its next best, truth 5 (0.54) -> [b, b]
]
# From Ultralytics 8.4.190's own ConfusionMatrix(names={0: "a", 1: "b", 2: "c"}).process_batch(...,
# conf=0.001) on these three images (xyxy boxes, float32 tensors), run once in a separate venv; the
# same numbers as the per-line comments above add up to.
ULTRALYTICS_MATRIX = [[2, 0, 0, 1], [0, 2, 0, 2], [0, 1, 0, 0], [0, 0, 2, 0]]


def test_known_answer_agrees_with_ultralytics() -> None:
    cm = ConfusionMatrix(3, conf=0.001)
    _add(cm, DETS, _truth(TRUTHS, TRUTH_CLS))
    # an image without truths: a detection is a false positive; one at exactly conf does not count
    _add(cm, [([5, 5, 20, 20], 0.3, 1), ([30, 30, 40, 40], 0.001, 0)], _truth([], []))
    # an image without detections: its truth is missed
    _add(cm, [], _truth([[0, 0, 10, 10]], [2]))
    assert cm.matrix.dtype == np.int64 and cm.matrix.tolist() == ULTRALYTICS_MATRIX
    assert cm.matrix[:, :3].sum(0).tolist() == [2, 3, 2]  # every true instance once: a 2, b 3, c 2
    assert cm.matrix[:, 3].sum() == 3  # false positives
    norm = cm.normalized()
    np.testing.assert_allclose(norm[:, :3].sum(0), 1.0)
    assert norm[2, 1] == pytest.approx(1 / 3) and norm[3, 2] == pytest.approx(1.0)


@pytest.mark.parametrize(("iou", "scores", "expect"), [
    # the higher score claims first, though the other overlaps more
    ([[0.6, 0.9]], [0.8, 0.7], [0]),
    # a detection takes the truth it overlaps most among those still unclaimed
    ([[1.0, 0.8], [0.5, 0.7]], [0.9, 0.8], [0, 1]),
    # IoU exactly at the threshold is no match (strictly greater)
    ([[0.45]], [0.9], [-1]),
    # equal scores: the earlier detection first
    ([[0.7, 0.9]], [0.5, 0.5], [0]),
    # nothing to match
    (np.zeros((2, 0)), [], [-1, -1]),
    (np.zeros((0, 3)), [0.1, 0.2, 0.3], []),
])
def test_greedy_matching_table(iou, scores, expect) -> None:
    # rows truths, columns detections; result: the detection of each truth, -1 for none
    assert match_greedy(np.array(iou, np.float64), np.array(scores, np.float64)).tolist() == expect


def test_crowd_truths_are_left_out() -> None:
    cm = ConfusionMatrix(2)
    _add(cm, [([0, 0, 10, 10], 0.9, 0)], _truth([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 1], [True, False]))
    assert cm.matrix.tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_csv_round_trip_and_names_checked(tmp_path: Path) -> None:
    cm = ConfusionMatrix(3)
    cm.matrix[:] = np.array(ULTRALYTICS_MATRIX)
    path = cm.write_csv(tmp_path / "cm.csv", ["a", "b", "c"])
    assert path.read_text().splitlines()[:2] == ["predicted,a,b,c,background", "a,2,0,0,1"]
    labels, counts = read_csv(path)
    assert labels == ["a", "b", "c", "background"] and counts.tolist() == ULTRALYTICS_MATRIX
    with pytest.raises(ValueError, match="2 names for a 3-class"):
        cm.write_csv(tmp_path / "x.csv", ["a", "b"])


def test_cli_val_plots_writes_the_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`segpipe val --plots` on an untrained model: its columns count every true instance once, its
    predicted rows every detection the matrix counts (predictions.json's, scored above --conf)."""
    import torch

    from engines.checkpoint import ModelMeta, save_checkpoint
    from engines.data.spec import load_data_yaml
    from engines.nn.model import SegmentationModel
    from engines.val.validator import Validator
    from pipeline.cli import main as cli
    from tests.engines.shapes_data import make_shapes_dataset

    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    data = make_shapes_dataset(tmp_path / "data", n=4, size=64)
    spec = load_data_yaml(data)
    torch.manual_seed(0)
    model = SegmentationModel("yolov8n-seg.yaml", nc=spec.nc)
    ckpt = save_checkpoint(tmp_path / "m.pt", state_dict=model.state_dict(), meta=ModelMeta(
        names=spec.names, model_yaml=model.yaml, imgsz=64, stride=32, data=str(data)))
    out = tmp_path / "val"
    assert cli(["val", "--model", str(ckpt), "--plots", "--save-json", "--workers", "0", "--out", str(out)]) == 0
    assert f"results saved to {out}" in capsys.readouterr().out
    for name in ("confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert cv2.imread(str(out / name)) is not None, name
    labels, cm = read_csv(out / "confusion_matrix.csv")
    assert labels == ["circle", "rect", "background"] and cm.shape == (3, 3)
    truths = Validator(data=spec, imgsz=64).truths
    instances = np.bincount(np.concatenate([t.cls for t in truths]), minlength=2)
    assert cm[:, :2].sum(0).tolist() == instances.tolist()
    preds = json.loads((out / "predictions.json").read_text())
    counted = sum(p["score"] > 0.001 for p in preds)
    assert counted > 0 and cm[:2].sum() == counted
    assert cm[:2, 2].sum() == counted - cm[:2, :2].sum()  # the background column: detections matching nothing
