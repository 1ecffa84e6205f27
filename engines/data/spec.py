"""Data YAML (Ultralytics layout) and the image <-> label file rule. Imports nothing from pipeline/.

A data YAML names a dataset root and its splits::

    path: ../datasets/coco128-seg   # relative to this YAML's folder, else to the current one (absolute allowed)
    train: images/train2017         # a folder of images, an image-list .txt, or a list of several
    val: images/train2017
    test:                           # optional
    names: {0: person, 1: bicycle}  # or a list; nc optional and checked against names

Labels live beside the images by Ultralytics' rule: the last ``/images/`` in an image path becomes
``/labels/`` and the suffix becomes ``.txt``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engines.errors import ConfigError, DataError

LOG = logging.getLogger("segpipe.data")

# What cv2.imread decodes; other suffixes in an image folder are ignored, as Ultralytics does.
IMG_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
_KNOWN_KEYS = frozenset({"path", "train", "val", "test", "names", "nc", "download", "channels"})


@dataclass(frozen=True, slots=True)
class DataSpec:
    """A parsed data YAML. Paths are absolute; each split is a tuple of sources (folder, .txt list or
    image file). ``test`` is empty when the YAML has none. ``names[i]`` is the name of class id ``i``."""

    root: Path
    train: tuple[Path, ...]
    val: tuple[Path, ...]
    test: tuple[Path, ...]
    names: tuple[str, ...]
    yaml_file: Path | None = None
    # A selection (select()): the label files' class ids kept (None: all), and every kept instance as
    # class 0 "item"; label_names are then the YAML's names, the ids the label files use.
    classes: tuple[int, ...] | None = None
    single_cls: bool = False
    label_names: tuple[str, ...] | None = None

    @property
    def nc(self) -> int:
        """The classes a model trained or scored on this data predicts."""
        return len(self.names)

    @property
    def label_nc(self) -> int:
        """The classes of the label files (the data YAML's)."""
        return len(self.label_names or self.names)

    def select(self, *, classes: Sequence[int] | None = None, single_cls: bool = False) -> DataSpec:
        """Ultralytics' ``classes`` and ``single_cls``: only instances of ``classes`` (ids of the data
        YAML) count, and with ``single_cls`` all of them are class 0, named "item" (the model then has one
        class). Without either, this spec. A selected spec selected again narrows: its classes are kept
        (intersected with ``classes``) and so is its single_cls. ConfigError ``classes`` for an id the YAML
        does not have, or a selection left with no class."""
        if classes is None and not single_cls:
            return self
        names = self.label_names or self.names
        keep = self.classes
        if classes is not None:
            ids = {int(c) for c in classes}
            bad = sorted(c for c in ids if not 0 <= c < len(names))
            if not ids or bad:
                raise ConfigError("classes", f"{bad[0] if bad else 'none'} is not a class of "
                                             f"{self.yaml_file or self.root} (ids 0..{len(names) - 1})")
            keep = tuple(sorted(ids if keep is None else ids & set(keep)))
            if not keep:
                raise ConfigError("classes", f"{sorted(ids)} and the earlier selection {list(self.classes or [])} "
                                             "have no class in common")
        single_cls = single_cls or self.single_cls
        return dataclasses.replace(self, names=("item",) if single_cls else names, classes=keep,
                                   single_cls=single_cls, label_names=names)

    def sources(self, split: str) -> tuple[Path, ...]:
        """The sources of ``split`` ("train", "val" or "test"); DataError when the YAML has none."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        srcs = getattr(self, split)
        if not srcs:
            raise DataError(f"{self.yaml_file or self.root}: no '{split}' split in the data YAML")
        return srcs


def _abs(p: Path) -> Path:
    # abspath, not resolve(): a symlinked image (convert links them) keeps its labels beside the link
    return Path(os.path.abspath(p))


def img2label_path(im_file: str | os.PathLike[str]) -> Path:
    """Ultralytics' rule: ``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (last ``/images/`` only)."""
    s = os.fspath(im_file)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        head, tail = s.rsplit(sa, 1)
        s = head + sb + tail
    return Path(s).with_suffix(".txt")


def load_data_yaml(path: str | os.PathLike[str]) -> DataSpec:
    """Parse and check a data YAML. ``train`` and ``val`` sources must exist; ``test`` is checked when
    used. Raises DataError for a missing file or folder, ConfigError (``file: key``) for a bad field."""
    file = _abs(Path(path).expanduser())
    if file.is_dir():  # the dataset's folder given for its YAML, a common slip
        yamls = sorted(file.glob("*.yaml")) + sorted(file.glob("*.yml"))
        hint = f" (e.g. {yamls[0]} in it)" if yamls else ""
        raise DataError(f"{file} is a folder, not a data YAML{hint}")
    if not file.is_file():
        raise DataError(f"data YAML not found: {file}")
    try:
        doc = yaml.safe_load(_read_text(file, "utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(str(file), _not_utf8(e)) from None
    except yaml.YAMLError as e:
        raise ConfigError(str(file), f"not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(str(file), "expected a mapping with path/train/val/names")
    unknown = sorted(set(map(str, doc)) - _KNOWN_KEYS)
    if unknown:  # exports (Roboflow, ...) add keys of their own; a typo in a required key fails below
        LOG.warning("%s: ignoring unknown keys %s", file, ", ".join(unknown))
    if doc.get("channels", 3) != 3:
        raise ConfigError(f"{file}: channels", f"only 3-channel images are supported, got {doc['channels']}")
    splits: dict[str, tuple[Path, ...]] = {}
    try:
        root = _root(file, doc.get("path"))
        names = _names(file, doc.get("names"), doc.get("nc"))
        for split in SPLITS:
            value = doc.get(split)
            if value is None or value == "" or value == []:
                if split != "test":
                    raise ConfigError(f"{file}: {split}", "missing (a folder, an image-list .txt, or a list)")
                splits[split] = ()
                continue
            splits[split] = _sources(file, split, value, root, must_exist=split != "test")
    except DataError as e:
        if not doc.get("download"):
            raise
        # Ultralytics fetches a missing dataset by this key; without a word here it reads as a typo in path
        raise DataError(f"{e}; segpipe does not run the YAML's download: fetch the dataset first") from None
    return DataSpec(root=root, train=splits["train"], val=splits["val"], test=splits["test"], names=names,
                    yaml_file=file)


def _read_text(file: Path, encoding: str) -> str:
    try:
        return file.read_text(encoding=encoding)
    except OSError as e:
        raise DataError(f"{file}: cannot read: {e.strerror or e}") from None


def _not_utf8(e: UnicodeDecodeError) -> str:
    # latin-1 from older editors, UTF-16 from Notepad: the decoder's own message names neither the file nor a fix
    return f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line with the cause and its place: str(e)'s first line is only the context ("while scanning
    for the next token"), the cause (a tab, an unclosed bracket) and the line number come after it."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if not problem:
        return str(e).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _root(file: Path, value: Any) -> Path:
    if value is None or value == "":
        return file.parent
    if not isinstance(value, str):
        raise ConfigError(f"{file}: path", f"expected a folder path, got {value!r}")
    given = Path(value).expanduser()
    root = _abs(given if given.is_absolute() else file.parent / given)
    if not root.is_dir() and not given.is_absolute() and _abs(given).is_dir():
        # Ultralytics takes a relative path from the current folder: its YAMLs, kept in a configs/
        # folder and run from the project's, find their datasets that way
        return _abs(given)
    if not root.is_dir():
        raise DataError(f"{file}: path: dataset folder not found: {root}")
    return root


def _names(file: Path, names: Any, nc: Any) -> tuple[str, ...]:
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise ConfigError(f"{file}: nc", f"expected a positive integer, got {nc!r}")
    if names is None:
        if nc is None:
            raise ConfigError(f"{file}: names", "missing (a list of class names or {id: name})")
        return tuple(f"class{i}" for i in range(nc))  # Ultralytics' rule when only nc is given
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise ConfigError(f"{file}: names", "mapping keys must be integer class ids") from None
        if ids != list(range(len(ids))):
            raise ConfigError(f"{file}: names", f"class ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        by_id = {int(k): v for k, v in names.items()}
        out = [by_id[i] for i in ids]
    elif isinstance(names, list):
        out = names
    else:
        raise ConfigError(f"{file}: names", f"expected a list or a mapping {{id: name}}, got {type(names).__name__}")
    if not out:
        raise ConfigError(f"{file}: names", "empty: a dataset needs at least one class")
    if nc is not None and nc != len(out):
        raise ConfigError(f"{file}: nc", f"nc={nc} but names has {len(out)} entries")
    return tuple(str(n) for n in out)


def _sources(file: Path, split: str, value: Any, root: Path, *, must_exist: bool) -> tuple[Path, ...]:
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        where = f"{file}: {split}" + (f"[{i}]" if isinstance(value, list) else "")
        if not isinstance(item, str) or not item:
            raise ConfigError(where, f"expected a folder or .txt path, got {item!r}")
        p = Path(item).expanduser()
        p = _abs(p if p.is_absolute() else root / p)
        if must_exist:
            _check_source(where, p)
        out.append(p)
    return tuple(out)


def _check_source(where: str, p: Path) -> None:
    # The kind too, at load, not when the split is first read: training reads val only after its first
    # epoch, and a val.csv would fail the run only then. Folders may still be empty here (resolve_images).
    if not p.exists():
        raise DataError(f"{where}: not found: {p}")
    if p.is_file() and p.suffix.lower() != ".txt" and p.suffix.lower() not in IMG_SUFFIXES:
        raise DataError(f"{where}: {p} is neither a folder, an image-list .txt nor an image")


def resolve_images(sources: Sequence[str | os.PathLike[str]], *, split: str = "data") -> tuple[list[Path], list[Path]]:
    """Expand sources into image files: ``(found, missing)``, ``found`` sorted.

    A folder contributes its images recursively; a ``.txt`` lists one image per line (relative paths
    are relative to the .txt's folder, ``./x.jpg`` included); an image path is itself. Listed images
    that do not exist go to ``missing``. Raises DataError for a source that does not exist or a
    listed file that is not an image.
    """
    found: set[Path] = set()
    missing: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            found.update(_abs(p) for p in src.rglob("*") if p.suffix.lower() in IMG_SUFFIXES and p.is_file())
        elif src.is_file() and src.suffix.lower() == ".txt":
            try:
                text = _read_text(src, "utf-8-sig")
            except UnicodeDecodeError as e:
                raise DataError(f"{src}: {_not_utf8(e)}") from None
            for lineno, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line:
                    continue
                p = Path(line).expanduser()
                p = _abs(p if p.is_absolute() else src.parent / p)
                if p.suffix.lower() not in IMG_SUFFIXES:
                    raise DataError(f"{src}:{lineno}: {line!r} is not an image (supported: "
                                    f"{', '.join(sorted(IMG_SUFFIXES))})")
                (found.add(p) if p.is_file() else missing.append(p))
        elif src.is_file() and src.suffix.lower() in IMG_SUFFIXES:
            found.add(_abs(src))
        elif src.exists():
            raise DataError(f"{split}: {src} is neither a folder, an image-list .txt nor an image")
        else:
            raise DataError(f"{split}: not found: {src}")
    return sorted(found), missing
