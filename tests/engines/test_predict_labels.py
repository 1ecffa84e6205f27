"""``segpipe predict --save-txt / --save-conf / --vid-stride``: YOLO-seg label files for the auto-labelling
loop, compared with Ultralytics' own ``save_txt`` (tests/fixtures/ultralytics/save_txt.json, made by
make_save_txt_fixture.py) and read back by segpipe's dataset loader."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.data import SegDataset, load_data_yaml, parse_label_file
from engines.data.polygons import rasterize
from engines.label_writer import label_lines, write_label_file
from engines.structures import Detections
from pipeline.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics"
MODEL = FIXTURES / "yolov8n-seg-coco8.pt"
REFERENCE = json.loads((FIXTURES / "save_txt.json").read_text())
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _predict(source: Path, out: Path, *args: str) -> None:
    p = REFERENCE["predict"]
    assert main(["predict", "--model", str(MODEL), "--source", str(source), "--out", str(out), "--imgsz",
                 str(p["imgsz"]), "--conf", str(p["conf"]), "--iou", str(p["iou"]), *args]) == 0


def _lines(text: str) -> list[tuple[int, np.ndarray, float]]:
    """(class, polygon (k, 2) normalised, confidence) per line of a --save-conf label file."""
    out = []
    for line in text.splitlines():
        v = line.split()
        out.append((int(v[0]), np.array(v[1:-1], np.float64).reshape(-1, 2), float(v[-1])))
    return out


def _masks(preds: list[dict], image_id: str) -> list[np.ndarray]:
    from pycocotools import mask as mask_utils

    return [mask_utils.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
            .astype(bool) for r in preds if str(r["image_id"]) == image_id]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _fill(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    """A pixel polygon filled as the dataset loader fills it (pixel centres inside)."""
    return rasterize([xy], h, w)[0].astype(bool)


def _to_outline(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance (pixels) from each of ``points`` (n, 2) to the closed polygon ``poly`` (k, 2)'s edges."""
    a, d = poly, np.roll(poly, -1, 0) - poly
    t = np.clip(((points[:, None] - a[None]) * d[None]).sum(-1) / np.maximum((d * d).sum(-1), 1e-12)[None], 0, 1)
    return np.sqrt(((points[:, None] - (a[None] + t[..., None] * d[None])) ** 2).sum(-1)).min(1)


# Measured on the fixture (8 objects of 1.7k-95k pixels, images of 640x426 and smaller): Ultralytics traces
# its mask through the boundary pixel centres (at the 320-pixel input unless retina_masks: half the frame
# resolution here), segpipe along the pixel edges of the frame mask. Vertex distances between the two
# outlines: mean <= 0.96 px / max 3.59 px (default), mean <= 0.60 px / max 2.07 px (retina); outline IoU
# >= 0.877 / 0.922, lowest on the smallest objects, whose boundary row is a larger share. Filled back,
# segpipe's outline gives the predicted mask (IoU >= 0.98; 1.0 without holes, which are filled as in
# Ultralytics), Ultralytics' 0.877-0.980 (default) and 0.922-0.990 (retina).
LIMITS = {"default": {"mean": 1.2, "max": 4.5, "iou": 0.85}, "retina": {"mean": 0.8, "max": 2.5, "iou": 0.9}}


