"""Benchmark a checkpoint across runtimes: export it to each format, score every artifact on the same
inputs, and report size, box/mask mAP and speed per format (segpipe's ``yolo benchmark``).

Imports nothing from ``pipeline``; torch, the data and val stacks are imported where used, so the CLI
can read :data:`FORMATS` without them. :class:`Scorer` is also how ``segpipe export --val`` compares an
export with its source: one :class:`~engines.val.validator.Validator` on square letterboxed batches
(the only input a fixed-shape export takes), each model warmed up first, so two rows differ by their
runtime alone, not by their input size, letterbox or first-call set-up.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:
    import torch

    from engines.data.spec import DataSpec
    from engines.val.metrics import SegMetrics
    from engines.val.validator import Validator

LOG = logging.getLogger("segpipe.export")

# Benchmarked in this order; "torch" is the checkpoint itself, the reference of the mAP difference.
FORMATS = ("torch", "torchscript", "onnx", "openvino", "tensorrt")
INT8_FORMATS = ("onnx", "openvino")  # --int8 adds an "<format>-int8" row after each of these


def parse_formats(spec: str | None, *, int8: bool = False) -> tuple[str, ...]:
    """The rows to benchmark, in :data:`FORMATS` order: ``"torch,onnx"`` (None: all), plus
    ``onnx-int8`` / ``openvino-int8`` with ``int8``. Exact names only; ``ConfigError`` naming the flag."""
    names = list(FORMATS) if spec is None else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        what = f"unknown format {unknown[0]!r}" if unknown else "no format given"
        raise ConfigError("--formats", f"{what}; choose from: {', '.join(FORMATS)}")
    if int8 and not set(names) & set(INT8_FORMATS):
        raise ConfigError("--int8", f"benchmarks INT8 exports of {' and '.join(INT8_FORMATS)}, and --formats "
                          "names neither")
    rows = []
    for f in FORMATS:
        if f in names:
            rows += [f, f"{f}-int8"] if int8 and f in INT8_FORMATS else [f]
    return tuple(rows)


def val_subset(data: DataSpec, *, fraction: float | None = None, max_images: int | None = None) -> DataSpec:
    """``data`` with its val split cut to its first images (sorted paths, as train's ``fraction``):
    ``round(fraction * n)`` of them (at least 1), or ``max_images``. Both None: ``data`` unchanged."""
    from engines.data.spec import resolve_images

    if fraction is None and max_images is None:
        return data
    if fraction is not None and not 0 < fraction <= 1:
        raise ConfigError("--fraction", f"must be in (0, 1], got {fraction}")
    if max_images is not None and max_images < 1:
        raise ConfigError("--max-images", f"must be >= 1, got {max_images}")
    files, _ = resolve_images(data.sources("val"), split="val")
    n = max(1, round(len(files) * fraction)) if fraction is not None else max_images
    return replace(data, val=tuple(files[:n]))


def artifact_bytes(path: Path) -> int:
    """Size on disk of a model file, or of an artifact folder (OpenVINO IR) with everything in it."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


class Scorer:
    """Box and mask mAP of several models of one network on identical inputs: ``scorer(path)``.

    data: data YAML or parsed spec (its val split is scored). imgsz: the square input side; None takes
    the first scored model's own size. batch, workers, conf, iou: the Validator's. device: where every
    model runs. half: fp16 weights for models loaded from a checkpoint (CUDA). Inputs are square
    letterboxed batches for every model, a checkpoint included (at ``imgsz``, the export's size): a
    difference between two rows is then the runtime's, not the letterbox's.
    """

    def __init__(self, *, data: str | os.PathLike[str] | DataSpec, imgsz: int | None = None, batch: int = 16,
                 device: str | torch.device | None = "cpu", workers: int = 0, half: bool = False,
                 conf: float = 0.001, iou: float = 0.7, nms_free: bool = False) -> None:
        from engines.device import parse_device
        from engines.val.validator import resolve_data

        self.data = resolve_data(data, None, "")
        self.imgsz, self.batch, self.workers, self.half = imgsz, batch, workers, half
        self.device = parse_device(device)
        self.conf, self.iou, self.nms_free = conf, iou, nms_free
        self._validator: Validator | None = None

    def _validator_at(self, imgsz: int) -> Validator:
        """The one Validator every model is scored by (its loader and ground truth are built once)."""
        from engines.val.validator import Validator

        if self._validator is None:
            self._validator = Validator(data=self.data, split="val", imgsz=imgsz, batch=self.batch,
                                        device=self.device, conf=self.conf, iou=self.iou, verbose=False,
                                        rect=False, workers=self.workers)
        return self._validator

    def __call__(self, model: str | os.PathLike[str]) -> SegMetrics:
        """Load ``model`` (any backend format), warm it up, score it; ``SegMetrics`` with ``.speed``."""
        from engines.backends import BackendOptions, backend_for, load_backend

        # what the torch backend loads (a checkpoint, a model YAML) runs the head its exports were made with
        # (``nms_free``); an artifact, its own
        nms_free = self.nms_free and backend_for(Path(model)) == "torch"
        backend = load_backend(Path(model), device=self.device, options=BackendOptions(half=self.half,
                                                                                        nms_free=nms_free))
        try:
            meta = backend.meta
            if self.imgsz is None:
                self.imgsz = max(meta.imgsz)
            s = self.imgsz
            if not meta.dynamic and tuple(meta.imgsz) != (s, s):
                raise ConfigError("--imgsz", f"{model} takes {meta.imgsz[0]}x{meta.imgsz[1]} inputs; it is scored "
                                  f"on {s}x{s} (export it at a square size)")
            if self._validator is None and meta.extra.get("single_cls") and not self.data.single_cls:
                self.data = self.data.select(single_cls=True)  # scored as it was trained, as validate() does
            v = self._validator_at(s)
            backend.warmup(batch=min(self.batch, len(v.dataset)), imgsz=(s, s))  # lazy set-up is not inference
            return v(backend, meta.names)
        finally:
            backend.close()


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One format's result. status: "ok", "skipped" (its runtime or hardware is missing here) or
    "failed"; reason: one line for the last two. path: the artifact scored. size_mb: its size on disk
    in MB (1e6 bytes). metrics: its scores (None unless ok). mask_diff: its mask mAP50-95 minus the
    source checkpoint's (None without an ok torch row)."""

    format: str
    status: str
    reason: str = ""
    path: Path | None = None
    size_mb: float | None = None
    metrics: SegMetrics | None = None
    mask_diff: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Flat record (a CSV row / JSON object): mAPs 0-1, sizes MB, times ms per image; None where
        the row has no value."""
        m = self.metrics
        scores: dict[str, Any] = dict.fromkeys(("box_map50_95", "box_map50", "mask_map50_95", "mask_map50",
                                                 "preprocess_ms", "inference_ms", "postprocess_ms", "images"))
        if m is not None:
            scores = {"box_map50_95": _round(m.box.map), "box_map50": _round(m.box.map50),
                      "mask_map50_95": _round(m.seg.map), "mask_map50": _round(m.seg.map50),
                      "preprocess_ms": _round(m.speed.preprocess, 2), "inference_ms": _round(m.speed.inference, 2),
                      "postprocess_ms": _round(m.speed.postprocess, 2), "images": m.images}
        return {"format": self.format, "status": self.status, "reason": self.reason,
                "path": None if self.path is None else str(self.path), "size_mb": _round(self.size_mb, 2),
                **scores, "mask_map_diff": _round(self.mask_diff)}


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


def benchmark(model: str | os.PathLike[str], *, rows: Sequence[str], scorer: Scorer, out: Path,
              half: bool = False, data_yaml: str | None = None) -> Iterator[BenchRow]:
    """Export ``model`` to each of ``rows`` (from :func:`parse_formats`) into ``out``, score each with
    ``scorer``, and yield one :class:`BenchRow` per format as it completes.

    A format that fails gives a "failed" row (one-line reason) and the next one runs; a runtime or GPU
    this machine lacks (``BackendUnavailableError``, or its package's ``ImportError``) gives "skipped". Exports are fixed-shape at the
    scorer's square size; half: fp16 exports (not the INT8 ones). data_yaml: INT8 calibration images
    (its train split). Ctrl-C (``KeyboardInterrupt``) is not caught.
    """
    if scorer.imgsz is None:
        raise ValueError("benchmark: give the scorer its imgsz (the exports' square size)")
    model, reference = Path(model), None
    for name in rows:
        print(f"\nbenchmark {name}", flush=True)
        try:
            path = _artifact(model, name, scorer=scorer, out=out, half=half, data_yaml=data_yaml)
            metrics = scorer(path)
        except BackendUnavailableError as e:
            yield BenchRow(name, "skipped", _one_line(e))
            continue
        except ImportError as e:  # an optional runtime's package (onnx, openvino) is not installed here
            yield BenchRow(name, "skipped", f"{e.name or 'a module it needs'} is not installed ({_one_line(e)})")
            continue
        except Exception as e:  # one failed format must not end the benchmark
            LOG.debug("benchmark %s failed", name, exc_info=True)
            yield BenchRow(name, "failed", _one_line(e))
            continue
        if name == "torch":
            reference = metrics
        diff = None if reference is None else metrics.seg.map - reference.seg.map
        yield BenchRow(name, "ok", path=path, size_mb=artifact_bytes(path) / 1e6, metrics=metrics, mask_diff=diff)


def _artifact(model: Path, name: str, *, scorer: Scorer, out: Path, half: bool, data_yaml: str | None) -> Path:
    """The file to score for row ``name``: the checkpoint itself for torch, else a new export in ``out``."""
    from engines.export import default_output, export, get_exporter

    fmt, int8 = name.removesuffix("-int8"), name.endswith("-int8")
    if fmt == "torch":
        return model
    s = scorer.imgsz
    assert s is not None  # benchmark() checked
    if fmt == "tensorrt":
        from engines.export.tensorrt import EngineSpec, build_engine

        spec = EngineSpec(imgsz=(s, s), precision="fp16" if half else "fp32", min_batch=1,
                          opt_batch=scorer.batch, max_batch=scorer.batch)
        return build_engine(model, spec=spec, device=scorer.device, out=out / f"{model.stem}.engine", progress=False)
    dest = out / default_output(model, get_exporter(fmt), int8=int8).name
    return export(model, format=fmt, imgsz=s, half=half and not int8, int8=int8, data=data_yaml, out=dest)


def _one_line(e: BaseException) -> str:
    """An error as one line: a segpipe error's own message, anything else prefixed by its type."""
    from engines.errors import SegpipeError

    text = (str(e).strip().splitlines() or [""])[0]
    return text if isinstance(e, SegpipeError) and text else f"{type(e).__name__}: {text}".rstrip(": ")


_COLUMNS = (("format", "{}"), ("size MB", "{:.1f}"), ("box mAP50-95", "{:.4f}"), ("mask mAP50-95", "{:.4f}"),
            ("mask diff", "{:+.4f}"), ("pre ms", "{:.1f}"), ("infer ms", "{:.1f}"), ("post ms", "{:.1f}"),
            ("status", "{}"))


def table(rows: Sequence[BenchRow]) -> str:
    """The benchmark as an aligned text table, one line per row; status last (a reason may be long).
    Times are the validator's milliseconds per image; "-" where a row has no value."""
    cells = []
    for r in rows:
        d = r.as_dict()
        values = (r.format, d["size_mb"], d["box_map50_95"], d["mask_map50_95"], d["mask_map_diff"],
                  d["preprocess_ms"], d["inference_ms"], d["postprocess_ms"],
                  r.status + (f": {r.reason}" if r.reason else ""))
        cells.append([("-" if v is None else f.format(v)) for v, (_, f) in zip(values, _COLUMNS, strict=True)])
    head = [c for c, _ in _COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]
    lines = []
    for line in (head, *cells):
        first = f"{line[0]:<{widths[0]}}"
        lines.append("  ".join([first, *(f"{v:>{w}}" for v, w in zip(line[1:-1], widths[1:-1], strict=True)),
                                line[-1]]).rstrip())
    return "\n".join(lines)


def write_results(out: Path, rows: Sequence[BenchRow], settings: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``benchmark.csv`` (one line per row) and ``benchmark.json`` (``settings`` and the rows) to
    ``out``, each replacing its earlier version whole, so that after each row both hold every row done."""
    records = [r.as_dict() for r in rows]
    fields = list(BenchRow("", "").as_dict())
    csv_path, json_path = out / "benchmark.csv", out / "benchmark.json"
    json_path.with_suffix(".json.tmp").write_text(json.dumps({**settings, "rows": records}, indent=2) + "\n")
    os.replace(json_path.with_suffix(".json.tmp"), json_path)
    with open(csv_path.with_suffix(".csv.tmp"), "w", newline="") as f:  # last: a new CSV row means both are done
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(records)
    os.replace(csv_path.with_suffix(".csv.tmp"), csv_path)
    return csv_path, json_path


__all__ = ["FORMATS", "BenchRow", "Scorer", "artifact_bytes", "benchmark", "parse_formats", "table",
           "val_subset", "write_results"]
