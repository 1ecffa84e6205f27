"""SegModel: the Python entry point, on the Ultralytics fixture checkpoint and real coco128 images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines import SegModel
from engines.errors import ModelError, SourceError
from pipeline.cli import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"


@pytest.fixture(scope="module")
def model() -> SegModel:
    return SegModel(FIXTURE)


def test_predict_on_paths_arrays_and_lists(model: SegModel, coco128_images: list[Path]) -> None:
    import cv2

    img = cv2.imread(str(coco128_images[0]))
    by_path = model(coco128_images[0])
    by_array = model(img)
    assert len(by_path) == len(by_array) == 1
    a, b = by_path[0], by_array[0]
    assert len(a) > 0 and np.array_equal(a.boxes.numpy(), b.boxes.numpy())
    assert a.masks is not None and a.masks.shape[1:] == img.shape[:2] and a.masks.dtype.is_floating_point is False
    assert [n for n in a.labels] and all(isinstance(n, str) for n in a.labels)
    both = model([img, coco128_images[1]])
    assert len(both) == 2
    rles = a.to_rle()
    assert len(rles) == len(a) and rles[0]["size"] == list(img.shape[:2])
    assert a.plot(img).shape == img.shape


def test_stream_over_a_folder_and_a_video(model: SegModel, coco128_images: list[Path], tmp_path: Path) -> None:
    from tests.pipeline.media import write_clip

    clip = write_clip(tmp_path / "v.mp4", frames=3, fps=10, size=(160, 128))
    items = list(model.stream(clip))
    assert [it.frame for it, _ in items] == [0, 1, 2]
    assert all(d.orig_shape == (128, 160) for _, d in items)


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        ("missing.jpg", SourceError, "no such file"),
        ("empty_dir", SourceError, "no images or videos"),
        ("notes.txt", SourceError, "unsupported source"),
        ("broken.jpg", SourceError, "cannot decode image"),
        ("*.nomatch", SourceError, "glob matched no files"),
    ],
)
def test_bad_sources(model: SegModel, tmp_path: Path, source: str, error: type, match: str) -> None:
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(error, match=match):
        model(str(tmp_path / source))


def test_threads_reach_the_runtime() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        SegModel(FIXTURE, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_missing_and_corrupt_models(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        SegModel(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError):
        SegModel(tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="unknown model format"):
        SegModel(tmp_path / "model.h5")


def test_predict_cli_writes_annotated_images_and_coco_json(coco128_images: list[Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "imgs"
    src.mkdir()
    for p in coco128_images[:2]:
        (src / p.name).symlink_to(p)
    code = main(["predict", f"model={FIXTURE}", f"source={src}", f"out={tmp_path / 'out'}", "conf=0.25"])
    assert code == 0, capsys.readouterr().err
    preds = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert preds and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(preds[0])
    from pycocotools import mask as mask_utils

    m = mask_utils.decode({"size": preds[0]["segmentation"]["size"],
                           "counts": preds[0]["segmentation"]["counts"].encode()})
    assert m.sum() > 0
    assert len(list((tmp_path / "out").glob("*.jpg"))) == 2
    # Ultralytics' save=True (the default) was refused as an unknown --save; save=False is --no-save.
    assert main(["predict", f"model={FIXTURE}", f"source={src}", f"out={tmp_path / 'saved'}", "save=True"]) == 0
    assert len(list((tmp_path / "saved").glob("*.jpg"))) == 2
    assert main(["predict", f"model={FIXTURE}", f"source={src}", f"out={tmp_path / 'unsaved'}", "save=False"]) == 0
    assert [p.name for p in (tmp_path / "unsaved").iterdir()] == ["predictions.json"]


@pytest.mark.parametrize("fps", [10, 60])
def test_predict_cli_writes_a_video_at_its_own_frame_rate(tmp_path: Path, fps: int) -> None:
    """The annotated copy of a 10 fps clip was written at 25 fps: 2.5 times too fast."""
    import av

    from tests.pipeline.media import write_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=6, fps=fps, size=(160, 128))
    assert main(["predict", "--model", str(FIXTURE), "--source", str(clip), "--out", str(tmp_path / "out"),
                 "--imgsz", "128"]) == 0
    with av.open(str(tmp_path / "out" / "clip.mp4")) as c:
        stream = c.streams.video[0]
        assert stream.average_rate == fps and stream.frames == 6
        assert c.duration / 1e6 == pytest.approx(6 / fps, abs=0.5 / fps)


def test_predict_cli_starts_a_new_video_when_the_picture_size_changes(tmp_path: Path) -> None:
    """A source that changed size mid-way had its later frames cropped into (or stretched onto) the first
    size's video."""
    import av

    from tests.pipeline.media import write_clip

    small = write_clip(tmp_path / "a.ts", frames=4, fps=10, size=(96, 64))
    big = write_clip(tmp_path / "b.ts", frames=5, fps=10, size=(160, 128), start=4)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(small.read_bytes() + big.read_bytes())  # recordings joined end to end, as `cat` does
    out = tmp_path / "out"
    assert main(["predict", "--model", str(FIXTURE), "--source", str(joined), "--out", str(out), "--imgsz", "128"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["joined.mp4", "joined_part2.mp4", "predictions.json"]
    for name, (w, h, n) in {"joined.mp4": (96, 64, 4), "joined_part2.mp4": (160, 128, 5)}.items():
        with av.open(str(out / name)) as c:
            frames = list(c.decode(video=0))
        assert (frames[0].width, frames[0].height, len(frames)) == (w, h, n)


def test_predict_cli_takes_an_input_of_height_and_width(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--imgsz took one side only, where Ultralytics' predict takes [h, w] (a 16:9 camera at 384,640)."""
    from engines.backends.torch_backend import TorchBackend

    shapes, infer = list[tuple[int, ...]](), TorchBackend._infer

    def recorded(self: TorchBackend, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shapes.append(tuple(x.shape))
        return infer(self, x)

    monkeypatch.setattr(TorchBackend, "_infer", recorded)
    src = tmp_path / "a.jpg"
    cv2.imwrite(str(src), np.full((128, 160, 3), 90, np.uint8))
    assert main(["predict", "--model", str(FIXTURE), "--source", str(src), "--out", str(tmp_path / "out"),
                 "--imgsz", "64,128", "--no-save"]) == 0
    # the 160x128 image fits 64 rows first: 80x64, padded to the stride, as Ultralytics' LetterBox(auto=True)
    assert shapes == [(1, 3, 64, 96)]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--imgsz", "150"], 2, "--imgsz: must be a positive multiple of 32, got 150"),
    (["--imgsz", "-32"], 2, "--imgsz: must be a positive multiple of 32, got -32"),  # ran, finding nothing
    (["--imgsz", "384,100"], 2, "--imgsz: must be a positive multiple of 32, got 384,100"),
    (["--imgsz", "3x3x3"], 2, "--imgsz: expected N or H,W, got '3x3x3'"),
    (["--max-frames", "-3"], 2, "--max-frames: must be >= 0"),  # ran one frame
    (["--classes", "80"], 2, "--classes: 80 is not a class of "),  # ran, finding nothing
    (["--out", "{clip}"], 2, "--out: {clip} exists and is not a folder"),  # tracebacks
    (["--out", "{clip}/x"], 2, "--out: cannot create folder {clip}/x"),
    (["--half"], 2, "--half: fp16 inference needs a CUDA --device"),  # ran fp32 without a word
    (["--max-det", "0"], 2, "--max-det: expected an integer >= 1, got 0"),  # named max_det, not the flag
    (["--device", "gpu"], 2, "--device: expected auto, cpu, a GPU index"),
    (["--device", "cuda:x"], 2, "--device: expected auto, cpu, a GPU index"),  # torch's RuntimeError, a traceback
    (["--source", ""], 1, "source is empty"),  # predicted on every image and video of the current folder
    (["--source", "{clip}.missing.mp4"], 1, "no such file"),  # and left an empty --out behind
])
def test_predict_cli_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int,
                                 message: str) -> None:
    from tests.pipeline.media import write_clip

    clip = str(write_clip(tmp_path / "clip.mp4", frames=2, fps=10, size=(160, 128)))
    argv = ["predict", "--model", str(FIXTURE), "--source", clip, "--out", str(tmp_path / "out"),
            *(a.replace("{clip}", clip) for a in args)]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segpipe predict: error: ") and message.replace("{clip}", clip) in err[0]
    assert not (tmp_path / "out").exists()


def test_predict_cli_stream_that_gives_no_frame_never_shows_its_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.predict

    monkeypatch.setattr(engines.predict, "iter_source", lambda *a, **k: iter(()))  # it opened, then ended
    url = "rtsp://admin:hunter2@127.0.0.1:9/cam"
    assert main(["predict", "--model", str(FIXTURE), "--source", url, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "hunter2" not in err and "rtsp://***@127.0.0.1:9/cam: no frames were read" in err


def test_predict_cli_bounds_each_video_and_keeps_same_named_sources_apart(
        coco128_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--max-frames ended the whole run at the first video's limit; a.png beside a.jpg, or clip.mp4 in two
    folders, overwrote each other's annotated output and shared predictions.json image ids."""
    import cv2

    from tests.pipeline.media import write_clip

    src = tmp_path / "src"
    for sub in ("one", "two"):
        write_clip(src / sub / "clip.mp4", frames=4, fps=10, size=(160, 128))
    img = cv2.imread(str(coco128_images[0]))
    cv2.imwrite(str(src / "one" / "a.jpg"), img)
    cv2.imwrite(str(src / "one" / "a.png"), img)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(FIXTURE), "--source", f"{src}/*/*", "--out", str(out),
                 "--max-frames", "3"]) == 0
    assert capsys.readouterr().out.startswith("8 frame(s)")  # 2 images + 3 frames of each clip
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "a_2.jpg", "clip.mp4", "clip_2.mp4", "predictions.json"]
    ids = {r["image_id"] for r in json.loads((out / "predictions.json").read_text())}
    assert {"a", "a_2"} <= ids


def test_predict_stopped_by_sigterm_keeps_a_playable_video_and_its_predictions(tmp_path: Path) -> None:
    """Stopping predict (on a stream, the only way) with SIGTERM left an MP4 without its index and no
    predictions.json at all."""
    import av

    from tests.helpers import sigterm_once
    from tests.pipeline.media import write_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=1500, fps=25, size=(96, 64), gop=25)
    out = tmp_path / "out"
    code, err = sigterm_once(["predict", "--model", str(FIXTURE), "--source", str(clip), "--out", str(out),
                              "--imgsz", "64"], (out / "clip.mp4").is_file, "predict start its video", step=0.05,
                             settle_s=1.0)  # some frames in
    assert code == 143 and err.strip().splitlines()[-1] == "segpipe predict: terminated", err
    assert isinstance(json.loads((out / "predictions.json").read_text()), list)
    with av.open(str(out / "clip.mp4")) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert 0 < frames < 1500


