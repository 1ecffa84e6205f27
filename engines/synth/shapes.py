"""The synthetic object classes and how to render one object of a kind at a pose.

Imports only ``engines.synth.drawing`` and the two object modules.

One fixed class list serves every style, so a single model learns factory and traffic scenes:

====  =========  ==========================================================================
 id   name       drawn as
====  =========  ==========================================================================
 0    vehicle    car, van, truck or bus (rear/front view along a road, profile across it)
 1    person     pedestrian walking (front or profile) or a cyclist's rider
 2    bicycle    bicycle in profile (tyres are rings: the road shows through)
 3    box        taped cardboard box or ribbed plastic crate, top view
 4    bottle     glass or plastic bottle lying on a belt, with cap and label
 5    tool       wrench (open jaw + ring end), screwdriver or hammer, top view
====  =========  ==========================================================================

Loose metal parts (nuts, washers, brackets) are clutter: they occlude objects but are never labelled
(class id -1), so a model learns not to call every grey blob a tool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engines.synth import factory_objects as fo
from engines.synth import traffic_objects as to
from engines.synth.drawing import Drawing, Pose, Sprite

CLASS_NAMES: tuple[str, ...] = ("vehicle", "person", "bicycle", "box", "bottle", "tool")
CLUTTER = -1  # class id of unlabelled occluders

DrawFn = Callable[[Drawing, np.random.Generator, float, str, float], None]


@dataclass(frozen=True, slots=True)
class Kind:
    """A drawable kind: its class id (``CLUTTER`` for unlabelled parts) and its draw function."""

    name: str
    class_id: int
    draw: DrawFn


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("vehicle", 0, to.draw_vehicle),
        Kind("person", 1, to.draw_person),
        Kind("bicycle", 2, to.draw_bicycle),
        Kind("box", 3, fo.draw_box),
        Kind("bottle", 4, fo.draw_bottle),
        Kind("tool", 5, fo.draw_tool),
        Kind("metal_part", CLUTTER, fo.draw_metal_part),
    )
}


@dataclass(frozen=True, slots=True)
class ObjectSpec:
    """What one object looks like, independent of where it is: ``kind`` (a key of ``KINDS``), ``seed``
    for its colours and details, ``size`` (factory: length in px; traffic: px per metre at scale 1)
    and ``view`` (see the object modules). The same spec rendered at two poses is the same object."""

    kind: str
    seed: int
    size: float
    view: str = ""

    @property
    def class_id(self) -> int:
        return KINDS[self.kind].class_id


def build_drawing(spec: ObjectSpec, phase: float = 0.0) -> Drawing:
    """Record ``spec`` into a fresh ``Drawing`` (deterministic for the spec and phase)."""
    kind = KINDS.get(spec.kind)
    if kind is None:
        raise KeyError(f"unknown object kind {spec.kind!r}; known: {', '.join(KINDS)}")
    d = Drawing()
    args = (spec.view,) if spec.view else ()
    kind.draw(d, np.random.default_rng(spec.seed), spec.size, *args, phase=phase)  # type: ignore[call-arg]
    return d


def render_object(spec: ObjectSpec, pose: Pose, frame_size: tuple[int, int]) -> Sprite | None:
    """Render ``spec`` at ``pose`` into a canvas clipped to ``frame_size = (W, H)``; None if off-frame."""
    return build_drawing(spec, pose.phase).render(pose, frame_size)
