"""``segpipe predict --save-frames``: each predicted video frame saved beside its ``--save-txt`` label file,
so that the predict output is a dataset ``train`` reads (the auto-labelling loop, for videos)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.data import SegDataset, load_data_yaml, parse_label_file
from engines.label_writer import write_frame_image
from engines.sources import iter_source
from pipeline.cli import main
from tests.engines.test_predict_labels import MODEL, REFERENCE, _fill, _iou, _masks, _predict
from tests.pipeline.media import frame_index, write_clip

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _moving_clip(coco128: Path, path: Path, *, frames: int, blank: int = 0) -> Path:
    """The reference's video image sliding 8 px a frame across a grey canvas (so each frame's labels are
    its own), then ``blank`` grey frames (nothing to find: background)."""
    video = REFERENCE["video"]
    h, w = video["crop"]
    im = cv2.imread(str(coco128 / "images" / "train2017" / video["image"]))[:h, :w]
    images = []
    for i in range(frames + blank):
        canvas = np.full((h, w + 8 * frames, 3), 114, np.uint8)
        if i < frames:
            canvas[:, 8 * i:8 * i + w] = im
        images.append(canvas)
    return write_clip(path, images=images, fps=video["fps"])


def _data_yaml(ds: Path) -> Path:
    from engines import SegModel

    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(SegModel(MODEL).names))
    (ds / "data.yaml").write_text(f"path: {ds}\ntrain: images\nval: images\nnames:\n{names}\n")
    return ds / "data.yaml"


def test_video_frames_and_labels_are_a_dataset_that_trains(coco128: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """predict --save-txt --save-frames on a video: OUT/images + OUT/labels load as a dataset, each frame
    as the model saw it, its labels filled back are its predicted masks, and a training epoch runs on it."""
    clip = _moving_clip(coco128, tmp_path / "clip.mp4", frames=4, blank=2)
    out = tmp_path / "out"
    _predict(clip, out, "--save-txt", "save_frames=True")  # Ultralytics' spelling; annotated video too
    assert "4 label file(s) in labels/, 6 frame image(s) in images/" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"clip_{i}.jpg" for i in range(1, 7)]
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"clip_{i}.txt" for i in range(1, 5)]
    assert (out / "clip.mp4").is_file()
    shown = [it.image for it in iter_source(str(clip))]  # the frames the model was given
    for i, frame in enumerate(shown):
        saved = cv2.imread(str(out / "images" / f"clip_{i + 1}.jpg"))
        assert saved.shape == frame.shape and np.abs(saved.astype(int) - frame).mean() < 1.5  # unannotated

    data = SegDataset.from_spec(load_data_yaml(_data_yaml(out)), "train", imgsz=320, cache_dir=tmp_path / "cache")
    # the blank frames are background samples: no label file, as the loader reads an image without one
    assert (data.stats.images, data.stats.labelled, data.stats.background, data.stats.corrupt) == (6, 4, 2, 0)
    preds = json.loads((out / "predictions.json").read_text())
    checked = 0
    for lab in data.labels:
        frame = int(lab.im_file.stem.rsplit("_", 1)[1]) - 1  # label names count from 1, predictions.json from 0
        h, w = lab.shape
        assert (h, w) == shown[frame].shape[:2]
        masks = _masks(preds, f"clip_{frame:06d}")
        assert len(masks) == len(lab)
        for seg, mask in zip(lab.segments, masks, strict=True):
            if mask.sum() >= 32 * 32:
                assert _iou(_fill(seg * (w, h), h, w), mask) > 0.9, lab.im_file
                checked += 1
    assert checked >= 8

    argv = ["train", f"--data={out / 'data.yaml'}", "--model", str(MODEL), "--epochs=1", "--imgsz=64", "--batch=2",
            "--nbs=2", "--workers=0", "--device=cpu", f"--out={tmp_path / 'run'}", "--no-plots", "--no-val"]
    assert main(argv) == 0
    assert (tmp_path / "run" / "weights" / "last.pt").is_file()


@pytest.mark.parametrize(("stored_as", "edit", "shape"), [
    ("sideways", ["-c", "copy", "-metadata:s:v:0", "rotate=90"], (500, 380)),  # a phone's clip
    ("squeezed", ["-vf", "setsar=4/3", "-c:v", "libx264", "-pix_fmt", "yuv420p"], (500, 381)),  # 286 shown 381 wide
])
def test_a_saved_frame_is_the_picture_shown(coco128: Path, tmp_path: Path, ffmpeg: str, stored_as: str,
                                             edit: list[str], shape: tuple[int, int]) -> None:
    """A rotated clip's frames are saved upright, a non-square-pixel clip's at display width: the picture
    the model was given, whose sides the labels' coordinates are fractions of."""
    video = REFERENCE["video"]
    h, w = video["crop"]
    im = cv2.imread(str(coco128 / "images" / "train2017" / video["image"]))[:h, :w]
    picture = np.rot90(im, -1) if stored_as == "sideways" else cv2.resize(im, (286, h), interpolation=cv2.INTER_AREA)
    stored = write_clip(tmp_path / "stored.mp4", images=[np.ascontiguousarray(picture)] * 2, fps=10)
    clip = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(stored), *edit, str(clip)], check=True)
    out = tmp_path / "out"
    _predict(clip, out, "--save-txt", "--save-frames", "--no-save")
    shown = [it.image for it in iter_source(str(clip))]
    preds = json.loads((out / "predictions.json").read_text())
    for i, frame in enumerate(shown):
        saved = cv2.imread(str(out / "images" / f"clip_{i + 1}.jpg"))
        assert saved.shape[:2] == frame.shape[:2] == shape
        assert np.abs(saved.astype(int) - frame).mean() < 1.5
        cls, segs, _ = parse_label_file(out / "labels" / f"clip_{i + 1}.txt", nc=80)
        masks = _masks(preds, f"clip_{i:06d}")
        assert len(segs) == len(masks) > 0
        for seg, mask in zip(segs, masks, strict=True):
            assert mask.shape == shape
            if mask.sum() >= 32 * 32:
                assert _iou(_fill(seg * shape[::-1], *shape), mask) > 0.9


