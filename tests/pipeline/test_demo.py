"""pipeline.demo: demo:// URLs, the clip cache (render once, reuse, atomic) and the packaged model."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from engines.errors import ConfigError, ModelError
from pipeline import demo
from pipeline.demo import DemoClipSpec, ensure_demo_clip, parse_demo_url, resolve_demo_url

TINY = DemoClipSpec(style="factory", seed=5, seconds=1.0, fps=4.0, size=(96, 64))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("demo://traffic", DemoClipSpec()),
        ("demo://factory?seed=3", DemoClipSpec(style="factory", seed=3)),
        ("DEMO://Mixed?seconds=2.5&fps=10&size=320x180",
         DemoClipSpec(style="mixed", seconds=2.5, fps=10.0, size=(320, 180))),
        ("demo://traffic/?size=640x360&seed=0", DemoClipSpec(size=(640, 360))),
        (" demo://traffic?seed=7 ", DemoClipSpec(seed=7)),
    ],
)
def test_parse_good(url: str, expected: DemoClipSpec) -> None:
    spec = parse_demo_url(url)
    assert spec == expected
    assert parse_demo_url(spec.url) == spec  # the canonical URL round-trips


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("rtsp://cam/stream", "is not a demo:// URL"),
        ("demo://harbour", "unknown demo style 'harbour'"),
        ("demo://", "unknown demo style ''"),
        ("demo://traffic?sede=3", "unknown demo parameter 'sede' (did you mean 'seed'?)"),
        ("demo://traffic?colour=red", "unknown demo parameter 'colour'; allowed: seed, seconds, fps, size"),
        ("demo://traffic?seed=1&seed=2", "'seed' given twice"),
        ("demo://traffic?seed=-1", "seed must be a non-negative integer"),
        ("demo://traffic?seed=1.5", "seed must be a non-negative integer"),
        ("demo://traffic?seed=", "seed must be a non-negative integer"),
        ("demo://traffic?seconds=0", "seconds must be a number in (0, 600]"),
        ("demo://traffic?seconds=nan", "seconds must be a number in (0, 600]"),
        ("demo://traffic?seconds=1e9", "seconds must be a number in (0, 600]"),
        ("demo://traffic?fps=abc", "fps must be a number in (0, 60]"),
        ("demo://traffic?size=640", "size must be WIDTHxHEIGHT"),
        ("demo://traffic?size=641x360", "each side must be an even number"),
        ("demo://traffic?size=32x32", "each side must be an even number"),
        ("demo://traffic?seed", "malformed query"),
        ("demo://traffic/clip.mp4", "expected demo://STYLE?key=value"),
        ("demo://traffic#frag", "expected demo://STYLE?key=value"),
    ],
)
def test_parse_bad(url: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_demo_url(url, where="cameras[1].url")
    assert exc.value.path == "cameras[1].url"
    assert error in exc.value.msg
    assert "\n" not in str(exc.value)


def test_styles_match_generator() -> None:
    from engines.synth.scene import STYLES

    assert set(demo.STYLES) == set(STYLES)


def test_key_names_every_parameter() -> None:
    keys = {DemoClipSpec().key, DemoClipSpec(seed=1).key, DemoClipSpec(seconds=21).key,
            DemoClipSpec(fps=16).key, DemoClipSpec(size=(320, 180)).key, DemoClipSpec(style="mixed").key}
    assert len(keys) == 6


class _CountingRender:
    """Wraps the real renderer, counting calls (and optionally failing after writing a partial file)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail, self.real = 0, fail, demo._render

    def __call__(self, spec: DemoClipSpec, out: Path) -> Path:
        self.calls += 1
        if self.fail:
            out.write_bytes(b"half a clip")
            raise OSError("disk full")
        return self.real(spec, out)


