"""``segpipe predict --save-crop``: each object's box, enlarged as Ultralytics' ``save_one_box`` enlarges it,
cut from the unannotated frame into ``OUT/crops/CLASS/NAME.jpg``."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.label_writer import crop_folders
from engines.sources import iter_source
from pipeline.cli import main

MODEL = Path(__file__).resolve().parents[2] / "engines" / "assets" / "demo-seg.pt"
NAMES = ("vehicle", "person", "bicycle", "box", "bottle", "tool")  # the demo model's classes
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crops") / "clip.mp4"
    assert main(["synth", "video", "--out", str(path), "--seconds", "1", "--fps", "10", "--style", "traffic",
                 "--size", "320x240"]) == 0
    return path


def _imread(path: Path) -> np.ndarray:
    im = cv2.imread(str(path))
    assert im is not None, path
    return im


def _predict(source: Path, out: Path, *args: str) -> list[dict]:
    assert main(["predict", "--model", str(MODEL), "--source", str(source), "--out", str(out), *args]) == 0
    return json.loads((out / "predictions.json").read_text())


def _region(bbox: list[float], h: int, w: int) -> tuple[int, int, int, int]:
    """Ultralytics' save_one_box region for a predictions.json bbox (x, y, w, h): wh * 1.02 + 10 about the
    centre, in float32, truncated, clipped to the frame."""
    x, y, bw, bh = np.asarray(bbox, np.float32)
    cx, cy = x + bw / np.float32(2), y + bh / np.float32(2)
    hw, hh = (bw * np.float32(1.02) + np.float32(10)) / np.float32(2), (bh * np.float32(1.02) + np.float32(10)) / 2
    x1, y1, x2, y2 = (int(v) for v in (cx - hw, cy - hh, cx + hw, cy + hh))
    return min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)


def _expected(preds: list[dict], stem_of: dict[str, str]) -> dict[str, dict]:
    """crops/CLASS/FILE -> its record, named as Ultralytics names them: STEM.jpg, STEM-2.jpg, ..."""
    out: dict[str, dict] = {}
    seen: dict[tuple[str, int], int] = defaultdict(int)
    for r in preds:
        stem = stem_of[r["image_id"]]
        seen[stem, r["category_id"]] += 1
        n = seen[stem, r["category_id"]]
        out[f"{NAMES[r['category_id']]}/{stem}{'' if n == 1 else f'-{n}'}.jpg"] = r
    return out


@pytest.mark.parametrize("args", [[], ["--vid-stride", "3", "--classes", "1", "--no-save"]])
def test_video_crops_are_the_enlarged_boxes(clip: Path, tmp_path: Path, args: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """One crop per detection, in its class folder, named like the frame's label file, of the size of the
    enlarged, clipped box, cut from the unannotated frame."""
    out = tmp_path / "out"
    preds = _predict(clip, out, "--save-crop", *args)
    assert f"{len(preds)} crop(s) in crops/" in capsys.readouterr().out
    frames = {f"clip_{i:06d}": it.image for i, it in enumerate(iter_source(str(clip)))}
    expected = _expected(preds, {k: f"clip_{int(k[5:]) + 1}" for k in frames})
    written = sorted(str(p.relative_to(out / "crops")) for p in (out / "crops").rglob("*") if p.is_file())
    assert written == sorted(expected) and len(written) == len(preds) > 5
    assert any("-2.jpg" in f for f in written)  # several objects of a class in one frame
    if args:
        assert {f.split("/")[0] for f in written} == {"person"} and len(frames) == 10
        assert {r["image_id"] for r in preds} <= {"clip_000000", "clip_000003", "clip_000006", "clip_000009"}
    for file, r in expected.items():
        frame = frames[r["image_id"]]
        x1, y1, x2, y2 = _region(r["bbox"], *frame.shape[:2])
        crop = _imread(out / "crops" / file)
        assert crop.shape == (y2 - y1, x2 - x1, 3), file
        assert np.abs(crop.astype(int) - frame[y1:y2, x1:x2]).mean() < 3.0  # unannotated, BGR


def test_an_image_with_two_objects_of_a_class(clip: Path, tmp_path: Path) -> None:
    """A still image: crops/CLASS/still.jpg, still-2.jpg, ... as Ultralytics' increment_path names them,
    best first; no annotated output asked, no crop folder for a class not found."""
    frame = next(iter(iter_source(str(clip)))).image
    cv2.imwrite(str(tmp_path / "still.png"), frame)
    preds = _predict(tmp_path / "still.png", tmp_path / "out", "--save-crop", "--no-save")
    expected = _expected(preds, {"still": "still"})
    vehicles = [f for f in expected if f.startswith("vehicle/")]
    assert vehicles[:2] == ["vehicle/still.jpg", "vehicle/still-2.jpg"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["crops", "predictions.json"]
    assert sorted(p.name for p in (tmp_path / "out" / "crops").iterdir()) == sorted({f.split("/")[0] for f in expected})
    for file, r in expected.items():
        x1, y1, x2, y2 = _region(r["bbox"], *frame.shape[:2])
        assert _imread(tmp_path / "out" / "crops" / file).shape == (y2 - y1, x2 - x1, 3)


@pytest.mark.parametrize(("names", "folders"), [
    (["a/b", "../up", "..", "x\\y", "", "ok"], ["a_b", ".._up", "class_2", "x_y", "class_4", "ok"]),
    (["/etc/passwd", "c:d", "a_b", "a/b", "tab\there"], ["_etc_passwd", "c_d", "a_b", "a_b_3", "tab_here"]),
])
def test_class_names_stay_inside_crops(tmp_path: Path, names: list[str], folders: list[str]) -> None:
    assert crop_folders(names) == folders
    root = (tmp_path / "crops").resolve()
    assert all((root / f / "x.jpg").resolve().parent.parent == root for f in folders)


def test_crops_folder_that_is_a_file(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "crops").write_text("")
    argv = ["predict", "--model", str(MODEL), "--source", str(clip), "--out", str(out), "--save-crop"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"segpipe predict: error: --out: {out}/crops exists and is not a folder"]
    assert [p.name for p in out.iterdir()] == ["crops"]
