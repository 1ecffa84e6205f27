"""engines.ops.nms against Ultralytics' non_max_suppression and torchvision.ops.nms.

References: tests/fixtures/ops/nms.npz from tests/fixtures/ops/make_refs.py (real ultralytics, with
torchvision imported so its NMS path is the one recorded).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.errors import ConfigError
from engines.ops import NMSConfig, box_iou, nms, non_max_suppression

nms_mod = sys.modules["engines.ops.nms"]  # the package attribute `nms` is the function

REFS = Path(__file__).resolve().parents[1] / "fixtures" / "ops"
# Must mirror NMS_CFGS in make_refs.py: name -> NMSConfig fields.
CFGS = {
    "default": {"conf": 0.25, "iou": 0.7},
    "val": {"conf": 0.001, "iou": 0.6},
    "agnostic": {"conf": 0.25, "iou": 0.5, "agnostic": True},
    "classes": {"conf": 0.1, "iou": 0.7, "classes": (0, 2)},
    "maxdet": {"conf": 0.05, "iou": 0.7, "max_det": 7},
    "maxnms": {"conf": 0.01, "iou": 0.5, "max_nms": 150},
}


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REFS / "nms.npz") as z:
        return dict(z)


def _sequential_nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> list[int]:
    """Textbook greedy NMS, one box at a time (the definition the fast paths must equal)."""
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    over = (box_iou(boxes, boxes) > iou).numpy()
    keep: list[int] = []
    for i in order:
        if not over[keep, i].any():
            keep.append(i)
    return keep


@pytest.mark.parametrize("case", ["coco80", "three"])
@pytest.mark.parametrize("name", list(CFGS))
def test_non_max_suppression_equals_ultralytics(ref: dict[str, np.ndarray], case: str, name: str) -> None:
    pred = torch.from_numpy(ref[f"{case}__pred"].astype(np.float32))
    out = non_max_suppression(pred, NMSConfig(**CFGS[name]), nc=int(ref[f"{case}__nc"]))
    assert len(out) == pred.shape[0]
    for i, rows in enumerate(out):
        expected = ref[f"{case}__{name}__{i}"]
        assert rows.dtype == torch.float32 and rows.shape[1] == 6 + 32
        np.testing.assert_array_equal(rows.numpy(), expected, err_msg=f"{case}/{name}/image {i}")


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("block", [nms_mod.NMS_BLOCK, 1000, 7])
def test_ties_and_degenerate_boxes_match_torchvision(ref: dict[str, np.ndarray], iou: float, block: int) -> None:
    boxes, scores = torch.from_numpy(ref["ties__boxes"]), torch.from_numpy(ref["ties__scores"])
    expected = ref[f"ties__keep_{iou}"]
    keep = nms_mod._blocked_nms(boxes, scores, iou, max_keep=None, block=block)
    np.testing.assert_array_equal(keep.numpy(), expected)
    np.testing.assert_array_equal(nms(boxes, scores, iou).numpy(), expected)


def test_large_candidate_set_equals_sequential_definition() -> None:
    """Several blocks of clustered boxes (the chunked path), against the one-at-a-time definition."""
    g = torch.Generator().manual_seed(3)
    centres = torch.rand(60, 2, generator=g) * 600
    c = centres[torch.randint(0, 60, (1500,), generator=g)] + torch.randn(1500, 2, generator=g) * 6
    wh = 20 + torch.rand(1500, 2, generator=g) * 60
    boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
    scores = torch.rand(1500, generator=g)
    expected = _sequential_nms(boxes, scores, 0.5)
    assert nms(boxes, scores, 0.5).tolist() == expected
    assert nms(boxes, scores, 0.5, max_keep=25).tolist() == expected[:25]


def test_long_suppression_chains_fall_back_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row of boxes each overlapping only its neighbours needs one fixed-point round per box; with
    the round limit forced low the sequential fallback must give the same answer."""
    x = torch.arange(40, dtype=torch.float32) * 5
    boxes = torch.stack([x, torch.zeros(40), x + 10, torch.full((40,), 10.0)], 1)
    scores = torch.linspace(1, 0.5, 40)
    expected = _sequential_nms(boxes, scores, 0.3)
    assert expected == list(range(0, 40, 2))
    assert nms(boxes, scores, 0.3).tolist() == expected
    monkeypatch.setattr(nms_mod, "_MAX_ROUNDS", 2)
    assert nms(boxes, scores, 0.3).tolist() == expected


