"""The out-of-the-box demo: synthetic clips made on first use, and the demo model shipped with segpipe.

Imports ``engines`` (errors, synth writers, checkpoint loader) and nothing else from ``pipeline``, so
the config loader and the supervisor can both use it. A run config names demo inputs by URL::

    cameras:
      - id: demo-traffic
        url: demo://traffic?seed=3&seconds=20&fps=15&size=640x360
    model:
      path: demo://model

``parse_demo_url`` checks a clip URL without rendering anything (config validation);
``ensure_demo_clip`` renders the clip with ``engines.synth`` into ``$SEGPIPE_CACHE/demo/`` the first
time and reuses it afterwards; ``resolve_demo_url`` turns either kind of demo URL into a local path.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from engines.data.cache import default_cache_root
from engines.errors import ConfigError, ModelError

SCHEME = "demo"
MODEL_URL = "demo://model"
STYLES = ("traffic", "factory", "mixed")  # engines.synth.scene.STYLES, checked against it in the tests
MAX_SECONDS = 600.0
MAX_FPS = 60.0
MIN_SIDE, MAX_SIDE = 64, 1920
# Bump when the generator's output for the same parameters changes: old cached clips are then ignored.
CACHE_VERSION = 1
ASSET_README = "engines/assets/README.md"
_KEYS = ("seed", "seconds", "fps", "size")


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoClipSpec:
    """A synthetic demo clip: scene style, RNG seed, length in seconds, frame rate, ``(width, height)``."""

    style: str = "traffic"
    seed: int = 0
    seconds: float = 20.0
    fps: float = 15.0
    size: tuple[int, int] = (640, 360)

    @property
    def frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def key(self) -> str:
        """File stem that names every parameter: equal keys, byte-identical clips."""
        w, h = self.size
        return f"{self.style}-seed{self.seed}-{self.seconds:g}s-{self.fps:g}fps-{w}x{h}-v{CACHE_VERSION}"

    @property
    def url(self) -> str:
        """The canonical ``demo://`` URL of this clip (``parse_demo_url(spec.url) == spec``)."""
        w, h = self.size
        return f"{SCHEME}://{self.style}?seed={self.seed}&seconds={self.seconds:g}&fps={self.fps:g}&size={w}x{h}"


def is_demo_url(url: str) -> bool:
    """Whether ``url`` uses the ``demo://`` scheme (a clip or the demo model)."""
    return url.strip().lower().startswith(f"{SCHEME}://")


