"""Hooks around the train step: schedule, EMA, mosaic switch-off, progress, validation, results
CSV, checkpoints, early stopping, plots.

Each hook is a small class overriding some of ``before_train``, ``before_epoch``, ``before_step``,
``after_step``, ``after_epoch`` and ``after_train``; the loop calls them in list order. Imports
nothing from ``pipeline``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engines.train.ddp import broadcast_int
from engines.train.loss import E2ESegLoss
from engines.train.optim import lr_factor
from engines.train.plots import label_stats, plot_labels, plot_results, plot_train_batch
from engines.train.state import TrainState

if TYPE_CHECKING:
    from torch import nn

    from engines.val.metrics import SegMetrics

LOG = logging.getLogger("segpipe.train")


class Hook:
    """No-op base; override what you need."""

    def before_train(self, s: TrainState) -> None: ...
    def before_epoch(self, s: TrainState) -> None: ...
    def before_step(self, s: TrainState) -> None: ...
    def after_step(self, s: TrainState, stepped: bool) -> None: ...
    def after_epoch(self, s: TrainState) -> None: ...
    def after_train(self, s: TrainState) -> None: ...


class ScheduleHook(Hook):
    """Sets lr, momentum and gradient accumulation before every step (warm-up, then per epoch)."""

    def before_step(self, s: TrainState) -> None:
        s.accumulate = s.schedule.apply(s.optimizer, epoch=s.epoch, ni=s.ni)


class TimeBudgetHook(Hook):
    """Fits the run into ``cfg.time`` hours (Ultralytics' ``time=``): after every epoch, the epoch
    count becomes as many as the time left lets finish at this session's mean epoch time, and the lr
    schedule is rebuilt for it, so the lr still decays to ``lrf`` and mosaic still closes for the
    last ``close_mosaic`` epochs. The time left counts what earlier sessions of a resumed run spent
    (``s.clock``), so an interrupted run does not get its whole budget again. Rank 0's clock decides
    for every rank."""

    def before_train(self, s: TrainState) -> None:
        assert s.cfg.time is not None
        spent = s.clock.before
        # The last epoch before the interruption fitted, but its validation and save may have used up
        # the rest: another epoch would overrun the budget, so the run ends on the epochs it has. Every
        # rank restored the same time from last.pt, so all of them decide alike.
        if spent >= s.cfg.time * 3600 and 0 < s.start_epoch < s.cfg.epochs:
            if s.place.main:
                print(f"time budget {s.cfg.time:g} h already spent ({spent / 3600:.2f} h trained): "
                      f"the run ends with epoch {s.start_epoch}")
            s.cfg = s.cfg.replace(epochs=s.start_epoch)

    def after_epoch(self, s: TrainState) -> None:
        assert s.cfg.time is not None
        # The mean epoch time of this session only: a resumed run may be on other hardware.
        session = s.clock.session()
        per_epoch = session / (s.epoch + 1 - s.start_epoch)
        left = s.cfg.time * 3600 - s.clock.before - session
        epochs = s.epoch + 1 + max(0, int(left // per_epoch))
        epochs = broadcast_int(epochs, s.place)
        if epochs == s.cfg.epochs:
            return
        if s.place.main and s.epoch == s.start_epoch:
            print(f"time budget {s.cfg.time:g} h at {per_epoch:.1f} s/epoch: {epochs} epochs")
        s.cfg = s.cfg.replace(epochs=epochs)
        s.schedule = dataclasses.replace(s.schedule, factor=lr_factor(epochs, s.cfg.lrf, cosine=s.cfg.cos_lr))


class EMAHook(Hook):
    """Folds the weights into the EMA after every optimizer step."""

    def after_step(self, s: TrainState, stepped: bool) -> None:
        if stepped and s.ema is not None:
            s.ema.update(s.model)


class CloseMosaicHook(Hook):
    """Turns mosaic, MixUp, CutMix and Copy-Paste off for the last ``close_mosaic`` epochs (the model then
    sees whole, unmixed images at the scale it will be used at); also right after a resume past that point."""

    def __init__(self) -> None:
        self.closed = False

    def before_epoch(self, s: TrainState) -> None:
        n = s.cfg.close_mosaic
        if n and not self.closed and s.epoch >= s.cfg.epochs - n and getattr(s.dataset, "mixing", False):
            s.dataset.close_mosaic()
            self.closed = True
            if s.place.main:
                left = s.cfg.epochs - s.epoch  # fewer than n in a short or resumed run
                print(f"Closing mosaic augmentation for the last {left} epoch{'s' if left != 1 else ''}")


class E2EWeightHook(Hook):
    """Sets an end-to-end loss's one-to-many share for each epoch, from the epoch count as it stands (a
    time budget may have re-planned it; a resumed run takes up the schedule where it was)."""

    def before_epoch(self, s: TrainState) -> None:
        assert isinstance(s.loss_fn, E2ESegLoss)
        s.loss_fn.set_epoch(s.epoch, s.cfg.epochs)


class ProgressHook(Hook):
    """tqdm bar per epoch with the running mean losses, instances and image size."""

    def __init__(self) -> None:
        self.bar = None

    def before_epoch(self, s: TrainState) -> None:
        from tqdm import tqdm

        names = s.loss_fn.names
        print(("\n" + "%11s" * (4 + len(names))) % ("Epoch", "GPU_mem", *names, "Instances", "Size"))
        self.bar = tqdm(total=s.batches_per_epoch, bar_format="{l_bar}{bar:10}{r_bar}", leave=True)

    def after_step(self, s: TrainState, stepped: bool) -> None:
        import torch

        mem = torch.cuda.memory_reserved(s.device) / 1e9 if s.device.type == "cuda" else 0.0
        assert self.bar is not None and s.mean_items is not None
        self.bar.set_description(("%11s" * 2 + "%11.4g" * (2 + len(s.loss_fn.names))) % (
            f"{s.epoch + 1}/{s.cfg.epochs}", f"{mem:.3g}G", *s.mean_items.tolist(),
            s.extras.get("instances", 0), s.cfg.imgsz))
        self.bar.update(1)

    def after_epoch(self, s: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        waited, stepping = s.extras.get("data_s"), s.extras.get("step_s")
        if waited is not None and stepping is not None and waited + stepping > 0:
            print(f"{' ' * 11}{waited + stepping:.1f} s: waiting for data {waited:.1f} s "
                  f"({waited / (waited + stepping):.0%}), steps {stepping:.1f} s")


class ValidationHook(Hook):
    """Validates the EMA model after each epoch (always after the last), sets metrics and fitness."""

    def __init__(self, validate: Callable[[nn.Module], SegMetrics]) -> None:
        self.validate = validate

    def after_epoch(self, s: TrainState) -> None:
        s.metrics, s.fitness = None, None
        if s.cfg.val or s.final_epoch:
            s.metrics = self.validate(s.eval_model)
            s.fitness = float(s.metrics.fitness)


METRIC_COLUMNS = (
    ("metrics/precision(B)", "box", "precision"), ("metrics/recall(B)", "box", "recall"),
    ("metrics/mAP50(B)", "box", "map50"), ("metrics/mAP50-95(B)", "box", "map"),
    ("metrics/precision(M)", "seg", "precision"), ("metrics/recall(M)", "seg", "recall"),
    ("metrics/mAP50(M)", "seg", "map50"), ("metrics/mAP50-95(M)", "seg", "map"),
)


def results_row(s: TrainState) -> dict[str, float | int | str]:
    """One row of ``results.csv``: epoch (1-based), mean train losses, metrics (blank when not
    validated), fitness and the lr of each group."""
    row: dict[str, float | int | str] = {"epoch": s.epoch + 1}
    names = s.loss_fn.names
    items = s.mean_items.tolist() if s.mean_items is not None else [math.nan] * len(names)
    row.update({f"train/{n}": round(v, 5) for n, v in zip(names, items, strict=True)})
    for col, part, attr in METRIC_COLUMNS:
        row[col] = round(float(getattr(getattr(s.metrics, part), attr)), 5) if s.metrics else ""
    row["fitness"] = round(s.fitness, 5) if s.fitness is not None else ""
    row.update({f"lr/pg{i}": lr for i, lr in enumerate(s.lrs())})
    return row


class CSVHook(Hook):
    """Appends one row per epoch to ``OUT/results.csv`` (kept across a resume)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def before_train(self, s: TrainState) -> None:
        # Rows past the epoch the run starts from are not in its checkpoint: an earlier run's (over which
        # this one trains with exist_ok), or an epoch whose row was written but whose last.pt was not
        # when the run was killed (it is trained again). Either would leave the CSV with two of an epoch.
        if not self.path.is_file():
            return
        if s.start_epoch == 0:
            self.path.unlink()
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        keep = rows[:1] + [r for r in rows[1:] if r and r[0].strip().isdigit() and int(r[0]) <= s.start_epoch]
        if len(keep) < len(rows):
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(keep)
            os.replace(tmp, self.path)

    def after_epoch(self, s: TrainState) -> None:
        row = results_row(s)
        new = not self.path.is_file()
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)