@pytest.mark.parametrize("mode", ["default", "retina"])
def test_label_files_match_ultralytics_save_txt(coco128: Path, tmp_path: Path, mode: str) -> None:
    src = tmp_path / "images"
    src.mkdir()
    for name in REFERENCE["images"]:
        (src / name).symlink_to(coco128 / "images" / "train2017" / name)
    out = tmp_path / "out"
    _predict(src, out, "--save-txt", "--save-conf", "--no-save", *(["--retina-masks"] if mode == "retina" else []))
    preds = json.loads((out / "predictions.json").read_text())
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted(
        f"{Path(n).stem}.txt" for n, v in REFERENCE["images"].items() if v[mode])
    for name, texts in REFERENCE["images"].items():
        h, w = cv2.imread(str(src / name)).shape[:2]
        ours, theirs = _lines((out / "labels" / f"{Path(name).stem}.txt").read_text()), _lines(texts[mode])
        assert [c for c, _, _ in ours] == [c for c, _, _ in theirs], name
        assert np.allclose([s for _, _, s in ours], [s for _, _, s in theirs], atol=1e-3), name
        masks = _masks(preds, Path(name).stem.lstrip("0") or "0")
        for (_, a, _), (_, b, _), mask in zip(ours, theirs, masks, strict=True):
            a, b = a * (w, h), b * (w, h)  # to frame pixels
            d = np.concatenate((_to_outline(a, b), _to_outline(b, a)))
            lim = LIMITS[mode]
            assert d.mean() < lim["mean"] and d.max() < lim["max"], (name, d.mean(), d.max())
            ours_filled, theirs_filled = _fill(a, h, w), _fill(b, h, w)
            assert _iou(ours_filled, theirs_filled) > lim["iou"], name
            assert _iou(ours_filled, mask) > 0.98 and _iou(ours_filled, mask) >= _iou(theirs_filled, mask), name
            assert a.min() >= 0 and a[:, 0].max() <= w and a[:, 1].max() <= h