def parse_demo_url(url: str, *, where: str = "url") -> DemoClipSpec:
    """``demo://STYLE?seed=S&seconds=T&fps=F&size=WxH`` -> ``DemoClipSpec``; every query key is optional.

    Renders nothing. ``where`` names the culprit in errors (a YAML path such as ``cameras[2].url``).
    Raises ``ConfigError`` for another scheme, an unknown style or key, a repeated key or a value out
    of range.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != SCHEME:
        raise ConfigError(where, f"{url!r} is not a {SCHEME}:// URL")
    style = parts.netloc.lower()
    if style not in STYLES:
        raise ConfigError(where, f"unknown demo style {style!r} in {url!r}; expected one of: {', '.join(STYLES)}")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigError(where, f"{url!r}: expected demo://STYLE?key=value&..., nothing else")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError(where, f"{url!r}: malformed query; expected key=value pairs joined by '&'") from None
    values: dict[str, str] = {}
    for key, value in pairs:
        if key not in _KEYS:
            hint = difflib.get_close_matches(key, _KEYS, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(where, f"unknown demo parameter {key!r}{extra}; allowed: {', '.join(_KEYS)}")
        if key in values:
            raise ConfigError(where, f"demo parameter {key!r} given twice")
        values[key] = value
    default = DemoClipSpec()
    return DemoClipSpec(
        style=style,
        seed=_seed(values.get("seed"), default.seed, where),
        seconds=_number(values.get("seconds"), default.seconds, "seconds", MAX_SECONDS, where),
        fps=_number(values.get("fps"), default.fps, "fps", MAX_FPS, where),
        size=_size(values.get("size"), default.size, where),
    )


def _seed(text: str | None, default: int, where: str) -> int:
    if text is None:
        return default
    if not text.isdigit() or int(text) >= 2**63:
        raise ConfigError(where, f"demo seed must be a non-negative integer, got {text!r}")
    return int(text)


def _number(text: str | None, default: float, name: str, upper: float, where: str) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= upper):
        raise ConfigError(where, f"demo {name} must be a number in (0, {upper:g}], got {text!r}")
    return value


def _size(text: str | None, default: tuple[int, int], where: str) -> tuple[int, int]:
    if text is None:
        return default
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ConfigError(where, f"demo size must be WIDTHxHEIGHT such as 640x360, got {text!r}")
    w, h = int(parts[0]), int(parts[1])
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE) or w % 2 or h % 2:
        raise ConfigError(where, f"demo size {text!r}: each side must be an even number of pixels in "
                                 f"{MIN_SIDE}..{MAX_SIDE} (H.264 4:2:0)")
    return w, h


def demo_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<cache_dir>/demo``; ``cache_dir`` defaults to ``$SEGPIPE_CACHE`` (or ``~/.cache/segpipe``)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / "demo"


def ensure_demo_clip(spec: DemoClipSpec, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the H.264 clip for ``spec`` (ground truth beside it as ``<stem>.gt.jsonl``).

    The first call renders it into ``demo_cache_dir(cache_dir)/<spec.key>.mp4``: into a private temp
    folder first, then renamed into place, sidecar before clip, so a clip that exists is always
    complete and has its ground truth. Later calls (and other processes, which wait on a lock file
    rather than render the same clip twice) reuse it. Raises ``ConfigError`` for an unwritable cache.
    """
    from engines.synth.writers import sidecar_path

    folder = demo_cache_dir(cache_dir)
    clip = folder / f"{spec.key}.mp4"
    if _complete(clip, spec):
        return clip
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("SEGPIPE_CACHE", f"cannot create the demo cache {folder}: {e.strerror or e}") from None
    with _locked(folder / f".{spec.key}.lock"):
        if _complete(clip, spec):  # another process rendered it while we waited
            return clip
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.key}.", dir=folder))
        try:
            rendered = _render(spec, tmp / clip.name)
            os.replace(sidecar_path(rendered), sidecar_path(clip))
            os.replace(rendered, clip)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return clip


def _render(spec: DemoClipSpec, out: Path) -> Path:
    from engines.synth.writers import write_video

    return write_video(out, seconds=spec.seconds, fps=spec.fps, size=spec.size, style=spec.style,
                       seed=spec.seed).video


def _complete(clip: Path, spec: DemoClipSpec) -> bool:
    """A cached clip counts when it is non-empty and its sidecar has one line per frame."""
    from engines.synth.writers import sidecar_path

    side = sidecar_path(clip)
    try:
        if clip.stat().st_size == 0:
            return False
        with open(side, "rb") as f:
            return sum(1 for _ in f) == spec.frames
    except OSError:
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block (released by the OS if the process dies)."""
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def demo_model_path() -> Path:
    """The packaged demo weights ``engines/assets/demo-seg.pt`` (a segpipe checkpoint, 6 synth classes).

    Raises ``ModelError`` saying how to regenerate them when the file is missing or unreadable.
    """
    from engines.checkpoint import load_checkpoint
    from engines.errors import CheckpointError

    path = asset_path("demo-seg.pt")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise ModelError(f"demo model unusable ({e}); regenerate it with benchmarks/demo_train.sh "
                         f"(exact commands in {ASSET_README})") from None
    if ckpt.meta.task != "segment" or not ckpt.meta.names:
        raise ModelError(f"{path}: not a segmentation checkpoint; regenerate it with benchmarks/demo_train.sh "
                         f"(see {ASSET_README})")
    return path


def asset_path(name: str) -> Path:
    """A file shipped in ``engines/assets`` (installed as package data)."""
    from importlib.resources import files

    return Path(str(files("engines") / "assets" / name))


def resolve_demo_url(url: str, *, cache_dir: str | os.PathLike[str] | None = None, where: str = "url") -> str:
    """A local path for a ``demo://`` URL, anything else unchanged.

    ``demo://model`` -> the demo weights (``demo_model_path``); ``demo://STYLE?...`` -> the cached clip
    (``ensure_demo_clip``, rendered on first use). ``where`` names the config field in errors.
    """
    if not is_demo_url(url):
        return url
    if url.strip().rstrip("/").lower() == MODEL_URL:
        return str(demo_model_path())
    return str(ensure_demo_clip(parse_demo_url(url, where=where), cache_dir=cache_dir))
