"""The training DataLoader: dataset of the ``train`` split, optional fraction, distributed sampling.

Imports ``engines.data``; nothing from ``pipeline``. Augmentation randomness lives in the dataset
(seeded per ``(seed, epoch, index)``), so the sampler's shuffle is the only other random source and
it is seeded too: a run is reproducible whatever the worker count.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from engines.data import disk_cache
from engines.data.augment import AugmentConfig
from engines.data.batch import collate
from engines.data.dataset import SegDataset
from engines.data.ram_cache import SAFETY_MARGIN, available_memory, fits, size_text
from engines.data.sampler import ShapeBatchSampler
from engines.data.spec import DataSpec, resolve_images
from engines.errors import ConfigError
from engines.train.config import TrainConfig
from engines.train.ddp import Placement, broadcast_flag

LOG = logging.getLogger("segpipe.train")


@dataclass(frozen=True, slots=True)
class TrainData:
    """The loader and the dataset behind it (``set_epoch``/``close_mosaic`` are called on it)."""

    loader: DataLoader
    dataset: SegDataset
    sampler: DistributedSampler | RandomSampler | ShapeBatchSampler

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s augmentation stream and shuffle order (before iterating)."""
        self.dataset.set_epoch(epoch)
        if isinstance(self.sampler, (DistributedSampler, ShapeBatchSampler)):
            self.sampler.set_epoch(epoch)
        else:
            self.sampler.generator.manual_seed(self.sampler_seed(epoch))

    def sampler_seed(self, epoch: int) -> int:
        return self.dataset.seed * 1_000_003 + epoch


@contextmanager
def fork_safe_cv2() -> Iterator[None]:
    """Run OpenCV single-threaded in this process while loader workers are forked from it.

    A worker forked while OpenCV's thread pool is in use inherits a pool it cannot drive, and
    ``cv2.setNumThreads`` in the child then blocks forever (reproduced: 1 hang in 15 epochs with a
    busy parent, 19 in 25 once the parent had switched to 0 threads). So the parent goes to 0
    threads (workers inherit that) and workers never touch the setting. Restored on exit.
    """
    import cv2

    prev = cv2.getNumThreads()
    cv2.setNumThreads(0)
    try:
        yield
    finally:
        cv2.setNumThreads(prev)


def augment_config(cfg: TrainConfig) -> AugmentConfig:
    """Augmentation settings: ``cfg.hyp`` overrides plus the run's ``close_mosaic``."""
    return AugmentConfig.from_dict({**cfg.hyp, "close_mosaic": cfg.close_mosaic}, path="train.hyp")


def cache_in_ram(dataset: SegDataset, *, place: Placement | None = None, verbose: bool = True) -> bool:
    """Fill the dataset's RAM image cache when it fits, before any loader worker starts (so workers share
    it); returns whether it did. Each of ``place.world_size`` training processes on this machine holds a
    copy, and rank 0's memory check decides for all of them: taken before any rank fills its copy, so one
    rank's filled cache cannot talk another out of its own (that rank would then hold every step back,
    its warning unseen).

    As Ultralytics, the whole cache plus a 50 % margin must fit in the memory available now; else a
    one-line warning says so and training reads the images from disk (same results, slower).
    """
    need, free = dataset.ram_bytes() * (place.world_size if place else 1), available_memory()
    ok = fits(need, free)
    if place is not None:
        ok = broadcast_flag(ok, place)
    if not ok:
        if verbose and free is not None:
            LOG.warning("--cache ram: %d training images need %s of RAM (%s with a %d%% margin) but only %s is "
                        "available; training without the cache", len(dataset), size_text(need),
                        size_text(need * (1 + SAFETY_MARGIN)), round(SAFETY_MARGIN * 100), size_text(free))
        return False
    t0 = time.perf_counter()
    held = dataset.cache_in_ram()
    if verbose:
        print(f"train: {len(dataset)} images cached in RAM ({size_text(held)}) in {time.perf_counter() - t0:.1f} s")
    return True


