"""segpipe predict on unusual but legitimate inputs: its outputs never replace its sources, every image is
annotated, and each image's predictions keep their own image id."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.label_writer import write_crop_image
from pipeline.cli import main
from tests.pipeline.media import write_clip

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"


def _predict(source: Path, out: Path, *args: str) -> int:
    return main(["predict", "--model", str(MODEL), "--source", str(source), "--out", str(out), "--imgsz", "64",
                 *args])  # a later --imgsz wins


@pytest.mark.parametrize("kind", ["image", "video"])
def test_an_annotated_output_never_overwrites_its_source(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         kind: str) -> None:
    """Predicted into their own folder, photo.jpg was replaced by its annotated copy and clip.mp4 (20
    frames) by the annotated video of the frames read, written while it was being read."""
    folder = tmp_path / "media"
    folder.mkdir()
    if kind == "image":
        source = folder / "photo.jpg"
        cv2.imwrite(str(source), np.full((48, 64, 3), 114, np.uint8))
    else:
        source = write_clip(folder / "clip.mp4", frames=4, fps=10, size=(64, 48))
    before = source.read_bytes()
    for src in (source, folder):
        assert _predict(src, folder) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"segpipe predict: error: --out: {source} is a source: its annotated copy would overwrite it "
            "(give another --out, or --no-save)"]
        assert source.read_bytes() == before and [p.name for p in folder.iterdir()] == [source.name]
    # not saving the annotated copies, or another name, is fine
    assert _predict(source, folder, "--no-save") == 0
    assert source.read_bytes() == before
    assert _predict(source, tmp_path / "out") == 0


def test_an_image_wider_than_a_jpeg_holds_is_annotated(tmp_path: Path) -> None:
    """A panorama wider than 65500 pixels, what libjpeg writes: cv2.imwrite failed without a word and the run
    reported 'annotated output' with no image written. It is shrunk to fit."""
    src = tmp_path / "src"
    src.mkdir()
    pano = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (6, 66000 // 256 + 1, 3))[:, :66000]
    cv2.imwrite(str(src / "pano.png"), pano)
    cv2.imwrite(str(src / "small.png"), pano[:, :64])
    out = tmp_path / "out"
    assert _predict(src, out) == 0
    annotated = cv2.imread(str(out / "pano.jpg"))
    assert annotated is not None and annotated.shape == (6, 65500, 3)
    assert cv2.imread(str(out / "small.jpg")).shape == (6, 64, 3)
    assert sorted(p.name for p in out.iterdir()) == ["pano.jpg", "predictions.json", "small.jpg"]


def test_a_crop_longer_than_a_jpeg_holds_is_written_shrunk(tmp_path: Path) -> None:
    """An object across a panorama: its crop failed libjpeg's size check (an AssertionError)."""
    band = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (4, 70000 // 256 + 1, 3))[:, :70000]
    write_crop_image(tmp_path / "crop.jpg", band)
    crop = cv2.imread(str(tmp_path / "crop.jpg"))
    assert crop is not None and crop.shape == (4, 65500, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crop.jpg"]


def test_each_image_keeps_its_own_image_id(coco128_images: list[Path], tmp_path: Path) -> None:
    """09.jpg and 9.jpg were both image 9 in predictions.json (their predictions mixed), and an image
    named ².jpg ('²'.isdigit(), but int('²') fails) ended the run with a ValueError traceback."""
    src = tmp_path / "src"
    src.mkdir()
    image = coco128_images[0]  # 000000000009.jpg: COCO's image 9
    for name in ("000000000009", "09", "9", "²", "٩"):
        shutil.copy(image, src / f"{name}.jpg")
    out = tmp_path / "out"
    assert _predict(src, out, "--imgsz", "320") == 0
    ids = [p["image_id"] for p in json.loads((out / "predictions.json").read_text())]
    # one id per image, each image's predictions under it alike (the same picture five times)
    assert ids and len(ids) % 5 == 0 and ids.count(9) == len(ids) // 5
    assert {i for i in ids if i != 9} == {"09", "9", "²", "٩"}
    for i in ("09", "9", "²", "٩"):
        assert ids.count(i) == len(ids) // 5


@pytest.mark.parametrize("glob", [False, True])
def test_a_folder_and_a_glob_take_its_pictures_only(tmp_path: Path, glob: bool,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A sub-folder b.jpg/ of the source folder was taken for a picture and reported missing, and a glob
    dir/* stopped at dir/notes.txt, which the folder itself skipped."""
    src = tmp_path / "src"
    (src / "b.jpg").mkdir(parents=True)
    (src / "notes.txt").write_text("not a picture")
    cv2.imwrite(str(src / "a.jpg"), np.full((48, 64, 3), 114, np.uint8))
    out = tmp_path / "out"
    assert _predict(Path(f"{src}/*") if glob else src, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "predictions.json"]
    if glob:
        assert _predict(Path(f"{src}/*.txt"), tmp_path / "out2") == 1
        assert capsys.readouterr().err.strip().endswith(f"{src}/*.txt: glob matched no images or videos")