def test_first_call_renders_second_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    render = _CountingRender()
    monkeypatch.setattr(demo, "_render", render)
    clip = ensure_demo_clip(TINY, cache_dir=tmp_path)
    assert clip == tmp_path / "demo" / f"{TINY.key}.mp4"
    side = clip.with_suffix(".gt.jsonl")
    lines = side.read_text().splitlines()
    assert len(lines) == TINY.frames == 4
    assert json.loads(lines[0])["frame"] == 0
    stamp = (clip.stat().st_mtime_ns, side.stat().st_mtime_ns)
    assert ensure_demo_clip(TINY, cache_dir=tmp_path) == clip
    assert render.calls == 1
    assert (clip.stat().st_mtime_ns, side.stat().st_mtime_ns) == stamp
    # Nothing but the clip, its sidecar and the lock file is left in the cache folder.
    assert sorted(p.name for p in clip.parent.iterdir()) == sorted(
        [clip.name, side.name, f".{TINY.key}.lock"])


def test_default_cache_is_segpipe_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "c"))
    path = resolve_demo_url(TINY.url)
    assert Path(path) == tmp_path / "c" / "demo" / f"{TINY.key}.mp4"
    assert Path(path).is_file()


def test_failed_render_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "_render", _CountingRender(fail=True))
    with pytest.raises(OSError, match="disk full"):
        ensure_demo_clip(TINY, cache_dir=tmp_path)
    left = [p.name for p in (tmp_path / "demo").iterdir()]
    assert left == [f".{TINY.key}.lock"]  # no clip, no sidecar, no temp folder


def test_incomplete_cache_entry_is_rendered_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "demo"
    folder.mkdir()
    clip = folder / f"{TINY.key}.mp4"
    clip.write_bytes(b"truncated")
    clip.with_suffix(".gt.jsonl").write_text('{"frame": 0}\n')  # one line of four
    render = _CountingRender()
    monkeypatch.setattr(demo, "_render", render)
    assert ensure_demo_clip(TINY, cache_dir=tmp_path) == clip
    assert render.calls == 1
    assert len(clip.with_suffix(".gt.jsonl").read_text().splitlines()) == 4


def test_concurrent_callers_render_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    render = _CountingRender()
    monkeypatch.setattr(demo, "_render", render)
    out: list[Path] = []
    threads = [threading.Thread(target=lambda: out.append(ensure_demo_clip(TINY, cache_dir=tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert render.calls == 1 and len(set(out)) == 1 and len(out) == 3


def test_unwritable_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot create the demo cache"):
        ensure_demo_clip(TINY, cache_dir=blocker)


def test_resolve_passes_other_urls_through() -> None:
    for url in ("rtsp://cam/stream", "videos/a.mp4", "model.pt"):
        assert resolve_demo_url(url) == url


def test_demo_model_is_packaged_and_loads() -> None:
    from engines.checkpoint import build_model, load_checkpoint

    path = demo.demo_model_path()
    assert path.name == "demo-seg.pt" and path.stat().st_size <= 15 * 2**20
    assert resolve_demo_url("demo://model") == str(path)
    ckpt = load_checkpoint(path)
    from engines.synth.shapes import CLASS_NAMES

    assert tuple(ckpt.meta.names) == tuple(CLASS_NAMES)
    assert not ckpt.extra_tensors  # no optimizer state shipped
    build_model(ckpt)


@pytest.mark.parametrize(("content", "error"), [(None, "checkpoint not found"), (b"garbage" * 10, "not a model")])
def test_demo_model_missing_or_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes | None,
                                       error: str) -> None:
    fake = tmp_path / "demo-seg.pt"
    if content is not None:
        fake.write_bytes(content)
    monkeypatch.setattr(demo, "asset_path", lambda name: tmp_path / name)
    with pytest.raises(ModelError) as exc:
        demo.demo_model_path()
    assert error in str(exc.value)
    assert "benchmarks/demo_train.sh" in str(exc.value) and "engines/assets/README.md" in str(exc.value)