def test_only_predicted_frames_are_saved(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--vid-stride 3 --max-frames 8 of a 10-frame clip: source frames 0, 3, 6 are saved, by their own
    numbers, also where nothing was found (synthetic frames: background), with --track and --no-save. Still
    images are on disk already: not copied."""
    src = tmp_path / "src"
    write_clip(src / "clip.mp4", frames=10, fps=10, size=(160, 128), crf=0)
    cv2.imwrite(str(src / "still.png"), np.full((64, 64, 3), 114, np.uint8))
    out = tmp_path / "out"
    _predict(src, out, "--save-frames", "--vid-stride", "3", "--max-frames", "8", "--track", "--no-save")
    assert "frame image(s) in images/" in capsys.readouterr().out
    saved = sorted((out / "images").iterdir())
    assert [p.name for p in saved] == ["clip_1.jpg", "clip_4.jpg", "clip_7.jpg"]
    assert [frame_index(cv2.imread(str(p))) for p in saved] == [0, 3, 6]
    assert not (out / "labels").exists() and sorted(p.name for p in out.iterdir()) == ["images", "predictions.json"]


def test_frame_images_of_a_stopped_stream_are_whole(coco128: Path, tmp_path: Path) -> None:
    """SIGTERM while saving a long clip's frames: every image there decodes whole at the frame's size and has
    its label file (written first: a frame with objects is never left looking like background), no temp file."""
    from tests.engines.test_predict_labels import _clip
    from tests.helpers import sigterm_once

    clip = _clip(coco128, tmp_path, 300)  # objects in every frame
    out = tmp_path / "out"
    images = out / "images"
    code, err = sigterm_once(["predict", "--model", str(MODEL), "--source", str(clip), "--out", str(out),
                              "--imgsz", "320", "--save-txt", "--save-frames", "--no-save"],
                             lambda: images.is_dir() and len(list(images.iterdir())) >= 3, "3 frame images",
                             step=0.01)
    assert code == 143, err
    files = sorted(images.iterdir())
    assert files and all(p.suffix == ".jpg" for p in files)
    assert all(p.suffix == ".txt" for p in (out / "labels").iterdir())
    h, w = REFERENCE["video"]["crop"]
    for p in files:
        assert cv2.imread(str(p)).shape == (h, w, 3)
        cls, segs, _ = parse_label_file(out / "labels" / f"{p.stem}.txt", nc=80)
        assert len(cls) == len(segs) > 0
    assert len(list((out / "labels").iterdir())) - len(files) in (0, 1)  # a label file written, its frame not yet


def test_a_frame_image_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.label_writer

    path = tmp_path / "images" / "clip_1.jpg"
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[10:30, 20:50] = (40, 200, 240)
    write_frame_image(path, frame)
    assert np.abs(cv2.imread(str(path)).astype(int) - frame).mean() < 3.0  # JPEG, not lossless

    def stopped(*_: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM, raised as one) between the write and the rename

    monkeypatch.setattr(engines.label_writer.os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        write_frame_image(path, np.full((48, 64, 3), 255, np.uint8))
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["clip_1.jpg"]
    assert np.abs(cv2.imread(str(path)).astype(int) - frame).mean() < 3.0  # the earlier frame, whole


@pytest.mark.parametrize("flags", [["--save-frames"], ["--save-txt", "--save-frames"]])
def test_a_frame_image_never_overwrites_a_source_image(coco128: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], flags: list[str]) -> None:
    """clip.mp4 and clip_1.jpg in ds/images, predicted into ds: clip's frame 1 would be ds/images/clip_1.jpg,
    the source image itself (and its label file the image's). Refused before anything is written."""
    from tests.engines.test_predict_labels import _clip

    ds = tmp_path / "ds"
    _clip(coco128, ds / "images", 2)
    still = ds / "images" / "clip_1.jpg"
    cv2.imwrite(str(still), np.full((64, 64, 3), 114, np.uint8))
    before = still.read_bytes()
    assert main(["predict", "--model", str(MODEL), "--source", str(ds / "images"), "--out", str(ds), "--imgsz",
                 "320", *flags]) == 1
    files = [f"{ds}/labels/clip_1.txt and "] * ("--save-txt" in flags) + [f"{ds}/images/clip_1.jpg"]
    assert capsys.readouterr().err.strip().splitlines() == [
        f"segpipe predict: error: {''.join(files)} would hold both image clip_1 and video clip's frame 1 (counted "
        "from 1): predict them into separate --out folders"]
    assert still.read_bytes() == before and sorted(p.name for p in ds.iterdir()) == ["images"]
    assert sorted(p.name for p in (ds / "images").iterdir()) == ["clip.mp4", "clip_1.jpg"]


@pytest.mark.parametrize(("blocked", "args", "code", "message"), [
    ("images", ["--save-frames"], 2, "--out: {out}/images exists and is not a folder"),
    ("labels", ["--save-txt"], 2, "--out: {out}/labels exists and is not a folder"),
    # a frame that cannot be written (as a full disk): its temp file's name taken by a folder
    ("images/clip_1.jpg.tmp/", ["--save-frames"], 2, "--out: cannot write clip_1's files into {out}: Is a directory"),
    (None, ["--save-frames", "--source", "{tmp}/none.mp4"], 1,
     "{tmp}/none.mp4: no such file, folder, glob or stream URL"),
])
def test_frame_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], blocked: str | None,
                             args: list[str], code: int, message: str) -> None:
    """One line, a non-zero exit, and no predictions.json (nor a folder made) left."""
    clip = write_clip(tmp_path / "clip.mp4", frames=2, fps=10, size=(160, 128))
    out = tmp_path / "out"
    if blocked:  # a file where a folder goes, or a folder where a file goes
        (out / blocked).parent.mkdir(parents=True)
        if blocked.endswith("/"):
            (out / blocked).mkdir()
        else:
            (out / blocked).write_text("")
    argv = ["predict", "--model", str(MODEL), "--source", str(clip), "--out", str(out), "--imgsz", "320",
            *(a.format(tmp=tmp_path) for a in args)]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"segpipe predict: error: {message.format(out=out, tmp=tmp_path)}"]
    if blocked:
        assert [p.name for p in out.iterdir()] == [blocked.split("/")[0]]
    else:
        assert not out.exists()
