"""The segpipe exception tree. Leaf module: imports nothing from segpipe.

User mistakes raise a subclass of ``SegpipeError``; the CLI prints its message on one line and
exits non-zero. ``assert`` guards internal invariants only.
"""

from __future__ import annotations


class SegpipeError(Exception):
    """Base of every error segpipe reports to a user (one line, non-zero exit)."""

    exit_code: int = 1


class ConfigError(SegpipeError):
    """A config value is wrong. ``path`` is where in the YAML/CLI it lives (``cameras[2].url``)."""

    exit_code = 2

    def __init__(self, path: str, msg: str) -> None:
        self.path = path
        self.msg = msg
        super().__init__(f"{path}: {msg}" if path else msg)


class ConfigErrors(ConfigError):
    """Several config errors reported together, one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        SegpipeError.__init__(self, "\n".join(str(e) for e in self.errors))
        self.path, self.msg = "", str(self)


class ModelError(SegpipeError):
    """A model file is missing, corrupt, of the wrong task or otherwise unusable."""


class CheckpointError(ModelError):
    """A checkpoint cannot be read."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint asked for a global outside the allow-list (it could run code)."""


class EngineMismatchError(ModelError):
    """An artifact was built for another GPU, library version, task or shape."""


class BackendUnavailableError(SegpipeError):
    """The runtime a backend needs (TensorRT, OpenVINO, CUDA) is not installed or not present."""


class DataError(SegpipeError):
    """A dataset, label file or image is missing or malformed."""


class SourceError(SegpipeError):
    """An input source (image, folder, video, stream URL) cannot be opened or is unsupported."""


class SinkError(SegpipeError):
    """A sink cannot be set up (bad endpoint, unwritable path)."""


class InputError(SegpipeError):
    """An input tensor or image has the wrong dtype, shape or layout for the model."""


class Terminated(KeyboardInterrupt):
    """SIGTERM raised as an exception, so that a command's cleanup runs as it does for Ctrl-C; the CLI
    exits 143 (128 + SIGTERM), as a process ended by the signal does."""
