"""Signals around the steps that put a command's result in place."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from engines.errors import Terminated
from engines.export.base import atomic_path
from engines.files import signals_held
from pipeline.cli.common import sigterm_interrupts


def test_a_sigterm_while_held_is_acted_on_when_the_block_ends() -> None:
    """Raised where it landed, it stopped the sweep of the temp folder half-way."""
    steps = []
    with pytest.raises(Terminated), sigterm_interrupts():
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("after the signal")
        steps.append("after the block")
    assert steps == ["after the signal"]


def test_signals_held_leaves_the_handlers_as_they_were() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with signals_held():
        pass
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_sigterm_a_library_swallowed_still_ends_the_command() -> None:
    """onnxslim imports ONNX Runtime under a bare ``except:``: a SIGTERM landing there was lost, the
    export went on and the command exited 0."""
    with pytest.raises(Terminated), sigterm_interrupts():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException:  # noqa: BLE001 - what the library does
            pass


def test_a_sigterm_in_the_export_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    with pytest.raises(Terminated), sigterm_interrupts():
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"model")
            os.kill(os.getpid(), signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []


def test_a_sigterm_as_the_temp_folder_is_swept_leaves_the_output_whole_and_no_temp_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised inside the sweep, it left the ``.m.onnx.XXXX`` folder beside the finished export."""
    import shutil

    rmtree, sent = shutil.rmtree, list[object]()

    def signalled_rmtree(path: str | Path, *args: object, **kwargs: object) -> None:
        if not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGTERM)
        rmtree(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "rmtree", signalled_rmtree)
    out = tmp_path / "m.onnx"
    with pytest.raises(Terminated), sigterm_interrupts():
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"model")
    assert sent and [p.name for p in tmp_path.iterdir()] == ["m.onnx"] and out.read_bytes() == b"model"
