"""Scoring a run's streamed events against a demo clip's ground truth (the ``.gt.jsonl`` sidecar that
``engines.synth`` writes beside each clip): masks (``score_events``), track ids (``score_tracks``) and
line crossings (``score_crossings``).

Used by the end-to-end accuracy test and ``benchmarks/demo_accuracy.py``. Imports from ``pipeline`` only
``analytics`` (to find the clip's own crossings), where used, as numpy, scipy and pycocotools.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import LineConfig


@dataclass(frozen=True, slots=True)
class DemoScore:
    """How well streamed masks match a demo clip's ground truth (see ``score_events``).

    frames: frame events scored. objects: ground-truth instances counted (area >= ``min_area``).
    matched: those matched by a detection of the same class at mask IoU >= ``iou_thr``.
    recall = matched / objects; mean_iou: mean mask IoU of the matched ones. detections: all
    detections scored; false_positives: those matched to no instance at all (small ones included).
    """

    frames: int
    objects: int
    matched: int
    mean_iou: float
    detections: int
    false_positives: int

    @property
    def recall(self) -> float:
        return self.matched / self.objects if self.objects else 0.0

    @property
    def precision(self) -> float:
        return 1.0 - self.false_positives / self.detections if self.detections else 0.0

    def __str__(self) -> str:
        return (f"{self.frames} frames, {self.objects} objects: recall {self.recall:.3f} "
                f"({self.matched} matched), mean mask IoU {self.mean_iou:.3f}, precision {self.precision:.3f} "
                f"({self.false_positives} false positives of {self.detections} detections)")


def load_truth(sidecar: str | os.PathLike[str]) -> dict[float, list[dict]]:
    """A clip's ``.gt.jsonl`` (format in ``engines.synth.writers``) as ``{time from the first frame, s:
    instances}``: the time a decoder reports as the frame's pts (``pipeline.decoder`` starts at 0)."""
    import json
    from fractions import Fraction

    out: dict[float, list[dict]] = {}
    first: int | None = None
    with open(sidecar) as f:
        for line in f:
            rec = json.loads(line)
            first = rec["pts"] if first is None else first
            out[float((rec["pts"] - first) * Fraction(rec["time_base"]))] = rec["instances"]
    return out


def score_events(events: list[dict], truth: dict[float, list[dict]], *, min_area: int = 32 * 32,
                 iou_thr: float = 0.5) -> DemoScore:
    """Score frame events (``pipeline.events`` dicts with RLE masks) of one camera against ``truth``.

    Each event is paired with the ground-truth frame nearest its ``pts`` (within 1 ms). Per frame,
    detection/instance pairs of the same class are matched greedily by decreasing mask IoU, each
    used once, down to ``iou_thr``. Instances smaller than ``min_area`` pixels are neither counted
    nor held against a detection that matches them.
    """
    import numpy as np

    frames = objects = matched = detections = false_pos = 0
    ious: list[float] = []
    for ev, gts in _with_truth(events, truth):
        dets = ev["detections"]
        pairs = _greedy_pairs(dets, gts, iou_thr)
        big = [g["area"] >= min_area for g in gts]
        frames += 1
        objects += sum(big)
        detections += len(dets)
        false_pos += len(dets) - len(pairs)
        for _, g, iou in pairs:
            if big[g]:
                matched += 1
                ious.append(iou)
    return DemoScore(frames, objects, matched, float(np.mean(ious)) if ious else 0.0, detections, false_pos)


@dataclass(frozen=True, slots=True)
class TrackScore:
    """How well track ids follow a demo clip's objects (see ``score_tracks``); CLEAR-MOT and IDF1 terms.

    objects: ground-truth instances counted over all frames (area >= ``min_area``). tracked:
    detections carrying a track id, less the small ones (matched to a small instance, or with a box
    under ``min_area`` and matched to no counted object: far objects, neither held for nor against
    the tracker, as in ``score_events``). matched: pairs of the two. id_switches: times an object was
    matched to another track id than at its previous match.
    idtp: matches that agree with the best one-to-one map of object ids to track ids over the clip.
    """

    frames: int
    objects: int
    tracked: int
    matched: int
    id_switches: int
    idtp: int

    @property
    def mota(self) -> float:
        """1 - (misses + false tracks + id switches) / objects."""
        misses, false = self.objects - self.matched, self.tracked - self.matched
        return 1.0 - (misses + false + self.id_switches) / self.objects if self.objects else 0.0

    @property
    def idf1(self) -> float:
        """Share of objects and tracked detections matched under one fixed object -> track id map."""
        total = self.objects + self.tracked
        return 2 * self.idtp / total if total else 0.0

    def __str__(self) -> str:
        return (f"{self.frames} frames, {self.objects} objects, {self.tracked} tracked detections: "
                f"MOTA {self.mota:.3f}, IDF1 {self.idf1:.3f}, {self.id_switches} id switches")