class CheckpointHook(Hook):
    """Writes ``last.pt`` (with resumable state) every epoch and ``best.pt`` when fitness improves."""

    def __init__(self, save: Callable[[TrainState, Path, bool], None], weights_dir: Path) -> None:
        self.save, self.dir = save, weights_dir

    def before_train(self, s: TrainState) -> None:
        # A run killed outright (SIGKILL, power loss) while writing a checkpoint leaves its temp file
        # (engines.checkpoint.write_atomic names it .last.pt.XXXX.tmp); nothing else will remove it.
        for name in ("last.pt", "best.pt"):
            for tmp in self.dir.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def after_epoch(self, s: TrainState) -> None:
        improved = s.fitness is not None and (s.best_fitness is None or s.fitness >= s.best_fitness)
        if improved:
            s.best_fitness, s.best_epoch = s.fitness, s.epoch
        self.save(s, self.dir / "last.pt", True)
        # Without validation there is no fitness yet; best.pt then holds the latest weights until a
        # validated epoch replaces it.
        if improved or (s.best_fitness is None and s.fitness is None):
            self.save(s, self.dir / "best.pt", False)


class EarlyStopHook(Hook):
    """Stops when fitness has not improved for ``patience`` epochs."""

    def after_epoch(self, s: TrainState) -> None:
        if s.best_epoch >= 0 and s.epoch - s.best_epoch >= s.cfg.patience:
            LOG.warning("stopping early: no improvement in the last %d epochs (best epoch %d)",
                        s.cfg.patience, s.best_epoch + 1)
            s.stop = True


class PlotHook(Hook):
    """``labels.jpg`` (the train split's class counts and box statistics) before the first epoch,
    ``results.png`` (loss, metric and lr curves) from the CSV when training ends."""

    def __init__(self, csv_path: Path) -> None:
        self.csv_path = csv_path

    def before_train(self, s: TrainState) -> None:
        # The labels the run trains on (after --classes/--single-cls), not the augmented samples.
        plot_labels(label_stats(s.dataset.labels, len(s.names)), s.names, s.out / "labels.jpg")

    def after_train(self, s: TrainState) -> None:
        if self.csv_path.is_file():
            plot_results(self.csv_path)


class TrainBatchPlotHook(Hook):
    """``train_batch{0,1,2}.jpg``: the first augmented batches with their labels drawn."""

    def __init__(self, out: Path, n: int = 3) -> None:
        self.out, self.n = out, n

    def after_step(self, s: TrainState, stepped: bool) -> None:
        k = s.ni - s.start_epoch * s.batches_per_epoch
        if k < self.n and s.extras.get("batch") is not None:
            plot_train_batch(s.extras["batch"], s.names, self.out / f"train_batch{k}.jpg")
