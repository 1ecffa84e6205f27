"""The out-of-the-box demo end to end: `segpipe run` on demo:// clips with the shipped demo model, every
frame streamed to a JSONL sink, masks scored against the clips' ground truth (pipeline.demo_score.score_events).

Short clips at the demo's own size keep this to seconds; benchmarks/demo_accuracy.py runs long ones.
The accuracy targets are recall >= 0.9 at mask IoU 0.5 and mean IoU >= 0.75 for objects of 32x32 px
and more, on both clip styles (engines/assets/README.md has the shipped model's figures). The run
tracks too, and its track ids are scored against the clips' object ids (pipeline.demo_score.score_tracks);
a third, longer clip has counting lines, whose crossings are scored against the clip's own
(pipeline.demo_score.score_crossings).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engines.synth.writers import sidecar_path
from pipeline.config import LineConfig
from pipeline.demo import ensure_demo_clip, parse_demo_url
from pipeline.demo_score import DemoScore, TrackScore, load_truth, score_crossings, score_events, score_tracks
from tests.conftest import REPO

# Seeds picked for objects of 32x32 px and more in every frame (many traffic seeds have only far ones).
CLIPS = {
    "traffic": "demo://traffic?seed=18&seconds=1.5&fps=10&size=640x360",
    "factory": "demo://factory?seed=12&seconds=1.5&fps=10&size=640x360",
}
# Cars cross the middle of this one four times, both ways, in 4 s (pipeline.demo_score.truth_crossings).
LINES_CLIP = "demo://traffic?seed=12&seconds=4&fps=10&size=640x360"
LINES = ({"name": "middle", "points": [[0.5, 0.0], [0.5, 1.0]]}, {"name": "low", "points": [[0.0, 0.6], [1.0, 0.6]]})


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict]]]:
    """``(cache folder, frame events per camera)`` of one real `segpipe run` over the CLIPS (every
    frame: lossless file cameras), at a 16:9 model input as the demo config runs it."""
    tmp = tmp_path_factory.mktemp("demo_run")
    cfg = {
        "model": {"path": "demo://model", "device": "cpu", "conf": 0.25, "imgsz": [384, 640]},
        "masks": {"format": "rle", "resolution": "frame"},
        "batch": {"max_batch": 2, "max_wait_ms": 5, "max_age_ms": 60_000},
        "cameras": [*({"id": name, "url": url, "realtime": False, "lossless": True} for name, url in CLIPS.items()),
                    {"id": "lines", "url": LINES_CLIP, "realtime": False, "lossless": True, "lines": list(LINES)}],
        "sinks": [{"type": "jsonl", "path": str(tmp / "events.jsonl")}],
        "metrics": {"enabled": False},
        "tracking": {"enabled": True},
    }
    path = tmp / "cameras.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "SEGPIPE_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path), "--no-console"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, list[dict]] = {name: [] for name in (*CLIPS, "lines")}
    for line in (tmp / "events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev["kind"] == "frame":
            out[ev["camera"]].append(ev)
    return tmp / "cache", out


def _events_and_truth(streamed: tuple[Path, dict[str, list[dict]]], name: str) -> tuple[list[dict], dict]:
    """One clip's frame events, checked for completeness, and its ground truth."""
    cache, events_by_camera = streamed
    spec = parse_demo_url(CLIPS.get(name, LINES_CLIP))
    clip = ensure_demo_clip(spec, cache_dir=cache)  # rendered by the run, so only looked up here
    events = events_by_camera[name]
    seqs = [e["seq"] for e in events]
    assert len(set(seqs)) == len(seqs) and set(seqs) <= set(range(spec.frames)), seqs
    # Lossless file cameras deliver every frame, except that the last one may still be lost in the
    # shutdown race when the clip ends (seen: 14 of 15); accuracy does not depend on that frame.
    assert len(events) >= spec.frames - 1, seqs
    return events, load_truth(sidecar_path(clip))


def _score(streamed: tuple[Path, dict[str, list[dict]]], name: str) -> DemoScore:
    return score_events(*_events_and_truth(streamed, name))


def _track_score(streamed: tuple[Path, dict[str, list[dict]]], name: str) -> TrackScore:
    return score_tracks(*_events_and_truth(streamed, name))


def test_demo_run_streams_masks_in_frame_coordinates(streamed: tuple[Path, dict[str, list[dict]]]) -> None:
    """Every frame arrives, masks decode at frame size inside their boxes, and the model finds objects."""
    from pycocotools import mask as mask_utils

    matched = 0
    for name in CLIPS:
        for ev in streamed[1][name]:
            assert ev["frame"] == {"width": 640, "height": 360}
            for det in ev["detections"]:
                m = mask_utils.decode(det["mask"])
                assert m.shape == (360, 640)
                ys, xs = m.nonzero()
                x1, y1, x2, y2 = det["box"]
                if len(xs):  # a mask never leaves its box (1 px of rounding allowed)
                    assert x1 - 1 <= xs.min() and xs.max() <= x2 + 1 and y1 - 1 <= ys.min() and ys.max() <= y2 + 1
        score = _score(streamed, name)
        print(f"{name}: {score}")
        assert score.objects >= 10, score
        matched += score.matched
    assert matched > 0  # an untrained or misaligned model matches nothing


@pytest.mark.parametrize("name", ["traffic", "factory"])
def test_demo_model_meets_accuracy_target(streamed: tuple[Path, dict[str, list[dict]]], name: str) -> None:
    score = _score(streamed, name)
    assert score.recall >= 0.9, score
    assert score.mean_iou >= 0.75, score


@pytest.mark.parametrize("name", ["traffic", "factory"])
def test_demo_tracks_follow_the_objects(streamed: tuple[Path, dict[str, list[dict]]], name: str) -> None:
    """Track ids name the clip's objects: few switches, and one id per object for nearly every match."""
    score = _track_score(streamed, name)
    print(f"{name}: {score}")
    assert score.matched >= 0.8 * score.objects, score  # each object's first frame has no id yet (min_hits 2)
    assert score.id_switches <= 2, score
    assert score.idf1 >= 0.8, score


def test_demo_line_crossings_are_counted(streamed: tuple[Path, dict[str, list[dict]]]) -> None:
    """The run counts the cars that cross its lines, each once, in the right direction."""
    events, truth = _events_and_truth(streamed, "lines")
    assert all("crossings" in e for e in events)
    score = score_crossings(events, truth, [LineConfig(**line) for line in LINES])
    print(f"lines: {score}")
    assert score.truth >= 4, score
    assert score.recall >= 0.75 and score.precision >= 0.75, score