def score_tracks(events: list[dict], truth: dict[float, list[dict]], *, min_area: int = 32 * 32,
                 iou_thr: float = 0.5) -> TrackScore:
    """Score the ``track_id`` of one camera's frame events against the ground truth's ``track_id``.

    Per frame, detections with a track id are matched to instances as in ``score_events`` but on box
    IoU, as multi-object tracking benchmarks match (a far object's coarse mask is still found); across
    frames each object's matched track ids are compared (switches) and the object -> track id map that
    keeps the most matches is found by the Hungarian method (IDF1's IDTP).
    """
    from collections import Counter

    import numpy as np
    from scipy.optimize import linear_sum_assignment

    frames = objects = tracked = matched = switches = 0
    last: dict[int, int] = {}
    together: Counter[tuple[int, int]] = Counter()
    for ev, gts in _with_truth(events, truth):
        dets = [d for d in ev["detections"] if d.get("track_id") is not None]
        pairs = _greedy_pairs(dets, gts, iou_thr, boxes=True)
        big = [g["area"] >= min_area for g in gts]
        frames += 1
        objects += sum(big)
        on_big, on_small = {d for d, g, _ in pairs if big[g]}, {d for d, g, _ in pairs if not big[g]}
        tracked += sum(d in on_big or (d not in on_small and _box_area(det) >= min_area) for d, det in enumerate(dets))
        for d, g, _ in pairs:
            if not big[g]:
                continue
            gid, tid = int(gts[g]["track_id"]), int(dets[d]["track_id"])
            matched += 1
            switches += gid in last and last[gid] != tid
            last[gid] = tid
            together[gid, tid] += 1
    idtp = 0
    if together:
        gids = sorted({g for g, _ in together})
        tids = sorted({t for _, t in together})
        counts = np.zeros((len(gids), len(tids)))
        for (g, t), n in together.items():
            counts[gids.index(g), tids.index(t)] = n
        rows, cols = linear_sum_assignment(-counts)
        idtp = int(counts[rows, cols].sum())
    return TrackScore(frames, objects, tracked, matched, switches, idtp)


@dataclass(frozen=True, slots=True)
class CrossingScore:
    """Line crossings in a run's events against the clip's own (see ``score_crossings``).

    truth: crossings by the clip's objects of ``min_area`` or more at that frame. found: crossings in
    the events, less those by small objects that match nothing. matched: pairs of the two.
    """

    truth: int
    found: int
    matched: int

    @property
    def recall(self) -> float:
        return self.matched / self.truth if self.truth else 0.0

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else 0.0

    def __str__(self) -> str:
        return (f"{self.truth} crossings, {self.found} counted: recall {self.recall:.3f}, "
                f"precision {self.precision:.3f}")


def truth_crossings(truth: dict[float, list[dict]], lines: Sequence[LineConfig]) -> list[tuple[float, dict, float]]:
    """The clip's own crossings of ``lines`` as ``(time, crossing, box area)``: every frame's instances
    (ground-truth boxes and object ids) through ``pipeline.analytics``, as a perfect model and tracker
    would send them. Crossings are event dicts (``line``, ``direction``, ``track_id``, ``class_id``)."""
    from pipeline.analytics import CameraAnalytics
    from pipeline.messages import Detection, FrameResult

    counter = CameraAnalytics([], lines, max_lost_frames=1 << 30)
    out = []
    size = None
    for seq, t in enumerate(sorted(truth)):
        gts = truth[t]
        size = (gts[0]["rle"]["size"][1], gts[0]["rle"]["size"][0]) if gts else size
        if size is None:
            continue
        dets = tuple(Detection(class_id=g["class_id"], label=g["class_name"], score=1.0, box=tuple(g["box"]),
                               track_id=int(g["track_id"]) + 1) for g in gts)
        res = counter.apply(FrameResult(camera_id="truth", seq=seq, pts=t, capture_ts=t, infer_ts=t, frame_size=size,
                                        model="truth", detections=dets))
        area = {d.track_id: g["area"] for d, g in zip(dets, gts, strict=True)}
        out += [(t, {"line": c.line, "direction": c.direction, "track_id": c.track_id, "class_id": c.class_id},
                 float(area[c.track_id])) for c in res.analytics.crossings]  # type: ignore[union-attr]
    return out


