"""ONNX exporter: traced graph, dynamic batch (and with ``dynamic`` spatial) axes, segpipe metadata.

Imports nothing from ``pipeline``. Uses torch's TorchScript-based exporter (``dynamo=False``): it needs no
onnxscript and keeps the shape arithmetic of the anchor grid symbolic. ``simplify`` runs onnxslim;
``int8`` hands the fp32 graph to :mod:`engines.export.quantize`.
"""

from __future__ import annotations

import copy
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
import torch

from engines.backends.artifact import ArtifactRecord, encode_props
from engines.errors import BackendUnavailableError, ConfigError, ModelError
from engines.export.base import ExportSpec, SourceModel, atomic_path

INPUT, OUTPUTS = "images", ("pred", "proto")
_ADDED_IN = re.compile(r"operator '([^']+)'.*added in version (\d+)")


def trace_onnx(src: SourceModel, spec: ExportSpec) -> onnx.ModelProto:
    """Trace ``src.model`` at ``spec.imgsz`` to an in-memory ONNX model.

    Always traced in fp32: ONNX has no fp16 ``Range`` (the anchor grid), so ``spec.half`` converts the
    traced graph afterwards with ONNX Runtime's converter, which keeps such ops and the graph's
    inputs/outputs in fp32.
    """
    model = copy.deepcopy(src.model)
    x = torch.zeros((1, 3, *spec.imgsz), dtype=torch.float32)
    axes: dict[str, dict[int, str]] = {INPUT: {0: "batch"}, "pred": {0: "batch"}, "proto": {0: "batch"}}
    if spec.dynamic:
        axes[INPUT].update({2: "height", 3: "width"})
        axes["pred"][2] = "anchors"
        axes["proto"].update({2: "proto_height", 3: "proto_width"})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's business
        # The stubs allow only paths for f; the TorchScript exporter (dynamo=False) takes a file object too.
        with _stdout_held():
            try:
                torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=spec.opset,  # type: ignore[arg-type]
                                  input_names=[INPUT], output_names=list(OUTPUTS), dynamic_axes=axes,
                                  do_constant_folding=True)
            except torch.onnx.errors.UnsupportedOperatorError as e:
                raise ConfigError("--opset", _opset_message(spec.opset, str(e))) from None
    proto = onnx.load_from_string(buf.getvalue())
    return to_fp16(proto) if spec.half else proto


@contextmanager
def _stdout_held() -> Iterator[None]:
    """The process's stdout (fd 1) goes to a temp file within the block and is written out after it,
    unless the block raises ``ConfigError``: torch's TorchScript exporter prints the whole traced graph
    there, from C++, whenever tracing fails (its ONNX log is left on by its own ``setup_onnx_logging``),
    and the one-line error replaces it."""
    sys.stdout.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(1)
        os.dup2(tmp.fileno(), 1)
        keep = True
        try:
            yield
        except ConfigError:
            keep = False
            raise
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            if keep and tmp.tell():
                tmp.seek(0)
                os.write(1, tmp.read())


def _opset_message(opset: int, error: str) -> str:
    """The tracer's error in one line: which operator the opset lacks and from which opset ONNX has it."""
    if m := _ADDED_IN.search(error.splitlines()[0]):
        return f"opset {opset} cannot express {m[1]} (ONNX has it from opset {m[2]}): use --opset {m[2]} or higher"
    return f"opset {opset} cannot express this model ({error.splitlines()[0]})"


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and activations; IO and ops without fp16 kernels (Range) stay fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = convert_float_to_float16(proto, keep_io_types=True)
    return toposort(proto)


def toposort(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder nodes so each comes after its inputs' producers (the fp16 converter appends its casts
    at the end, which ONNX's checker rejects)."""
    graph = proto.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ModelError(f"the ONNX graph has a cycle or a missing input at node {rest[0].name!r}")
        pending = rest
    nodes = [copy.deepcopy(n) for n in ordered]
    del graph.node[:]
    graph.node.extend(nodes)
    return proto


def slim(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and pattern fusion with onnxslim (optional dependency ``segpipe[simplify]``)."""
    try:
        import onnxslim
    except ImportError:
        raise BackendUnavailableError("--simplify needs onnxslim: pip install segpipe[simplify]") from None
    try:
        # onnxslim imports ONNX Runtime under a bare ``except:``, which swallowed a SIGTERM (raised as
        # Terminated) landing in that import; imported first, its import there is a lookup
        import onnxruntime  # noqa: F401
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxslim.slim(proto)


def set_metadata(proto: onnx.ModelProto, record: ArtifactRecord) -> onnx.ModelProto:
    """Replace ``metadata_props`` with the record, one key per field (values JSON)."""
    del proto.metadata_props[:]
    for k, v in encode_props(record.to_json()).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "segpipe"
    proto.doc_string = f"segpipe YOLOv8-seg ({len(record.names)} classes), input {INPUT} (N,3,H,W) RGB 0-1"
    return proto


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{path}: the exported graph does not validate ({str(e).splitlines()[0]})") from None
    onnx.save(proto, str(path))


def build_onnx(src: SourceModel, spec: ExportSpec, *, exporter: str = "onnx", workdir: Path) -> tuple[
        onnx.ModelProto, ArtifactRecord]:
    """Trace, optionally slim, optionally INT8-quantise (scratch files in ``workdir``); attach metadata."""
    proto = trace_onnx(src, spec)
    if spec.simplify:
        proto = slim(proto)
    extra: dict[str, Any] = {}
    if spec.int8:
        from engines.export.quantize import quantize_onnx

        proto, extra["int8"] = quantize_onnx(proto, spec, workdir=workdir)
    record = src.record(spec, exporter, **extra)
    return set_metadata(proto, record), record


class OnnxExporter:
    name = "onnx"
    suffix = ".onnx"

    def export(self, src: SourceModel, spec: ExportSpec, out: Path) -> Path:
        with atomic_path(out) as tmp:
            proto, _ = build_onnx(src, spec, workdir=tmp.parent)
            save_onnx(proto, tmp)
        return out
