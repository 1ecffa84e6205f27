"""INT8 post-training quantisation of an OpenVINO model with NNCF.

Imports nothing from ``pipeline``. Same calibration images as the ONNX Runtime path (letterboxed,
from the dataset's train split). Kept in fp32: ``quantize.nodes_to_exclude``'s full set (the head's
output convs, the prototype output conv, the DFL and the decode arithmetic); unlike ONNX Runtime,
OpenVINO ran faster with the output convs in fp32 too (demo model, 320, b1/b4: 1.66x/1.82x fp32 against
1.55x/1.75x with only the decode kept). NNCF places the
quantisers where OpenVINO's CPU plugin fuses them, which a QDQ graph from ONNX Runtime does not
always give it: on the demo model at 640 (held-out set, 2 cores) NNCF lost 0.004 mask mAP50-95 at
1.8-2.4x OpenVINO fp32 speed (batch 1-8), the QDQ route 0.005 at less.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from engines.errors import BackendUnavailableError
from engines.export.base import ExportSpec
from engines.export.calib import calibration_batches, calibration_files
from engines.export.quantize import nodes_to_exclude

if TYPE_CHECKING:
    from collections.abc import Iterator

    import onnx


def require_nncf() -> None:
    """Fail before any work when NNCF is missing."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("--format openvino --int8 needs NNCF: pip install segpipe[openvino] "
                                      "(or pip install nncf)") from None


@contextmanager
def _quiet(name: str = "nncf") -> Iterator[None]:
    """NNCF logs a line per node it leaves alone; keep its warnings only, for this call only."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize_openvino(model: Any, traced: onnx.ModelProto, spec: ExportSpec) -> tuple[Any, dict[str, Any]]:
    """INT8 copy of the ``openvino.Model`` converted from ``traced`` (the fp32 ONNX graph, whose node
    names the IR keeps), and a record of how it was made. The exporter calls :func:`require_nncf` first,
    before any tracing."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    files = calibration_files(spec.data, spec.calib_images)
    items = [x.numpy() for x in calibration_batches(files, spec.imgsz, batch=1)]
    excluded = nodes_to_exclude(traced)
    # An ONNX node can become several IR ops named after it (a biased Conv: ".../Conv" plus
    # ".../Conv/WithoutBiases"), hence prefixes.
    scope = nncf.IgnoredScope(patterns=[re.escape(n) + r"(/.*)?" for n in excluded], validate=False)
    # Activation ranges from the plain min and max seen, as the ONNX Runtime path: NNCF's default
    # estimator averages per-image extremes, which clipped the rare large activations of an
    # Ultralytics-trained yolov8n-seg (tests' fixture) and erased every object of an image.
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    with _quiet():
        quantized = nncf.quantize(model, nncf.Dataset(items), preset=nncf.QuantizationPreset.MIXED,
                                  subset_size=len(items), ignored_scope=scope, advanced_parameters=advanced)
    info = {"method": "nncf", "nncf": nncf.__version__, "preset": "mixed", "ranges": "minmax",
            "calib_data": str(spec.data), "calib_images": len(items), "fp32_nodes": len(excluded)}
    return quantized, info
