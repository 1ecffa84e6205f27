"""The mask threshold (``--mask-threshold``, ``masks.threshold``): a pixel belongs to a mask when its
sigmoid exceeds it; 0.5 is Ultralytics' rule and leaves every route bit for bit as it was.

Reference for other thresholds: thresholding logits at t is thresholding at 0 the logits of one more
prototype, constant 1, weighted -t (a bilinear resize keeps a constant), so Ultralytics' own routes
(process_masks_native, process_masks + scale_masks) with that extra prototype give the expected masks.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engines.errors import ConfigError
from engines.ops import (
    NMSConfig,
    input_mask_crops,
    letterbox_geometry,
    mask_crops,
    paste_crops,
    postprocess,
    process_masks,
    process_masks_native,
    scale_masks,
)
from engines.ops.crops import mask_logit
from pipeline.detections import frame_detections, model_resolution_crops

H, W = 360, 640


def _case(seed: int = 3, n: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth prototypes (96x160, stride 4 of a 384x640 input), coefficients and frame boxes."""
    g = torch.Generator().manual_seed(seed)
    protos = F.interpolate(torch.randn(1, 32, 12, 20, generator=g) * 4, (96, 160), mode="bilinear")[0]
    coeffs = torch.randn(n, 32, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([W * 0.8, H * 0.8])
    boxes = torch.cat([xy, torch.minimum(xy + 20 + torch.rand(n, 2, generator=g) * 250, torch.tensor([W, H]))], 1)
    return protos, coeffs, boxes


def _shifted(protos: torch.Tensor, coeffs: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypes and coefficients whose logits at 0 are the originals' at ``mask_logit(p)``."""
    ones = torch.ones((1, *protos.shape[1:]))
    return torch.cat([protos, ones]), torch.cat([coeffs, torch.full((len(coeffs), 1), -mask_logit(p))], 1)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    inter, union = (a & b).flatten(1).sum(1).double(), (a | b).flatten(1).sum(1).double()
    return float(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).min())


def test_mask_logit() -> None:
    assert mask_logit(0.5) == 0.0  # exactly: Ultralytics' rule, bit for bit
    assert mask_logit(0.4) == pytest.approx(math.log(0.4 / 0.6))
    assert mask_logit(0.9) == pytest.approx(-mask_logit(0.1))
    for bad in (0.0, 1.0, -0.2, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"mask_threshold: must be in \(0, 1\)"):
            mask_logit(bad)


@pytest.mark.parametrize("p", [0.3, 0.4, 0.7])
@pytest.mark.parametrize("batched", [False, True])
def test_frame_crops_at_a_threshold_equal_ultralytics_with_a_shifted_prototype(p: float, batched: bool) -> None:
    protos, coeffs, boxes = _case()
    info = letterbox_geometry((H, W), size=640, auto=True)
    crops = mask_crops(protos, coeffs, boxes, (H, W), info=info, threshold=p, batched=batched)
    ref = process_masks_native(*_shifted(protos, coeffs, p), boxes, (H, W), info=info)
    assert _iou(paste_crops(crops, (H, W)), ref) > 0.999  # only pixels within float rounding of it may differ
    at_half = paste_crops(mask_crops(protos, coeffs, boxes, (H, W), info=info, batched=batched), (H, W))
    mine = paste_crops(crops, (H, W))
    # lower draws wider, higher narrower; and 0.5 is the default
    assert bool(((mine & ~at_half) if p > 0.5 else (at_half & ~mine)).sum() == 0)
    assert int((mine != at_half).sum()) > 100


@pytest.mark.parametrize("p", [0.35, 0.65])
def test_input_resolution_crops_at_a_threshold(p: float) -> None:
    protos, coeffs, boxes = _case(seed=4)
    info = letterbox_geometry((H, W), size=640, auto=True)
    left, top = info.pad
    in_boxes = boxes * info.gain + torch.tensor([left, top, left, top], dtype=torch.float32)
    crops, has = input_mask_crops(protos, coeffs, in_boxes, info, threshold=p)
    sp, sc = _shifted(protos, coeffs, p)
    dense = scale_masks(process_masks(sp, sc, in_boxes, info.new_shape)[None], (H, W), info=info)[0] > 0.5
    assert _iou(paste_crops(crops, (H, W)), dense) > 0.99 and sum(has) >= len(has) - 1


def test_postprocess_and_the_streaming_routes_pass_the_threshold() -> None:
    """postprocess (both routes) and the device stage's frame_detections (both resolutions) at 0.5 are
    the defaults; at 0.3 every mask grows, in each of them."""
    g = torch.Generator().manual_seed(9)
    protos, coeffs, _ = _case(seed=9, n=6)
    info = letterbox_geometry((H, W), size=640, auto=True)
    ih, iw = info.new_shape
    xywh = torch.cat([torch.rand(6, 2, generator=g) * torch.tensor([iw * 0.6, ih * 0.6]) + 100,
                      torch.rand(6, 2, generator=g) * 120 + 40], 1)
    scores = torch.zeros(6, 2)
    scores[torch.arange(6), torch.arange(6) % 2] = 0.9
    pred = torch.cat([xywh, scores, coeffs], 1).T[None]  # (1, 4 + nc + 32, anchors)
    cfg = NMSConfig(conf=0.25, iou=0.99)

    def pixels(**kw: object) -> int:
        dets = postprocess(pred, protos[None], [info], cfg, names=("a", "b"), **kw)[0]  # type: ignore[arg-type]
        return int(dets.masks.sum()) if dets.masks is not None else 0

    for retina in (False, True):
        assert pixels(retina_masks=retina) == pixels(retina_masks=retina, mask_threshold=0.5)
        assert pixels(retina_masks=retina, mask_threshold=0.3) > pixels(retina_masks=retina)
    rows = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2,
                      torch.full((6, 1), 0.9), torch.zeros(6, 1), coeffs], 1)
    for resolution in ("frame", "model"):
        at = [frame_detections(rows, protos, info, masks="rle", resolution=resolution, threshold=t)["crops"]
              for t in (0.5, 0.3)]
        assert sum(int(c.sum()) for _, _, c in at[1]) > sum(int(c.sum()) for _, _, c in at[0]) > 0
    with pytest.raises(ConfigError, match=r"mask_threshold: must be in \(0, 1\), got 1.0"):
        model_resolution_crops(protos, coeffs[:0], rows[:0, :4], info, threshold=1.0)
    with pytest.raises(ConfigError, match=r"mask_threshold: must be in \(0, 1\), got 0.0"):  # even with no object
        postprocess(pred[..., :0], protos[None], [info], cfg, names=("a", "b"), mask_threshold=0.0)


