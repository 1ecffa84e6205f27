"""segpipe predict --track: track ids on a synthetic clip, scored against its ground-truth track ids."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.demo import demo_model_path
from pipeline.demo_score import load_truth, score_tracks

FPS = 10


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("track") / "clip.mp4"
    assert main(["synth", "video", "--out", str(path), "--seconds", "3", "--fps", str(FPS), "--style", "traffic",
                 "--seed", "3", "--size", "640x384"]) == 0
    return path


def _predict(clip: Path, out: Path, *args: str) -> list[dict]:
    assert main(["predict", "--model", str(demo_model_path()), "--source", str(clip), "--out", str(out),
                 *args]) == 0
    return json.loads((out / "predictions.json").read_text())


def _as_frame_events(records: list[dict], frames: int) -> list[dict]:
    """predictions.json records of one clip as the frame events ``score_tracks`` reads."""
    by_frame: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        x, y, w, h = r["bbox"]
        by_frame[int(r["image_id"].rsplit("_", 1)[1])].append(
            {"box": [x, y, x + w, y + h], "class_id": r["category_id"], "track_id": r["track_id"]})
    return [{"kind": "frame", "pts": f / FPS, "detections": by_frame[f]} for f in range(frames)]


def test_track_ids_follow_the_clips_objects(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _predict(clip, tmp_path / "out", "--track")
    assert all("track_id" in r for r in records)
    score = score_tracks(_as_frame_events(records, 3 * FPS), load_truth(clip.with_suffix(".gt.jsonl")))
    assert score.objects > 10 and score.idf1 >= 0.9 and score.id_switches <= 1, score
    tracks = {r["track_id"] for r in records} - {None}
    assert f"{len(tracks)} track(s)" in capsys.readouterr().out
    assert (tmp_path / "out" / "clip.mp4").is_file()


def test_without_track_the_records_are_plain_coco(clip: Path, tmp_path: Path) -> None:
    records = _predict(clip, tmp_path / "out", "--max-frames", "2", "--no-save")
    assert records and not any("track_id" in r for r in records)


def test_tracker_settings_come_from_a_run_config_or_a_file_of_their_own(clip: Path, tmp_path: Path) -> None:
    """min_hits 1 gives an id on an object's first frame; the default (2) only from its second."""
    first = [r for r in _predict(clip, tmp_path / "default", "--track", "--max-frames", "1", "--no-save")]
    assert first and all(r["track_id"] is None for r in first)
    own = tmp_path / "tracker.yaml"
    own.write_text("min_hits: 1\nnew_track_score: 0.5\n")
    run_cfg = tmp_path / "cameras.yaml"
    run_cfg.write_text("model: {path: demo://model}\ncameras: [{id: a, url: x.mp4}]\n"
                       "tracking: {enabled: true, min_hits: 1, new_track_score: 0.5}\n")
    for name, spec in (("own", own), ("run", run_cfg)):
        records = _predict(clip, tmp_path / name, "--tracker", str(spec), "--max-frames", "1", "--no-save")
        sure = [r for r in records if r["score"] >= 0.5]
        assert sure and all(r["track_id"] is not None for r in sure), name


def test_still_images_are_tracked_as_one_sequence(clip: Path, tmp_path: Path) -> None:
    import av
    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    with av.open(str(clip)) as c:
        for i, f in zip(range(3), c.decode(video=0), strict=False):
            cv2.imwrite(str(frames / f"f{i}.png"), f.to_ndarray(format="bgr24"))
    records = _predict(frames, tmp_path / "out", "--track")
    ids = {n: {r["track_id"] for r in records if r["image_id"] == n} - {None} for n in ("f0", "f1", "f2")}
    assert not ids["f0"] and ids["f1"]  # confirmed on their second frame (min_hits 2)
    assert ids["f2"] & ids["f1"]  # the same objects keep their ids on the next frame


@pytest.mark.parametrize(("content", "message"), [
    ("min_hits: 0\n", "{f}: min_hits: Input should be greater than or equal to 1"),
    ("tracking:\n  max_lost: 3\n", "{f}: tracking.max_lost: unknown key"),
    ("tracking:\n  high_score: 0.7\n  new_track_score: 0.6\n", "{f}: tracking.new_track_score: must be >= high_score"),
    ("- 1\n- 2\n", "{f}: expected a mapping of tracking settings"),
    ("min_hits: ${NO_SUCH_VARIABLE}\n", "{f}: min_hits: environment variable NO_SUCH_VARIABLE is not set"),
])
def test_bad_tracker_file_is_named_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       content: str, message: str) -> None:
    spec = tmp_path / "tracker.yaml"
    spec.write_text(content)
    assert main(["predict", "--model", str(demo_model_path()), "--source", str(tmp_path), "--out",
                 str(tmp_path / "out"), "--tracker", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.replace("{f}", str(spec)) in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_run_config_without_tracking_gives_the_defaults(tmp_path: Path) -> None:
    from pipeline.config import TrackingConfig, load_tracking

    run_cfg = tmp_path / "cameras.yaml"
    run_cfg.write_text("model: {path: demo://model}\ncameras: [{id: a, url: x.mp4}]\n")
    assert load_tracking(run_cfg) == TrackingConfig()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_tracking(empty) == TrackingConfig()


def test_missing_tracker_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--model", str(demo_model_path()), "--source", str(tmp_path), "--tracker",
                 str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.yaml: cannot read config" in err


def test_the_readme_tracking_example_runs_as_written(clip: Path) -> None:
    import re

    from engines import SegModel

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "pipeline.tracking" in b]
    assert len(blocks) == 1
    scope = {"model": SegModel(demo_model_path())}
    exec(blocks[0].replace('"clip.mp4"', repr(str(clip))), scope)  # noqa: S102 - our own README
    assert scope["annotated"].shape == (384, 640, 3) and any(i is not None for i in scope["ids"])
