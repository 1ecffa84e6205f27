"""Bad training inputs (data YAML fields, flags) are refused up front: one line naming the culprit, no
traceback, and no run folder left behind."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engines.data.spec import load_data_yaml, resolve_images
from engines.errors import ConfigError, DataError
from engines.train.config import TrainConfig
from pipeline.cli import main


def _dataset(root: Path, val: str = "images/val") -> Path:
    """Empty image files are enough: every check here runs before an image is decoded."""
    for rel in ("images/train/a.jpg", "images/val/b.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    y = root / "data.yaml"
    y.write_text(f"train: images/train\nval: {val}\nnames: [a]\n")
    return y


@pytest.mark.parametrize("field", ["time", "lr0", "weight_decay", "warmup_epochs", "warmup_bias_lr", "box",
                                   "cls", "dfl", "dice"])
def test_non_finite_numbers_are_refused(field):
    with pytest.raises(ConfigError, match=f"train.{field}: .*finite"):
        TrainConfig(data="d.yaml", **{field: math.inf})


def test_negative_seed_names_the_field():
    with pytest.raises(ConfigError, match="train.seed: must be >= 0"):
        TrainConfig(data="d.yaml", seed=-1)


def test_mask_ratio_larger_than_the_input_is_refused():
    TrainConfig(data="d.yaml", imgsz=64, hyp={"mask_ratio": 64})
    with pytest.raises(ConfigError, match=r"train.hyp.mask_ratio: must be <= imgsz \(64\), got 65"):
        TrainConfig(data="d.yaml", imgsz=64, hyp={"mask_ratio": 65})


@pytest.mark.parametrize(("argv", "flag"), [(["--time", "inf"], "--time"), (["--box", "inf"], "--box"),
                                             (["--seed", "-1"], "--seed"), (["--mask-ratio", "1000"], "--mask-ratio"),
                                             (["--imgsz", "1000000032"], "--imgsz")])
def test_cli_refuses_before_the_run_folder(tmp_path, capsys, argv, flag):
    y = _dataset(tmp_path / "ds")
    out = tmp_path / "run"
    rc = main(["train", "--data", str(y), "--device", "cpu", "--workers", "0", "--epochs", "1", "--imgsz", "64",
               "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert f"error: {flag}: " in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_yaml_syntax_error_says_what_and_where(tmp_path):
    y = tmp_path / "d.yaml"
    y.write_text("train: images/train\nval: images/val\nnames:\n\t- a\n")
    with pytest.raises(ConfigError, match=r"line 4, column 1: found character '\\t'") as e:
        load_data_yaml(y)
    assert "\n" not in str(e.value)


def test_val_source_that_is_no_image_source_is_refused_at_load(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "val.csv").write_text("x\n")
    with pytest.raises(DataError, match="val: .*val.csv is neither a folder, an image-list .txt nor an image"):
        load_data_yaml(_dataset(ds, val="val.csv"))


def test_data_yaml_not_utf8_is_a_one_line_error(tmp_path):
    y = _dataset(tmp_path)
    y.write_bytes(b"train: images/train\nval: images/val\nnames: [caf\xe9]\n")  # latin-1, as old editors save
    with pytest.raises(ConfigError, match=r"d(ata)?\.yaml: not UTF-8 text .*byte 0xe9"):
        load_data_yaml(y)


def test_image_list_not_utf8_is_a_one_line_error(tmp_path):
    (tmp_path / "list.txt").write_bytes(b"\xff\xfeimages/a.jpg\n")  # UTF-16, as Windows Notepad saves
    with pytest.raises(DataError, match=r"list\.txt: not UTF-8 text"):
        resolve_images([tmp_path / "list.txt"], split="train")


def test_relative_path_falls_back_to_the_cwd_as_ultralytics(tmp_path, monkeypatch):
    """Ultralytics takes a relative ``path:`` from the current folder; an Ultralytics YAML kept in a
    configs/ folder must still find its dataset. The YAML's folder wins when both exist."""
    _dataset(tmp_path / "datasets" / "ds")
    (tmp_path / "configs").mkdir()
    y = tmp_path / "configs" / "d.yaml"
    y.write_text("path: datasets/ds\ntrain: images/train\nval: images/val\nnames: [a]\n")
    monkeypatch.chdir(tmp_path)
    assert load_data_yaml(y).root == tmp_path / "datasets" / "ds"
    _dataset(tmp_path / "configs" / "datasets" / "ds")
    assert load_data_yaml(y).root == tmp_path / "configs" / "datasets" / "ds"


@pytest.mark.parametrize(("argv", "flag"), [(["--no-channels-last"], "--no-channels-last"),
                                             (["--channels-last"], "--channels-last"), (["--no-amp"], "--no-amp")])
def test_resume_names_the_flag_as_typed(tmp_path, capsys, argv, flag):
    rc = main(["train", "--resume", str(tmp_path / "last.pt"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: {flag}: a resumed run keeps" in err


def test_data_yaml_that_is_a_folder_says_so(tmp_path):
    _dataset(tmp_path)
    with pytest.raises(DataError, match=r"is a folder, not a data YAML \(e\.g\. .*data\.yaml in it\)"):
        load_data_yaml(tmp_path)


def test_missing_dataset_with_a_download_key_says_nothing_is_downloaded(tmp_path):
    y = tmp_path / "d.yaml"
    y.write_text("path: coco8-seg\ntrain: images/train\nval: images/val\nnames: [a]\n"
                 "download: https://example.com/coco8-seg.zip\n")
    with pytest.raises(DataError, match=r"dataset folder not found: .*; segpipe does not run the YAML's download:"):
        load_data_yaml(y)


def test_a_val_folder_without_images_is_refused_before_training(tmp_path, capsys):
    """It failed when the first epoch ended and was validated, an epoch's time later."""
    y = _dataset(tmp_path / "ds", val="images/empty")
    (tmp_path / "ds/images/empty").mkdir()
    out = tmp_path / "run"
    rc = main(["train", "--data", str(y), "--device", "cpu", "--workers", "0", "--epochs", "1", "--imgsz", "64",
               "--model", "yolov8n-seg.yaml", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.endswith(f"error: val: no images found in {tmp_path / 'ds/images/empty'}"), err
    assert not out.exists()
