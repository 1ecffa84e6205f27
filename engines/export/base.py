"""What every exporter shares: the export settings, the source model, and the one exporter protocol.

Imports nothing from ``pipeline``. An exporter turns a :class:`SourceModel` (fused fp32 network plus its
facts) and an :class:`ExportSpec` into one artifact on disk that carries the segpipe metadata record.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engines.backends.artifact import MAX_BATCH, ArtifactRecord
from engines.checkpoint import build_model, load_checkpoint
from engines.errors import ConfigError, ModelError
from engines.files import signals_held
from engines.nn.model import SegmentationModel


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """Export settings, validated once.

    imgsz: (H, W) export size in pixels, multiples of the stride. half: fp16 weights. dynamic: H and W
    symbolic (any multiple of the stride at run time). batch: the largest batch the artifact takes
    (0: no limit; the batch axis is always dynamic, so smaller batches run unpadded). simplify: run
    onnxslim. opset: ONNX opset. int8: post-training static INT8 (needs ``data``). data: dataset YAML
    whose train images calibrate INT8. calib_images: how many of them. int8_format: "QDQ" or "QOperator".
    nms_free: export an end-to-end (YOLO26) model's one-to-one head (post-processed by top-k, no NMS).
    """

    imgsz: tuple[int, int]
    half: bool = False
    dynamic: bool = False
    batch: int = 0
    simplify: bool = False
    opset: int = 17
    int8: bool = False
    data: str | None = None
    calib_images: int = 64
    int8_format: str = "QDQ"
    extra: dict[str, Any] = field(default_factory=dict)
    nms_free: bool = False

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.half else "fp32"

    @property
    def batch_range(self) -> tuple[int, int]:
        return 1, self.batch or MAX_BATCH


@dataclass(frozen=True, slots=True)
class SourceModel:
    """The network to export (eval, BatchNorm fused, fp32, CPU) and the facts its artifact records."""

    model: SegmentationModel
    path: Path
    names: tuple[str, ...]
    imgsz: int
    stride: int
    model_yaml: dict[str, Any]
    data: str | None
    source: str
    model_hash: str
    single_cls: bool = False  # trained with all classes as one: recorded in exports, so val scores them so too

    def record(self, spec: ExportSpec, exporter: str, **extra: Any) -> ArtifactRecord:
        """The metadata record of an artifact made from this model with ``spec``."""
        return ArtifactRecord(names=self.names, imgsz=spec.imgsz, stride=self.stride, batch=spec.batch_range,
                              precision=spec.precision, dynamic=spec.dynamic, exporter=exporter,
                              model_yaml=self.model_yaml, data=self.data, source=self.source or self.path.name,
                              model_hash=self.model_hash, nms_free=spec.nms_free,
                              extra={**({"single_cls": True} if self.single_cls else {}), **spec.extra, **extra})


class Exporter(Protocol):
    """One artifact format. ``suffix`` names the default output beside the model (``best.onnx``)."""

    name: str
    suffix: str

    def export(self, src: SourceModel, spec: ExportSpec, out: Path) -> Path:
        """Write the artifact to ``out`` (atomically) and return its path."""
        ...


def file_hash(path: Path) -> str:
    """sha256 of a file (hex), streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_source(path: str | os.PathLike[str], *, nms_free: bool = False) -> SourceModel:
    """Load a checkpoint (segpipe or Ultralytics) or a model YAML as a fused fp32 eval model on the CPU,
    running its NMS-free head with ``nms_free`` (``ModelError`` when it has none)."""
    src = _load_source(Path(path))
    if nms_free:
        src.model.use_nms_free_head(f"{path}: --nms-free")
    return src


def _load_source(p: Path) -> SourceModel:
    if p.suffix in (".yaml", ".yml"):
        model = SegmentationModel(str(p))
        names = tuple(f"class{i}" for i in range(model.nc))
        yaml_hash = hashlib.sha256(repr(sorted(model.yaml.items())).encode()).hexdigest()
        return SourceModel(model=_prepare(model), path=p, names=names, imgsz=640, stride=int(model.stride.max()),
                           model_yaml=model.yaml, data=None, source=f"{p.name} (random init)",
                           model_hash=yaml_hash)
    if p.suffix.lower() in (".onnx", ".engine", ".torchscript", ".xml") or p.name.endswith("_openvino_model"):
        raise ModelError(f"{p}: export from a checkpoint (.pt/.safetensors) or a model YAML, not an exported model")
    ckpt = load_checkpoint(p)
    m = ckpt.meta
    return SourceModel(model=_prepare(build_model(ckpt)), path=p, names=tuple(m.names), imgsz=int(m.imgsz),
                       stride=int(m.stride), model_yaml=m.model_yaml, data=m.data, source=m.source or p.name,
                       model_hash=file_hash(p), single_cls=bool(m.train_args.get("single_cls")))


def _prepare(model: SegmentationModel) -> SegmentationModel:
    model = model.float().eval().fuse()
    for q in model.parameters():
        q.requires_grad_(False)
    return model


@contextmanager
def atomic_path(out: Path) -> Iterator[Path]:
    """A temporary path beside ``out`` that replaces it (file or folder) only if the block succeeds."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise ConfigError("--out", f"cannot write {out}: {e.strerror or e}") from None
    try:
        tmp = tmpdir / out.name
        yield tmp
        with signals_held():  # a signal here would leave no output where the old one was
            if out.is_symlink():
                out.unlink()  # the link is replaced, not its target; rename puts a file over a link but not a folder
            elif out.is_dir():
                shutil.rmtree(out)
            os.replace(tmp, out)
    finally:
        with signals_held():  # or stop the sweep half-way, leaving the temp folder
            shutil.rmtree(tmpdir, ignore_errors=True)