def test_saved_labels_train_again(coco128_images: list[Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The auto-labelling loop: predict --save-txt into a dataset folder (images/ beside labels/), then the
    data YAML of it loads; each object's polygon, filled as training fills it, is its predicted mask."""
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    for p in coco128_images[:8]:  # the fixture model's training images: real detections
        (ds / "images" / p.name).symlink_to(p)
    cv2.imwrite(str(ds / "images" / "blank.jpg"), np.full((240, 320, 3), 114, np.uint8))  # finds nothing
    _predict(ds / "images", ds, "--save-txt", "--no-save")
    assert "8 label file(s) in labels/" in capsys.readouterr().out
    assert not (ds / "labels" / "blank.txt").exists()  # as Ultralytics: no file for an image without objects
    from engines import SegModel

    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(SegModel(MODEL).names))
    (ds / "data.yaml").write_text(f"path: {ds}\ntrain: images\nval: images\nnames:\n{names}\n")
    spec = load_data_yaml(ds / "data.yaml")
    data = SegDataset.from_spec(spec, "train", imgsz=320, cache_dir=tmp_path / "cache")
    assert (data.stats.images, data.stats.labelled, data.stats.background, data.stats.corrupt) == (9, 8, 1, 0)
    assert data[0].masks.shape[0] == len(data.labels[0])  # a training sample builds from them
    preds = json.loads((ds / "predictions.json").read_text())
    checked = 0
    for lab in data.labels:
        h, w = lab.shape
        masks = _masks(preds, lab.im_file.stem.lstrip("0") or "0")
        assert len(masks) == len(lab)
        for seg, mask in zip(lab.segments, masks, strict=True):
            if mask.sum() >= 32 * 32:  # a reasonably sized object
                assert _iou(_fill(seg * (w, h), h, w), mask) > 0.9, lab.im_file
                checked += 1
    assert checked >= 10


def _clip(coco128: Path, folder: Path, frames: int) -> Path:
    """``folder/clip.mp4``: the reference's video image repeated (objects in every frame), at its frame rate."""
    from tests.pipeline.media import write_clip

    video = REFERENCE["video"]
    im = cv2.imread(str(coco128 / "images" / "train2017" / video["image"]))
    h, w = video["crop"]
    return write_clip(folder / "clip.mp4", images=[im[:h, :w]] * frames, fps=video["fps"])


def test_video_frames_are_labelled_by_frame_number_as_ultralytics_names_them(coco128: Path, tmp_path: Path) -> None:
    video = REFERENCE["video"]
    clip = _clip(coco128, tmp_path, video["frames"])
    _predict(clip, tmp_path / "out", "--save-txt", "--no-save")
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == video["labels"]["vid_stride_1"]


def test_vid_stride_keeps_the_source_frame_numbers(coco128: Path, tmp_path: Path) -> None:
    """Every 2nd frame of a 5-frame clip: frames 0, 2, 4, named by their own numbers in labels, predictions.json
    and tracking, and an annotated video at half the frame rate. (Ultralytics reads a file's frames 1 and 3
    and names their labels clip_1, clip_2: its count of frames read, the fixture's vid_stride_2.)"""
    import av

    video = REFERENCE["video"]
    assert video["labels"]["vid_stride_2"] == ["clip_1.txt", "clip_2.txt"]
    clip = _clip(coco128, tmp_path, video["frames"])
    out = tmp_path / "out"
    _predict(clip, out, "--save-txt", "--vid-stride", "2", "--track")
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["clip_1.txt", "clip_3.txt", "clip_5.txt"]
    preds = json.loads((out / "predictions.json").read_text())
    assert sorted({r["image_id"] for r in preds}) == ["clip_000000", "clip_000002", "clip_000004"]
    last = [r["track_id"] for r in preds if r["image_id"] == "clip_000004"]
    assert last and all(t is not None for t in last)  # the tracker took the gaps as 2 frames each
    with av.open(str(out / "clip.mp4")) as c:
        stream = c.streams.video[0]
        assert stream.average_rate == video["fps"] / 2 and stream.frames == 3
        assert c.duration / 1e6 == pytest.approx(video["frames"] / video["fps"], abs=0.25)


@pytest.mark.parametrize(("args", "message"), [
    (["--vid-stride", "0"], "--vid-stride: must be >= 1 (1: every frame), got 0"),  # Ultralytics reads no frame
    (["vid_stride=-2"], "--vid-stride: must be >= 1 (1: every frame), got -2"),
    (["--save-conf"], "--save-conf: adds the confidence to --save-txt's label lines: give --save-txt too"),
    (["save_conf=True"], "--save-conf: adds the confidence to --save-txt's label lines"),  # Ultralytics ignores it
])
def test_label_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    from tests.pipeline.media import write_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=2, fps=10, size=(160, 128))
    assert main(["predict", "--model", str(MODEL), "--source", str(clip), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segpipe predict: error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_an_image_named_like_a_video_frame_is_refused(coco128: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """clip_1.jpg beside clip.mp4: both would be labelled in labels/clip_1.txt, one overwriting the other."""
    src = tmp_path / "src"
    _clip(coco128, src, 2)
    cv2.imwrite(str(src / "clip_1.jpg"), np.full((64, 64, 3), 114, np.uint8))
    out = tmp_path / "out"
    assert main(["predict", "--model", str(MODEL), "--source", str(src), "--out", str(out), "--save-txt",
                 "--imgsz", "320"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"segpipe predict: error: {out}/labels/clip_1.txt would hold both image clip_1 and video clip's "
                   "frame 1 (counted from 1): predict them into separate --out folders"]
    assert not out.exists()  # refused before the model ran (tests/engines/test_predict_frames.py: --save-frames)
    # an image clip_0 (no frame is numbered 0) or clip_01 is not a frame's name
    (src / "clip_1.jpg").rename(src / "clip_01.jpg")
    assert main(["predict", "--model", str(MODEL), "--source", str(src), "--out", str(out), "--save-txt",
                 "--imgsz", "320", "--no-save"]) == 0


def test_labels_of_a_stopped_stream_are_whole(coco128: Path, tmp_path: Path) -> None:
    """SIGTERM while labelling a long clip: every label file there is complete, no temp file is left."""
    from tests.helpers import sigterm_once

    clip = _clip(coco128, tmp_path, 300)
    labels = tmp_path / "out" / "labels"
    code, err = sigterm_once(["predict", "--model", str(MODEL), "--source", str(clip), "--out",
                              str(tmp_path / "out"), "--imgsz", "320", "--save-txt", "--no-save"],
                             lambda: labels.is_dir() and len(list(labels.iterdir())) >= 3, "3 label files",
                             step=0.01)
    assert code == 143, err
    files = sorted(labels.iterdir())
    assert files and all(p.suffix == ".txt" for p in files)
    for p in files:
        cls, segs, _ = parse_label_file(p, nc=80)
        assert len(cls) == len(segs) > 0
    assert 0 < len(json.loads((tmp_path / "out" / "predictions.json").read_text()))


def test_vid_stride_reads_every_nth_frame_counted_in_the_source(tmp_path: Path) -> None:
    from engines.sources import iter_source
    from tests.pipeline.media import frame_index, write_clip

    clip = str(write_clip(tmp_path / "clip.mp4", frames=8, fps=10, size=(160, 128), crf=0))
    items = list(iter_source(clip, vid_stride=3))
    assert [it.frame for it in items] == [0, 3, 6] == [frame_index(it.image) for it in items]
    assert [it.frame for it in iter_source(clip, vid_stride=2, max_frames=5)] == [0, 2, 4]  # of the first 5
    assert [it.frame for it in iter_source(clip, vid_stride=20)] == [0]  # a clip shorter than the stride
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), np.zeros((8, 8, 3), np.uint8))
    assert [it.frame for it in iter_source(str(still), vid_stride=3)] == [None]  # images are not skipped


def _dets(masks: list[np.ndarray] | None, scores: list[float], boxes: list[list[float]] | None = None) -> Detections:
    n = len(scores)
    h, w = masks[0].shape if masks else (100, 200)
    return Detections(boxes=np.array(boxes or [[0, 0, 1, 1]] * n, np.float32).reshape(-1, 4),
                      scores=np.array(scores, np.float32), class_ids=np.arange(n, dtype=np.int64) + 3,
                      masks=None if masks is None else np.stack(masks), orig_shape=(h, w),
                      names=[str(i) for i in range(9)])


def test_label_lines_fill_back_into_their_masks() -> None:
    """Hand-made masks: two parts and a hole (one polygon, hole filled, as Ultralytics), a mask touching the
    frame's corner, a 1-pixel speck (no polygon: no line, as Ultralytics drops rows of < 3 points)."""
    h, w = 60, 90
    parts = np.zeros((h, w), bool)
    parts[5:25, 5:30] = True
    parts[12:18, 12:20] = False  # a hole
    parts[30:50, 50:80] = True
    corner = np.zeros((h, w), bool)
    corner[40:, :10] = True
    speck = np.zeros((h, w), bool)
    speck[2, 70] = True
    lines = label_lines(_dets([parts, corner, speck], [0.5, 0.25, 0.9]), save_conf=True)
    assert len(lines) == 2 and lines[0].startswith("3 ") and lines[1].startswith("4 ")
    assert lines[0].endswith(" 0.5") and lines[1].endswith(" 0.25")  # %g, as Ultralytics prints them
    filled = parts.copy()
    filled[12:18, 12:20] = True
    for line, mask in zip(lines, [filled, corner], strict=True):
        xy = np.array(line.split()[1:-1], np.float64).reshape(-1, 2)
        assert xy.min() >= 0 and xy.max() <= 1
        assert np.array_equal(_fill(xy * (w, h), h, w), mask)
    assert [line.rsplit(" ", 1)[0] for line in lines] == label_lines(_dets([parts, corner, speck], [0.5, 0.25, 0.9]))
    assert label_lines(_dets(None, [])) == []


def test_label_lines_without_masks_are_box_lines() -> None:
    dets = _dets(None, [0.75], [[20, 10, 60, 50]])  # a 200x100 frame
    assert label_lines(dets, save_conf=True) == ["3 0.2 0.3 0.2 0.4 0.75"]  # class xc yc w h conf


def test_a_label_file_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.label_writer

    path = tmp_path / "labels" / "a.txt"
    assert write_label_file(path, ["0 0 0 1 0 1 1"]) and path.read_text() == "0 0 0 1 0 1 1\n"

    def stopped(*_: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM, raised as one) between the write and the rename

    monkeypatch.setattr(engines.label_writer.os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        write_label_file(path, ["1 0 0 1 0 1 1"])
    monkeypatch.undo()
    assert path.read_text() == "0 0 0 1 0 1 1\n" and sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]
    assert not write_label_file(path, []) and not path.exists()  # no objects now: the earlier file goes
