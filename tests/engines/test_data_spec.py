"""Data YAML parsing, split sources, and the images -> labels path rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engines.data.spec import img2label_path, load_data_yaml, resolve_images
from engines.errors import ConfigError, DataError


def _tree(root: Path) -> Path:
    """A dataset folder with two image folders (one nested) and a list file; images are empty files
    (spec code never decodes them)."""
    for rel in ("images/train/a.jpg", "images/train/sub/b.png", "images/train/notes.md", "images/val/c.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    (root / "list.txt").write_text("./images/train/a.jpg\nimages/val/c.jpg\n\nimages/val/gone.jpg\n")
    return root


def _yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_coco128_yaml(coco128):
    spec = load_data_yaml(coco128 / "coco128-seg.yaml")
    assert spec.root == coco128
    assert spec.train == (coco128 / "images" / "train2017",)
    assert spec.val == spec.train and spec.test == ()
    assert spec.nc == 80 and spec.names[0] == "person" and spec.names[79] == "toothbrush"


def test_relative_path_list_sources_and_dict_names(tmp_path):
    _tree(tmp_path / "ds")
    (tmp_path / "cfg").mkdir()
    y = _yaml(tmp_path / "cfg" / "d.yaml",
              "path: ../ds\ntrain: [images/train, list.txt]\nval: images/val\nnames: {1: b, 0: a}\nnc: 2\n")
    spec = load_data_yaml(y)
    root = tmp_path / "ds"
    assert spec.root == root and spec.yaml_file == y
    assert spec.train == (root / "images/train", root / "list.txt")
    assert spec.names == ("a", "b")
    found, missing = resolve_images(spec.train, split="train")
    assert found == sorted([root / "images/train/a.jpg", root / "images/train/sub/b.png", root / "images/val/c.jpg"])
    assert missing == [root / "images/val/gone.jpg"]
    with pytest.raises(DataError, match="no 'test' split"):
        spec.sources("test")


def test_path_defaults_to_yaml_folder_and_absolute_sources(tmp_path):
    _tree(tmp_path)
    y = _yaml(tmp_path / "d.yaml", f"train: {tmp_path / 'images/train'}\nval: images/val\nnames: [x]\n"
                                   "test: not-there.txt\n")
    spec = load_data_yaml(y)
    assert spec.root == tmp_path and spec.val == (tmp_path / "images/val",)
    assert spec.test == (tmp_path / "not-there.txt",)  # test is checked when used, not at load
    with pytest.raises(DataError, match="not found"):
        resolve_images(spec.test, split="test")


@pytest.mark.parametrize(("text", "error", "match"), [
    ("train: images/train\nval: images/val\n", ConfigError, "names: missing"),
    ("train: images/train\nnames: [a]\n", ConfigError, "val: missing"),
    ("val: images/val\nnames: [a]\n", ConfigError, "train: missing"),
    ("train: images/train\nval: images/val\nnames: [a, b]\nnc: 3\n", ConfigError, "nc=3 but names has 2"),
    ("train: images/train\nval: images/val\nnames: {0: a, 2: c}\n", ConfigError, "without gaps"),
    ("train: images/train\nval: images/val\nnames: {x: a}\n", ConfigError, "integer class ids"),
    ("train: images/train\nval: images/val\nnames: []\n", ConfigError, "empty"),
    ("train: images/train\nval: images/val\nnames: person\n", ConfigError, "list or a mapping"),
    ("train: images/train\nval: images/val\nnc: -1\n", ConfigError, "nc: expected a positive integer"),
    ("train: images/train\nval: images/nope\nnames: [a]\n", DataError, "val: not found"),
    ("train: [images/train, images/nope]\nval: images/val\nnames: [a]\n", DataError, r"train\[1\]: not found"),
    ("path: nowhere\ntrain: images/train\nval: images/val\nnames: [a]\n", DataError, "dataset folder not found"),
    ("train: images/train\nval: images/val\nnames: [a]\nchannels: 1\n", ConfigError, "channels"),
    ("train: [images/train\n", ConfigError, "not valid YAML"),
    ("- a\n- b\n", ConfigError, "expected a mapping"),
])
def test_bad_yaml(tmp_path, text, error, match):
    _tree(tmp_path)
    with pytest.raises(error, match=match) as e:
        load_data_yaml(_yaml(tmp_path / "bad.yaml", text))
    assert str(tmp_path / "bad.yaml") in str(e.value) or error is DataError
    assert "\n" not in str(e.value)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(DataError, match="data YAML not found"):
        load_data_yaml(tmp_path / "none.yaml")


def test_nc_only_gives_numbered_names(tmp_path):
    _tree(tmp_path)
    spec = load_data_yaml(_yaml(tmp_path / "d.yaml", "train: images/train\nval: images/val\nnc: 3\n"))
    assert spec.names == ("class0", "class1", "class2")


@pytest.mark.parametrize(("image", "label"), [
    ("/d/images/train/a.jpg", "/d/labels/train/a.txt"),
    ("/d/images/x/images/b.PNG", "/d/images/x/labels/b.txt"),  # last /images/ only
    ("/d/images/sub/c.d.jpeg", "/d/labels/sub/c.d.txt"),
    ("/d/pics/e.jpg", "/d/pics/e.txt"),  # no /images/: label beside the image
])
def test_img2label_path(image, label):
    assert img2label_path(image.replace("/", os.sep)) == Path(label.replace("/", os.sep))


def test_resolve_images_errors(tmp_path):
    (tmp_path / "list.txt").write_text("a.jpg\nclip.mp4\n")
    with pytest.raises(DataError, match=r"list\.txt:2: 'clip\.mp4' is not an image"):
        resolve_images([tmp_path / "list.txt"], split="val")
    (tmp_path / "file.csv").write_text("x")
    with pytest.raises(DataError, match="neither a folder"):
        resolve_images([tmp_path / "file.csv"], split="val")
    with pytest.raises(DataError, match="val: not found"):
        resolve_images([tmp_path / "absent"], split="val")


def test_symlinked_images_keep_their_own_labels(tmp_path):
    """Images linked into a dataset (convert's default) are not resolved to the link target."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jpg").write_bytes(b"")
    (tmp_path / "ds/images/t").mkdir(parents=True)
    (tmp_path / "ds/images/t/a.jpg").symlink_to(tmp_path / "src" / "a.jpg")
    found, _ = resolve_images([tmp_path / "ds/images/t"])
    assert found == [tmp_path / "ds/images/t/a.jpg"]
    assert img2label_path(found[0]) == tmp_path / "ds/labels/t/a.txt"


def test_select_narrows_a_selection_and_keeps_its_single_cls(tmp_path):
    (tmp_path / "images").mkdir()
    data = tmp_path / "d.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames: [a, b, c, d]\n")
    spec = load_data_yaml(data)
    assert spec.select() is spec
    picked = spec.select(classes=[2, 0, 2])
    assert (picked.names, picked.classes, picked.label_nc, picked.nc) == (("a", "b", "c", "d"), (0, 2), 4, 4)
    # selecting a selected spec again narrows it (validate() of a single_cls model selects once more)
    one = picked.select(single_cls=True)
    assert (one.names, one.classes, one.single_cls, one.label_names) == (("item",), (0, 2), True, ("a", "b", "c", "d"))
    narrower = one.select(classes=[2, 3])
    assert (narrower.classes, narrower.single_cls) == ((2,), True)
    with pytest.raises(ConfigError, match=r"\[1\] and the earlier selection \[0, 2\] have no class in common"):
        picked.select(classes=[1])
    with pytest.raises(ConfigError, match=r"4 is not a class of .*d.yaml \(ids 0..3\)"):
        spec.select(classes=[1, 4])