def score_crossings(events: list[dict], truth: dict[float, list[dict]], lines: Sequence[LineConfig], *,
                    min_area: int = 32 * 32, tolerance_s: float = 1.0) -> CrossingScore:
    """Score the ``crossings`` of one camera's frame events against the clip's own (``truth_crossings``).

    A counted crossing matches a true one of the same line, direction and class within ``tolerance_s``
    (nearest in time first, each used once). Crossings by objects under ``min_area`` pixels (the
    true one's mask area, or the counted one's box when it matches nothing) are neither counted for nor
    against the run, as in ``score_events``.
    """
    true = truth_crossings(truth, lines)
    found = []
    for ev in events:
        boxes = {d["track_id"]: _box_area(d) for d in ev["detections"] if "track_id" in d}
        found += [(float(ev["pts"]), c, boxes.get(c["track_id"], 0.0)) for c in ev.get("crossings", ())]
    pairs = sorted((abs(ft - tt), i, j) for i, (tt, tc, _) in enumerate(true) for j, (ft, fc, _) in enumerate(found)
                   if abs(ft - tt) <= tolerance_s
                   and all(tc[k] == fc[k] for k in ("line", "direction", "class_id")))
    used_t: set[int] = set()
    used_f: set[int] = set()
    for _, i, j in pairs:
        if i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
    big_t = {i for i, (_, _, area) in enumerate(true) if area >= min_area}
    matched = len([i for i in used_t if i in big_t])
    small_matches = len(used_t) - matched
    counted = len([j for j, (_, _, area) in enumerate(found) if j in used_f or area >= min_area]) - small_matches
    return CrossingScore(len(big_t), counted, matched)


def _box_area(det: dict) -> float:
    x1, y1, x2, y2 = det["box"]
    return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


def _with_truth(events: list[dict], truth: dict[float, list[dict]]) -> Iterator[tuple[dict, list[dict]]]:
    """``(frame event, its ground-truth instances)``: each event paired with the truth frame nearest its
    ``pts``, within 1 ms (ValueError otherwise); events without pts are skipped."""
    import numpy as np

    times = np.array(sorted(truth))
    for ev in events:
        if ev.get("kind") != "frame" or ev.get("pts") is None:
            continue
        i = int(np.abs(times - ev["pts"]).argmin())
        if abs(times[i] - ev["pts"]) > 1e-3:
            raise ValueError(f"event pts {ev['pts']} s matches no ground-truth frame")
        yield ev, truth[float(times[i])]


def _greedy_pairs(dets: list[dict], gts: list[dict], iou_thr: float, *,
                  boxes: bool = False) -> list[tuple[int, int, float]]:
    """``(detection, instance, iou)`` one-to-one pairs of the same class, best mask (or box) IoU first."""
    import numpy as np
    from pycocotools import mask as mask_utils

    if not dets or not gts:
        return []
    if boxes:  # pycocotools takes [x, y, w, h] boxes as readily as RLEs
        xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in (o["box"] for o in (*dets, *gts))]
        iou = np.asarray(mask_utils.iou(xywh[:len(dets)], xywh[len(dets):], [0] * len(gts)))
    else:
        iou = np.asarray(mask_utils.iou([d["mask"] for d in dets], [g["rle"] for g in gts], [0] * len(gts)))
    same = np.array([[d["class_id"] == g["class_id"] for g in gts] for d in dets])
    iou = np.where(same, iou.reshape(len(dets), len(gts)), 0.0)
    pairs, used_d, used_g = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        d, g = divmod(int(flat), len(gts))
        if iou[d, g] < iou_thr:
            break
        if d not in used_d and g not in used_g:
            used_d.add(d)
            used_g.add(g)
            pairs.append((d, g, float(iou[d, g])))
    return pairs
