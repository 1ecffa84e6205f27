"""What a config reload (SIGHUP to ``segpipe run``) changes in a running pipeline.

Imports nothing from pipeline/ at run time. Cameras are matched by id. A camera whose decoder settings
changed (url, fps, timeouts...) is stopped and started again; one whose zones, lines or classes alone
changed keeps its decoder, and the sink stage takes the new ones. A new ``model`` or ``masks`` section is
loaded by the device stage beside the running model and swapped in between two batches (on the same
device: ``model.device`` needs a restart). The other sections (batch, sinks, tracking, events, metrics) belong
to processes that cannot change under a running stream: a change there is reported and ignored until
the next restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import CameraConfig, RunConfig

_SINK_SIDE = {"zones", "lines", "classes"}  # applied by the sink stage: the decoder runs on
_FIXED = ("batch", "sinks", "tracking", "events", "metrics")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """stop: ids of the cameras to stop (removed, or changed); start: cameras to start (added, or
    changed), in config order; shapes: whether any camera's zones, lines or classes differ; model: whether
    the model or masks section changed (and can be swapped); ignored: sections that changed but need
    a restart; cameras: the new config's cameras."""

    stop: tuple[str, ...]
    start: tuple[CameraConfig, ...]
    shapes: bool
    model: bool
    ignored: tuple[str, ...]
    cameras: tuple[CameraConfig, ...]

    @property
    def changes_cameras(self) -> bool:
        return bool(self.stop or self.start or self.shapes)


def plan_reload(old: RunConfig, new: RunConfig) -> ReloadPlan:
    """The changes that take ``old`` to ``new`` in a running pipeline (see the module doc)."""
    before = {c.id: c for c in old.cameras}
    after = {c.id: c for c in new.cameras}
    changed = {cid for cid in before.keys() & after.keys()
               if before[cid].model_dump(exclude=_SINK_SIDE) != after[cid].model_dump(exclude=_SINK_SIDE)}
    stop = tuple(cid for cid in before if cid not in after or cid in changed)
    start = tuple(c for c in new.cameras if c.id not in before or c.id in changed)

    def shapes(c: CameraConfig | None) -> tuple:
        return (c.zones, c.lines, c.classes) if c is not None else ((), (), None)

    differ = any(shapes(before.get(cid)) != shapes(after.get(cid)) for cid in before.keys() | after.keys())
    ignored = tuple(name for name in _FIXED if getattr(old, name) != getattr(new, name))
    model = (old.model, old.masks) != (new.model, new.masks)
    if model and old.model.device != new.model.device:  # with the rest of model and masks, until a restart
        ignored, model = ("model.device", *ignored), False
    return ReloadPlan(stop=stop, start=start, shapes=differ, model=model, ignored=ignored, cameras=new.cameras)
