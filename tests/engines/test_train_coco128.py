"""A small real training run on coco128-seg: fine-tune the Ultralytics fixture checkpoint on eight real
images (mosaic and all augmentation on); the losses fall and the mAP of best.pt is above zero."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from engines.train import train

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"


@pytest.mark.slow
def test_finetune_on_coco128_lowers_the_loss(coco128: Path, tmp_path: Path, one_thread: None) -> None:
    images = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:8]
    (tmp_path / "images.txt").write_text("\n".join(str(p) for p in images) + "\n")
    names = yaml.safe_load((coco128 / "coco128-seg.yaml").read_text())["names"]
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(
        {"path": str(tmp_path), "train": "images.txt", "val": "images.txt", "names": names}))
    metrics = train(data=tmp_path / "data.yaml", model=FIXTURE, epochs=4, imgsz=224, batch=8, nbs=8,
                    workers=0, device="cpu", out=tmp_path / "run", seed=0, warmup_epochs=0, close_mosaic=0,
                    lr0=0.002, optimizer="AdamW", plots=False, val=False, cache_dir=tmp_path / "cache")
    rows = list(csv.DictReader((tmp_path / "run" / "results.csv").open()))
    assert len(rows) == 4
    total = [sum(float(r[f"train/{k}_loss"]) for k in ("box", "seg", "cls", "dfl")) for r in rows]
    assert total[-1] < total[0], total
    assert metrics.seg.map50 > 0 and metrics.box.map50 > 0
    assert (tmp_path / "run" / "weights" / "best.pt").is_file()
