"""JSON Lines file sink: one event per line, rotated by size, flushed on every batch and on close.

Rotation renames ``events.jsonl`` to ``events.jsonl.1`` (the previous ``.1`` becomes ``.2``, ...)
and keeps ``keep`` rotated files; a line is never split across files. Writes run on the sink's
worker thread, so a slow disk fills this sink's queue (oldest dropped, counted) and nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO

from engines.errors import SinkError
from pipeline.sinks.base import DropPolicy, Envelope, ThreadedSink, policy_for
from pipeline.sinks.config import JsonlSinkConfig

log = logging.getLogger(__name__)


def rotated_path(path: Path, index: int) -> Path:
    """``path`` with ``.index`` appended (``events.jsonl.2``); index 0 is the live file."""
    return path if index == 0 else path.with_name(f"{path.name}.{index}")


class JsonlSink(ThreadedSink):
    """Append event lines to ``path``; rotate before a line would take it past ``max_bytes``."""

    def __init__(self, *, name: str, path: Path, policy: DropPolicy, max_bytes: int = 100 * 2**20,
                 keep: int = 5) -> None:
        super().__init__(name=name, policy=policy)
        self.path, self.max_bytes, self.keep = Path(path), max_bytes, keep
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO = open(self.path, "ab")  # noqa: SIM115 - lives until close_resources
        except OSError as e:
            raise SinkError(f"jsonl sink {name!r}: cannot open {self.path}: {e.strerror}") from None
        self._size = self._file.tell()
        self.start()

    @classmethod
    def from_config(cls, cfg: JsonlSinkConfig) -> JsonlSink:
        return cls(name=cfg.sink_name, path=cfg.path, max_bytes=cfg.max_bytes, keep=cfg.keep,
                   policy=policy_for("jsonl", maxsize=cfg.queue_size, overflow=cfg.on_full))

    def _rotate(self) -> None:
        self._file.close()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            rotated_path(self.path, self.keep).unlink(missing_ok=True)
            for i in range(self.keep - 1, -1, -1):
                src = rotated_path(self.path, i)
                if src.exists():
                    src.rename(rotated_path(self.path, i + 1))
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def write_batch(self, envs: list[Envelope]) -> None:
        for env in envs:
            line = env.payload + b"\n"
            try:
                if self._size and self._size + len(line) > self.max_bytes:
                    self._rotate()
                self._file.write(line)
            except OSError as e:  # disk full, file removed under us: count it, keep going
                self.counters.error("io")
                self.counters.dropped(env.camera_id, "write_error")
                log.warning("jsonl sink %s: write to %s failed: %s", self.name, self.path, e.strerror)
                if self._file.closed:
                    self._file = open(self.path, "ab")  # noqa: SIM115
                    self._size = self._file.tell()
                continue
            self._size += len(line)
            self.counters.sent(env.camera_id)
        self._file.flush()

    def close_resources(self) -> None:
        self._file.flush()
        self._file.close()
