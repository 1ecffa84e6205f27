"""Rectangular training: each image at its own shape (rect="image") and ShapeBatchSampler's shuffled
one-shape batches, on the colour dataset whose masks are checked against the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.data import SegDataset, collate
from engines.data.sampler import ShapeBatchSampler
from engines.errors import ConfigError
from tests.engines.test_data_dataset import (
    NO_COLOUR,
    _check_boxes_match_masks,
    _check_masks_match_pixels,
    make_colour_dataset,
)


@pytest.fixture
def colour_ds(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    return make_colour_dataset(tmp_path / "ds")


def test_each_image_gets_its_own_stride_multiple_shape(colour_ds):
    ds = SegDataset(colour_ds, imgsz=256, augment=True, hyp=NO_COLOUR, nc=8, rect="image")
    assert not ds.mosaic
    for i, lab in enumerate(ds.labels):
        h0, w0 = lab.shape
        h, w = ds.shape_of(i)
        # the longest side is imgsz; the other is the image's own side at that scale, rounded up to 32
        long_h = h0 > w0
        assert (h if long_h else w) == 256 or h0 == w0 == 256 and (h, w) == (256, 256)
        short = (w0 if long_h else h0) * 256 / max(h0, w0)
        assert (w if long_h else h) == 32 * int(np.ceil(short / 32))
    # 240x320, 200x300, 100x150 -> 192x256; 320x240 -> 256x192; 256x256 stays square
    assert sorted(ds.shape_of(i) for i in range(len(ds))) == [(192, 256)] * 3 + [(256, 192), (256, 256)]


def test_grouped_batches_are_exact_and_shuffled(colour_ds):
    ds = SegDataset(colour_ds, imgsz=256, augment=True, hyp=NO_COLOUR, nc=8, rect="image", seed=1)
    shapes = [ds.shape_of(i) for i in range(len(ds))]
    sampler = ShapeBatchSampler(shapes, 2, seed=5)
    assert len(sampler) == 4  # 3 images of one shape -> 2 batches, then 1 + 1
    orders, checked = [], 0
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 4 and sorted(i for b in batches for i in b) == list(range(len(ds)))
        orders.append(batches)
        for b in batches:
            assert len(b) <= 2 and len({shapes[i] for i in b}) == 1
            batch = collate([ds[i] for i in b])
            h, w = shapes[b[0]]
            assert batch.images.shape[2:] == (h, w) and batch.masks.shape[1:] == (h // 4, w // 4)
            checked += _check_masks_match_pixels(batch)
            _check_boxes_match_masks(batch, slack=None)
    assert orders[0] == orders[2] and checked >= 10
    distinct = set()
    for epoch in range(10):
        sampler.set_epoch(epoch)
        distinct.add(str(list(sampler)))
    assert len(distinct) >= 5


def test_one_shape_is_shuffled_like_a_random_sampler():
    sampler = ShapeBatchSampler([(384, 640)] * 10, 4, seed=0)
    firsts = set()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(len(b) for b in batches) == [2, 4, 4]
        assert sorted(i for b in batches for i in b) == list(range(10))
        firsts.add(tuple(batches[0]))
    assert len(firsts) == 20  # not a fixed partition (Ultralytics' rect sorts and never shuffles)


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_ranks_step_equally_and_cover_everything(world):
    shapes = [(384, 640)] * 7 + [(640, 384)] * 3
    ranks = [ShapeBatchSampler(shapes, 2, seed=3, rank=r, world_size=world) for r in range(world)]
    got = [list(s) for s in ranks]
    assert len({len(g) for g in got}) == 1 and all(len(g) == len(s) for g, s in zip(got, ranks, strict=True))
    assert {i for g in got for b in g for i in b} == set(range(10))
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        ShapeBatchSampler(shapes, 2, rank=2, world_size=2)


def test_bad_rect_mode_is_refused(colour_ds):
    with pytest.raises(ConfigError, match="rect"):
        SegDataset(colour_ds, imgsz=256, nc=8, rect="square")


def test_rect_training_loader_and_one_epoch(tmp_path, colour_ds, one_thread):
    from engines.checkpoint import load_checkpoint
    from engines.data import load_data_yaml
    from engines.train import train
    from engines.train.config import TrainConfig
    from engines.train.ddp import Placement
    from engines.train.loader import build_train_data

    yaml = tmp_path / "data.yaml"
    names = "".join(f"  {i}: c{i}\n" for i in range(8))
    yaml.write_text(f"path: {colour_ds.parent}\ntrain: images\nval: images\nnames:\n{names}")
    cfg = TrainConfig(data=str(yaml), imgsz=128, rect=True, batch=2, workers=0, seed=2)
    data = build_train_data(cfg, load_data_yaml(yaml), Placement(-1, 1, torch.device("cpu")))
    data.set_epoch(0)
    seen = [tuple(b.images.shape[2:]) for b in data.loader]
    assert len(seen) == len(data.loader) == 4 and (96, 128) in seen and (128, 96) in seen
    train(data=yaml, rect=True, imgsz=128, batch=2, nbs=2, epochs=1, workers=0, device="cpu", val=False,
          plots=False, out=tmp_path / "run", warmup_epochs=0)
    assert load_checkpoint(tmp_path / "run" / "weights" / "last.pt").meta.train_args["rect"] is True
