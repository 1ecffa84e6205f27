"""pipeline.demo_score: matching rules of the mask and track scores on hand-made frames."""

from __future__ import annotations

import numpy as np
import pytest

from engines.ops.rle import encode
from pipeline.demo_score import TrackScore, score_events, score_tracks


def test_score_events_matching_rules() -> None:
    """Greedy same-class matching, small instances neutral, false positives counted."""
    def square(x: int, y: int, s: int) -> dict:
        m = np.zeros((100, 100), bool)
        m[y:y + s, x:x + s] = True
        return encode(m)

    gts = [{"class_id": 0, "area": 40 * 40, "rle": square(0, 0, 40)},
           {"class_id": 1, "area": 40 * 40, "rle": square(50, 50, 40)},
           {"class_id": 1, "area": 10 * 10, "rle": square(0, 80, 10)}]  # small: neutral
    dets = [{"class_id": 0, "mask": square(0, 0, 36)},      # IoU 0.81 with gt 0
            {"class_id": 0, "mask": square(50, 50, 40)},    # right place, wrong class: a false positive
            {"class_id": 1, "mask": square(0, 80, 10)}]     # matches the small one: not a false positive
    s = score_events([{"kind": "frame", "pts": 0.0, "detections": dets}], {0.0: gts})
    assert (s.frames, s.objects, s.matched, s.detections, s.false_positives) == (1, 2, 1, 3, 1)
    assert s.mean_iou == pytest.approx(36 * 36 / (40 * 40))
    assert s.recall == 0.5
    with pytest.raises(ValueError, match="matches no ground-truth frame"):
        score_events([{"kind": "frame", "pts": 0.5, "detections": []}], {0.0: gts})


def test_score_tracks_counts_switches_and_the_best_id_map() -> None:
    """Object 7 is tracked as 1, 1, 2, 2, 2 (one switch; the best map keeps 7 -> 2: three matches);
    a tracked false detection in frame 0, an untracked one ignored, a small object neutral."""
    def inst(tid: int, x: int, area: int = 40 * 40) -> dict:
        return {"track_id": tid, "class_id": 0, "area": area, "box": [x, 0, x + 40, 40]}

    def det(tid: int | None, x: int) -> dict:
        d = {"class_id": 0, "box": [x, 0, x + 40, 40], "mask": None}
        return d if tid is None else {**d, "track_id": tid}

    truth, events = {}, []
    for f, tid in enumerate([1, 1, 2, 2, 2]):
        truth[f / 10] = [inst(7, 10 * f), inst(8, 300, area=100)]
        dets = [det(tid, 10 * f), det(None, 500), det(9, 300)]
        if f == 0:
            dets.append(det(3, 200))
        events.append({"kind": "frame", "pts": f / 10, "detections": dets})
    s = score_tracks(events, truth)
    assert s == TrackScore(frames=5, objects=5, tracked=6, matched=5, id_switches=1, idtp=3)
    assert s.mota == pytest.approx(1 - (0 + 1 + 1) / 5) and s.idf1 == pytest.approx(6 / 11)
