"""The training run's settings: one frozen schema, checked once, recorded in every checkpoint.

Imports nothing from ``pipeline``. Defaults follow Ultralytics' ``default.yaml`` for the
segmentation task; augmentation settings belong to ``engines.data`` and are passed through.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engines.data.augment import AugmentConfig
from engines.errors import ConfigError
from engines.files import new_folder
from engines.limits import MAX_IMGSZ
from engines.train.optim import OPTIMIZERS

CACHE_MODES = (None, "ram", "disk")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """Everything a training run needs. Paths are kept as given (strings) for the record.

    ``world_size`` is only needed to run several CPU processes (gloo); with CUDA it comes from
    ``device`` ("0,1" -> 2 processes).
    """

    data: str
    model: str = "yolov8n-seg.yaml"
    epochs: int = 100
    time: float | None = None  # hours: fit the run into this budget (epochs re-planned after each epoch)
    imgsz: int = 640
    rect: bool = False  # each image at its own aspect ratio (longest side imgsz), batches of one shape
    multi_scale: float = 0.0  # Ultralytics' multi_scale: each batch at a random size in imgsz * (1 ± F)
    batch: int = 16
    device: str | None = None  # None: first CUDA device if any, else CPU
    pretrained: str | None = None
    # Ultralytics' freeze: N freezes layers 0..N-1, a list freezes those layer indices (None: none)
    freeze: int | list[int] | None = None
    resume: str | None = None
    out: str | None = None  # None: runs/segment/train, train2, ... (first free)
    workers: int = 8
    seed: int = 0
    deterministic: bool = True
    optimizer: str = "auto"
    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 0.0005
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    dice: float = 0.0  # weight of a per-instance Dice term beside the mask BCE (0: Ultralytics' loss)
    nbs: int = 64  # nominal batch: gradients are accumulated to about this many images per step
    cos_lr: bool = False
    close_mosaic: int = 10
    patience: int = 100
    val: bool = True
    fraction: float = 1.0
    classes: list[int] | None = None  # Ultralytics' classes: train on the instances of these class ids only
    single_cls: bool = False  # every class as one, "item"
    nms_free: bool = False  # validate an end-to-end model's one-to-one head (Ultralytics' nms=False)
    amp: bool = True
    # NHWC weights and batches (Ultralytics' channels_last): None is on with CUDA, where Tensor-Core convs run
    # NHWC natively, and off elsewhere (a CPU gains nothing; True still runs it there)
    channels_last: bool | None = None
    plots: bool = True
    # "ram": decoded training images kept in memory, "disk": in .npy files (Ultralytics' cache=ram|disk)
    cache: str | None = None
    cache_dir: str | None = None
    world_size: int | None = None
    hyp: dict[str, Any] = field(default_factory=dict)  # augmentation overrides for engines.data

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            # inf passes every range check below (nan fails them) and surfaces as a traceback or a
            # diverged loss only after the run folder is written
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"train.{f.name}", f"must be a finite number, got {value!r}")
        checks: list[tuple[str, bool, str]] = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("time", self.time is None or self.time > 0, "must be > 0 hours"),
            ("imgsz", self.imgsz >= 32 and self.imgsz % 32 == 0, "must be a positive multiple of 32"),
            ("imgsz", self.imgsz <= MAX_IMGSZ, f"at most {MAX_IMGSZ}"),
            ("multi_scale", not isinstance(self.multi_scale, bool) and 0 <= self.multi_scale < 1,
             "must be a fraction of imgsz in [0, 1)"),
            ("batch", self.batch >= 1, "must be >= 1"),
            ("nbs", self.nbs >= 1, "must be >= 1"),
            ("dice", self.dice >= 0, "must be >= 0"),
            ("workers", self.workers >= 0, "must be >= 0"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("lr0", self.lr0 > 0, "must be > 0"),
            ("lrf", 0 < self.lrf <= 1, "must be in (0, 1]"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, "must be >= 0"),
            ("warmup_momentum", 0 <= self.warmup_momentum < 1, "must be in [0, 1)"),
            ("warmup_bias_lr", self.warmup_bias_lr >= 0, "must be >= 0"),
            ("box", self.box >= 0, "must be >= 0"),
            ("cls", self.cls >= 0, "must be >= 0"),
            ("dfl", self.dfl >= 0, "must be >= 0"),
            ("close_mosaic", self.close_mosaic >= 0, "must be >= 0"),
            ("patience", self.patience >= 1, "must be >= 1"),
            ("fraction", 0 < self.fraction <= 1, "must be in (0, 1]"),
            ("optimizer", self.optimizer.lower() in {o.lower() for o in OPTIMIZERS},
             f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"),
            ("cache", self.cache in CACHE_MODES, f"expected {', '.join(map(repr, CACHE_MODES[1:]))} or none"),
            ("world_size", self.world_size is None or self.world_size >= 1, "must be >= 1"),
        ]
        for name, ok, msg in checks:
            if not ok:
                raise ConfigError(f"train.{name}", f"{msg}, got {getattr(self, name)!r}")
        if self.classes is not None and (not isinstance(self.classes, list) or not self.classes or any(
                isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in self.classes)):
            raise ConfigError("train.classes", f"expected a list of class ids >= 0, got {self.classes!r}")
        if (why := _freeze_problem(self.freeze)) is not None:
            raise ConfigError("train.freeze", f"{why}, got {self.freeze!r}")
        try:  # at load, not minutes later when the loader is built
            aug = AugmentConfig.from_dict(self.hyp)
        except ConfigError as e:
            raise ConfigError(f"train.{e.path}", e.msg) from None
        if aug.mask_ratio > self.imgsz:  # the mask targets would have no pixel: a crash in the first batch
            raise ConfigError("train.hyp.mask_ratio", f"must be <= imgsz ({self.imgsz}), got {aug.mask_ratio}")

    def memory_format(self, device: torch.device) -> torch.memory_format:
        """The layout of the weights and batches on ``device``: NHWC with ``channels_last``, by default on CUDA."""
        nhwc = device.type == "cuda" if self.channels_last is None else self.channels_last
        return torch.channels_last if nhwc else torch.contiguous_format

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_record(self) -> dict[str, Any]:
        """Plain JSON-able dict for checkpoint metadata (``train_args``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_record` output (keys this version does not know are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})


def _freeze_problem(freeze: object) -> str | None:
    """Why ``freeze`` is no layer count or list of layer indices (None: it is one). The upper bound
    depends on the model and is checked when it is built (``engines.train.weights.freeze_layers``)."""
    def index(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if freeze is None or index(freeze):
        return None
    if isinstance(freeze, list) and freeze and all(index(i) for i in freeze):
        return None if len(set(freeze)) == len(freeze) else "layer indices must not repeat"
    return "expected a layer count N >= 0 (freezes layers 0..N-1) or a list of layer indices >= 0"


def default_out_dir(base: str | os.PathLike[str] = "runs/segment", name: str = "train") -> Path:
    """First free ``base/name``, ``base/name2``, ... (Ultralytics' numbering)."""
    root = Path(base)
    for i in range(1, 10_000):
        cand = root / (name if i == 1 else f"{name}{i}")
        if not cand.exists():
            return cand
    raise ConfigError("train.out", f"no free run folder under {root}")


RUN_FILES = ("weights/last.pt", "weights/best.pt", "results.csv")


@contextmanager
def claimed_run_folder(out: str | os.PathLike[str], *, exist_ok: bool = False) -> Iterator[Path]:
    """Create ``out/weights`` for a new run and yield ``out``; a folder this made is removed again when
    the block fails before writing anything into it (a bad dataset or model leaves no empty run behind).

    A folder holding an earlier run (any of ``RUN_FILES``) is refused unless ``exist_ok``: the new run
    replaces its checkpoints and ``results.csv``. ``ConfigError`` also
    when the folder cannot be created; both before any data is read.
    """
    root = Path(out)
    earlier = [f for f in RUN_FILES if (root / f).exists()]
    if earlier and not exist_ok:
        raise ConfigError("train.out", f"{root} holds an earlier run ({earlier[0]}); continue it with --resume, "
                          "train over it with --exist-ok, or choose another --out")
    with ExitStack() as stack:
        try:
            stack.enter_context(new_folder(root / "weights"))
        except OSError as e:
            raise ConfigError("train.out", f"cannot create {root / 'weights'}: {e.strerror or e}") from None
        yield root