def test_predict_passes_the_threshold_and_refuses_one_outside_0_1() -> None:
    from engines.predict import PredictConfig, SegModel

    torch.manual_seed(0)
    model = SegModel("yolov8n-seg.yaml")  # untrained: its low scores need a low conf to keep boxes
    image = (torch.rand(96, 128, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8).numpy()
    pixels = {t: sum(int(d.masks.sum()) for d in model(image, imgsz=64, conf=1e-6, max_det=8, retina_masks=True,
                                                       mask_threshold=t) if d.masks is not None)
              for t in (0.5, 0.2)}
    assert pixels[0.2] > pixels[0.5] > 0
    assert PredictConfig(mask_threshold=0.4).mask_threshold == 0.4
    with pytest.raises(ConfigError, match=r"mask_threshold: must be in \(0, 1\), got 1.0"):
        PredictConfig(mask_threshold=1.0)


@pytest.mark.parametrize("command", ["val", "predict"])
@pytest.mark.parametrize("value", ["0", "1", "-0.1", "nan"])
def test_cli_refuses_a_threshold_outside_0_1(command: str, value: str, capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    from pipeline.cli import main

    extra = ["--source", str(tmp_path)] if command == "predict" else []
    assert main([command, "--model", "missing.pt", *extra, "--mask-threshold", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"segpipe {command}: error: --mask-threshold: must be in (0, 1), got {float(value)}"], err
