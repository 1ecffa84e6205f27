"""Folders the commands write their results into. Leaf module: imports nothing from segpipe."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def new_folder(folder: Path) -> Iterator[Path]:
    """Create ``folder`` (and its missing parents) and yield it. If the block fails, the folders this made
    are removed again while empty, deepest first: a command that fails before writing anything (a bad
    dataset, a model that does not load) leaves no empty folder behind, and whatever it wrote stays.
    ``OSError`` when the folder cannot be created."""
    made, f = [], folder
    while not f.exists() and f != f.parent:
        made.append(f)
        f = f.parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for f in made:
            try:
                f.rmdir()
            except OSError:  # not empty (or not ours to remove): it and its parents stay
                break
        raise
