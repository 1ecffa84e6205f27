"""The versioned wire format: one JSON event per frame result or camera status change.

Depends only on ``pipeline.messages``. Every sink publishes exactly these bytes; the schema lives in
``pipeline/schema/event.schema.json`` and the prose (with an example) in ``docs/events.md``.

Numbers are rounded on the way out (boxes and polygons to 0.01 px, scores to 1e-4, times to 1 us):
the model is not more precise than that and shorter floats make smaller, faster JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.messages import CameraStatus, Detection, FrameResult

SCHEMA_VERSION = 1
"""Bumped on any change a consumer could notice (a removed or retyped field); additions keep it."""

SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "event.schema.json"

_SEPARATORS = (",", ":")


def _mask_json(mask: dict[str, Any] | list[list[float]] | None, size_hw: list[int]) -> dict | None:
    if mask is None:
        return None
    if isinstance(mask, dict):
        if list(mask.get("size", ())) != size_hw:
            # The device stage must encode masks over the whole frame; anything else is a bug there.
            raise ValueError(f"Detection.mask size: expected {size_hw} (frame [H, W]), got {mask.get('size')!r}")
        counts = mask["counts"]
        if isinstance(counts, bytes):  # pycocotools hands out bytes
            counts = counts.decode("ascii")
        if not isinstance(counts, str):
            raise ValueError(f"Detection.mask counts: expected compressed RLE str, got {type(counts).__name__}")
        return {"format": "rle", "size": size_hw, "counts": counts}
    # numpy rounds a whole outline at once: per-value round() made polygon events 10x slower
    polygons = [np.round(np.asarray(poly, np.float64), 2).tolist() for poly in mask]
    for poly in polygons:
        if len(poly) < 6 or len(poly) % 2:
            raise ValueError(f"Detection.mask polygon: expected >= 3 (x, y) pairs, got {len(poly)} numbers")
    return {"format": "polygon", "polygons": polygons}


def _detection_json(det: Detection, size_hw: list[int]) -> dict[str, Any]:
    x1, y1, x2, y2 = det.box
    out = {
        "class_id": int(det.class_id),
        "label": det.label,
        "score": round(float(det.score), 4),
        "box": [round(float(x1), 2), round(float(y1), 2), round(float(x2), 2), round(float(y2), 2)],
        "mask": _mask_json(det.mask, size_hw),
    }
    if det.track_id is not None:
        out["track_id"] = int(det.track_id)
    if det.zones is not None:
        out["zones"] = list(det.zones)
    if det.dwell_s:
        out["dwell_s"] = {k: round(float(v), 3) for k, v in det.dwell_s.items()}
    return out


def _ts(t: float) -> float:
    return round(float(t), 6)


def to_event(result: FrameResult, *, publish_ts: float | None = None) -> dict[str, Any]:
    """The frame event for ``result`` (a JSON-ready dict, see ``docs/events.md``).

    Boxes are ``[x1, y1, x2, y2]`` in frame pixels; RLE masks cover the whole frame
    (``size == [height, width]``, column-major COCO counts); polygons are frame-pixel
    ``[x1, y1, x2, y2, ...]`` lists. Times are wall-clock seconds; ``publish_ts`` defaults to now.
    ``zone_counts`` and ``crossings`` (and each detection's ``zones``) appear for cameras with zones
    and counting lines, ``overstays`` (``crowding``) for cameras with a zone that has ``max_dwell_s``
    (``max_objects``), ``roi`` (the frame
    pixels the model saw) for cameras with one.
    """
    width, height = (int(v) for v in result.frame_size)
    size_hw = [height, width]
    event = {
        "version": SCHEMA_VERSION,
        "kind": "frame",
        "camera": result.camera_id,
        "seq": int(result.seq),
        "pts": None if result.pts is None else _ts(result.pts),
        "capture_ts": _ts(result.capture_ts),
        "infer_ts": _ts(result.infer_ts),
        "publish_ts": _ts(time.time() if publish_ts is None else publish_ts),
        "frame": {"width": width, "height": height},
        "model": result.model,
        "detections": [_detection_json(d, size_hw) for d in result.detections],
    }
    if result.roi is not None:
        event["roi"] = [int(v) for v in result.roi]
    analytics = result.analytics
    if analytics is not None and analytics.zone_counts is not None:
        event["zone_counts"] = dict(analytics.zone_counts)
    if analytics is not None and analytics.crossings is not None:
        event["crossings"] = [{"line": c.line, "direction": c.direction, "track_id": int(c.track_id),
                               "class_id": int(c.class_id), "label": c.label} for c in analytics.crossings]
    if analytics is not None and analytics.crowding is not None:
        event["crowding"] = [{"zone": c.zone, "state": c.state, "objects": int(c.objects)} for c in analytics.crowding]
    if analytics is not None and analytics.overstays is not None:
        event["overstays"] = [{"zone": o.zone, "track_id": int(o.track_id), "class_id": int(o.class_id),
                               "label": o.label, "dwell_s": round(float(o.dwell_s), 3)} for o in analytics.overstays]
    return event


def status_event(status: CameraStatus, *, publish_ts: float | None = None) -> dict[str, Any]:
    """The camera status event for ``status`` (state and picture as their lower-case names, times in
    seconds)."""
    return {
        "version": SCHEMA_VERSION,
        "kind": "status",
        "camera": status.camera_id,
        "state": status.state.value,
        "picture": status.picture.value,
        "ts": _ts(status.ts),
        "publish_ts": _ts(time.time() if publish_ts is None else publish_ts),
        "detail": status.detail,
    }


def encode(event: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON bytes of ``event`` (no spaces; one line, so JSONL-safe)."""
    return json.dumps(event, separators=_SEPARATORS, ensure_ascii=False, allow_nan=False).encode("utf-8")


def load_schema() -> dict[str, Any]:
    """The event JSON Schema (draft 2020-12) as a dict."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