def test_empty_inputs() -> None:
    assert nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).shape == (0,)
    pred = torch.zeros((2, 4 + 3 + 32, 50))
    pred[:, 4:7] = 0.2  # all below conf
    out = non_max_suppression(pred, NMSConfig(), nc=3)
    assert [o.shape for o in out] == [(0, 38), (0, 38)]
    out = non_max_suppression(torch.zeros((0, 39, 50)), NMSConfig(), nc=3)
    assert out == []


def test_class_aware_versus_agnostic() -> None:
    """Two identical boxes of different classes: both kept class-aware, one kept agnostic."""
    pred = torch.zeros((1, 4 + 2 + 32, 2))
    pred[0, :4] = torch.tensor([[50.0, 50.0], [50.0, 50.0], [20.0, 20.0], [20.0, 20.0]])
    pred[0, 4, 0], pred[0, 5, 1] = 0.9, 0.8
    aware = non_max_suppression(pred, NMSConfig(), nc=2)[0]
    assert aware[:, 5].tolist() == [0.0, 1.0] and aware[0, :4].tolist() == [40.0, 40.0, 60.0, 60.0]
    agnostic = non_max_suppression(pred, NMSConfig(agnostic=True), nc=2)[0]
    assert agnostic[:, 4].tolist() == [pytest.approx(0.9)]


@pytest.mark.parametrize(("kwargs", "path", "match"), [
    ({"conf": 1.5}, "conf", r"expected a value in \[0, 1\], got 1.5"),
    ({"iou": -0.1}, "iou", r"expected a value in \[0, 1\], got -0.1"),
    ({"max_det": 0}, "max_det", "expected an integer >= 1, got 0"),
    ({"max_det": True}, "max_det", "expected an integer >= 1, got True"),
    ({"max_nms": 2.5}, "max_nms", "expected an integer >= 1, got 2.5"),
    ({"classes": ("person",)}, "classes", "expected non-negative integer class ids"),
    ({"classes": (-1,)}, "classes", "expected non-negative integer class ids"),
])
def test_config_errors_name_the_field(kwargs: dict, path: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        NMSConfig(**kwargs)
    assert e.value.path == path


def test_config_classes_list_becomes_tuple() -> None:
    assert NMSConfig(classes=[2, 0]).classes == (2, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("boxes", "scores", "match"), [
    (torch.zeros((3, 5)), torch.zeros(3), r"boxes: expected shape \(n, 4\), got \(3, 5\)"),
    (torch.zeros((3, 4)), torch.zeros(2), r"scores: expected shape \(3,\), got \(2,\)"),
])
def test_nms_shape_errors(boxes: torch.Tensor, scores: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        nms(boxes, scores, 0.5)


def test_pred_shape_error() -> None:
    with pytest.raises(ValueError, match=r"expected \(N, 4 \+ 80 \+ nm, A\), got \(1, 40, 10\)"):
        non_max_suppression(torch.zeros((1, 40, 10)), NMSConfig(), nc=80)


@pytest.mark.gpu
def test_cuda_equals_cpu(ref: dict[str, np.ndarray]) -> None:
    pred = torch.from_numpy(ref["three__pred"].astype(np.float32))
    cfg = NMSConfig(**CFGS["val"])
    for a, b in zip(non_max_suppression(pred, cfg, nc=3), non_max_suppression(pred.cuda(), cfg, nc=3), strict=True):
        assert b.is_cuda
        torch.testing.assert_close(a, b.cpu())