def test_val_from_the_python_api(model: SegModel, coco128: Path, tmp_path: Path) -> None:
    # The fixture was trained on the first 8 coco128 images: validate on those.
    imgs = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:8]
    (tmp_path / "list.txt").write_text("\n".join(str(p) for p in imgs) + "\n")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(model.names))
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\ntrain: list.txt\nval: list.txt\nnames:\n{names}\n")
    metrics = model.val(data=str(tmp_path / "data.yaml"), imgsz=320, batch=8, verbose=False)
    d = metrics.as_dict()
    assert d["box.map50"] > 0.5 and d["seg.map50"] > 0.5


def test_predict_failing_half_way_leaves_no_partial_predictions(coco128_images: list[Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # predictions are written as they come (a stream predicted on for hours held them all in memory):
    # a source that fails after some frames leaves neither predictions.json nor its temp file
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(coco128_images[0], src / "a.jpg")
    (src / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(FIXTURE), "--source", str(src), "--out", str(out)]) == 1
    assert "cannot decode image" in capsys.readouterr().err
    assert not (out / "predictions.json").exists() and not (out / "predictions.json.tmp").exists()


def test_predict_runs_without_out_do_not_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # both wrote into runs/predict: the second run's predictions.json replaced the first's, beside its videos
    from tests.pipeline.media import write_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=2, fps=10, size=(160, 128))
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["predict", "--model", str(FIXTURE), "--source", str(clip)]) == 0
    outs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert outs == ["predict", "predict2"]
    assert all((tmp_path / "runs" / o / "predictions.json").is_file() for o in outs)
    assert capsys.readouterr().out.count("-> runs/predict") == 2