def cache_on_disk(dataset: SegDataset, *, place: Placement | None = None, verbose: bool = True) -> bool:
    """Fill the dataset's disk image cache (``.npy`` files, ``engines.data.disk_cache``) and read the images
    from it; returns whether it did. Only the images without a readable file are decoded (none on a later
    run). Under DDP each of the ``place.world_size`` processes decodes its share of them, and rank 0's
    free-space check decides for all; a file another rank has not written yet when first read is decoded
    then (writes are atomic: a reader sees a whole array or none).

    As Ultralytics, the missing files plus a 50 % margin must fit in the free space of their file system;
    else a one-line warning says so and training decodes the images (same results, slower).
    """
    t0 = time.perf_counter()
    plan = dataset.disk_plan()
    short = disk_cache.shortfall(plan)
    ok = short is None
    if place is not None:
        ok = broadcast_flag(ok, place)
    if not ok:
        if verbose and short is not None:
            need, free, where = short
            LOG.warning("--cache disk: %d training images need %s on disk (%s with a %d%% margin) but only %s is "
                        "free in %s; training without the cache", len(plan.missing), size_text(need),
                        size_text(need * (1 + SAFETY_MARGIN)), round(SAFETY_MARGIN * 100), size_text(free), where)
        return False
    share = plan.missing[max(place.rank, 0)::place.world_size] if place is not None else plan.missing
    decoded = dataset.cache_on_disk(plan, indices=share)
    if verbose:
        beside = plan.files[0].parent == dataset.labels[0].im_file.parent
        place_text = "beside the images" if beside else f"in {plan.files[0].parent.parent}"
        print(f"train: {len(dataset)} images cached on disk {place_text} ({size_text(plan.nbytes())}, {decoded} decoded "
              f"now) in {time.perf_counter() - t0:.1f} s")
    return True


def build_train_data(cfg: TrainConfig, spec: DataSpec, place: Placement, *, stride: int = 32) -> TrainData:
    """DataLoader over the train split; each rank gets ``cfg.batch // world_size`` images per batch."""
    if cfg.batch < place.world_size:
        raise ConfigError("train.batch", f"batch {cfg.batch} is smaller than the {place.world_size} processes")
    sources: Sequence[str | os.PathLike[str]] = spec.sources("train")
    if cfg.fraction < 1.0:  # Ultralytics' rule: the first images of the split (mosaic partners too)
        files, _ = resolve_images(sources, split="train")
        sources = files[: max(1, round(len(files) * cfg.fraction))]
    dataset = SegDataset(
        sources, nc=spec.label_nc, classes=spec.classes, single_cls=spec.single_cls, split="train", imgsz=cfg.imgsz,
        augment=True, hyp=augment_config(cfg),
        stride=stride, seed=cfg.seed, cache_dir=None if cfg.cache_dir is None else Path(cfg.cache_dir),
        rect="image" if cfg.rect else False,
    )
    if cfg.cache == "ram":
        cache_in_ram(dataset, place=place, verbose=place.main)
    elif cfg.cache == "disk":
        cache_on_disk(dataset, place=place, verbose=place.main)
    per_rank = cfg.batch // place.world_size
    workers = min(cfg.workers, os.cpu_count() or 1, per_rank)
    if cfg.rect:
        batches = ShapeBatchSampler([dataset.shape_of(i) for i in range(len(dataset))], per_rank, seed=cfg.seed,
                                    rank=max(place.rank, 0), world_size=place.world_size)
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                            pin_memory=place.device.type == "cuda", persistent_workers=False)
        return TrainData(loader=loader, dataset=dataset, sampler=batches)
    if place.distributed:
        sampler: DistributedSampler | RandomSampler = DistributedSampler(
            dataset, num_replicas=place.world_size, rank=place.rank, shuffle=True, seed=cfg.seed)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator())
    loader = DataLoader(
        dataset, batch_size=per_rank, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=place.device.type == "cuda", drop_last=False, persistent_workers=False,
    )
    return TrainData(loader=loader, dataset=dataset, sampler=sampler)
