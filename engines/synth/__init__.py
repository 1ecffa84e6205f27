"""Synthetic training data: procedural factory-conveyor and traffic-camera scenes with exact masks.

No pretrained weights ship with segpipe, so it makes its own data: ``write_dataset`` renders a YOLO-seg
dataset, ``write_video`` an H.264 clip with per-frame ground truth, both deterministic for a seed.
The class list (``CLASS_NAMES``) is shared by every style; see ``engines.synth.shapes``.

Module map: ``textures`` (noise, gradients, tiles) -> ``drawing`` (vector display list -> sprite and
mask) -> ``factory_objects`` / ``traffic_objects`` (what each class looks like) -> ``shapes`` (class
list, kinds) -> ``factory_scene`` / ``traffic_scene`` (backgrounds, layouts, placement) -> ``scene``
(compositing, occlusion, camera effects) -> ``motion`` / ``clip`` (tracks, video frames) -> ``labels``
(polygons, RLE) -> ``writers`` (files). Imports nothing from ``pipeline``.
"""

from engines.synth.scene import STYLES, Scene, render_scene
from engines.synth.shapes import CLASS_NAMES
from engines.synth.writers import DatasetSummary, VideoSummary, write_dataset, write_video

__all__ = [
    "CLASS_NAMES",
    "STYLES",
    "DatasetSummary",
    "Scene",
    "VideoSummary",
    "render_scene",
    "write_dataset",
    "write_video",
]
