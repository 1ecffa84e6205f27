"""Folders the commands write their results into. Leaf module: imports nothing from segpipe."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType


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


@contextmanager
def signals_held(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT are noted, not acted on; the first one noted is handed to its
    handler when the block ends. For the few steps that put a finished result in place and sweep up its
    temp files: a Ctrl-C or ``kill`` landing there (raised as an exception by ``sigterm_interrupts``)
    would stop the sweep half-way and leave the temp folder behind. Blocking the signal with
    ``pthread_sigmask`` would not do: another thread (torch's, ONNX Runtime's) takes it and Python still
    runs the handler in the main thread. Handlers can only be set from the main thread; elsewhere the
    block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[tuple[int, FrameType | None]] = []
    previous = {s: signal.signal(s, lambda n, f: noted.append((n, f))) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            # None: a handler set outside Python (an embedding program); the default is the nearest
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if noted:
            n, frame = noted[0]
            handler = previous[n]
            if callable(handler):
                handler(n, frame)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), n)  # the default action (the process ends), now that the sweep is done
