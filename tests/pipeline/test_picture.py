"""Picture health (frozen, blank, moved, blurred): the thumbnail, view match and sharpness, the verdict's
timing and hysteresis, decoders on real clips (a frozen stretch, a black or grey one, a blurred then
turned one, synthetic scenes that must raise nothing), and `segpipe run` end to end (status events, /cameras, /metrics, a reload that changes the checks)."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pipeline import decoder as decoder_module
from pipeline import shm
from pipeline.config import CameraConfig, PictureConfig
from pipeline.decoder import DecoderSettings
from pipeline.messages import CameraState, CameraStatus, Picture
from pipeline.picture import CLEAR_MARGIN, PictureCheck, PictureSettings, sharpness, thumbnail, view_match
from tests.conftest import REPO, MqttBroker, free_port
from tests.helpers import read_jsonl, wait_for
from tests.pipeline.media import frame_index, make_frame, write_clip
from tests.pipeline.test_decoder import Harness

S, P = CameraState, Picture
FAST = PictureSettings(interval_s=0.2, frozen_diff=0.01, frozen_s=1.0, blank_std=2.0, blank_s=1.0)


def defaults() -> PictureSettings:
    c = PictureConfig()
    return PictureSettings(interval_s=c.interval_s, frozen_diff=c.frozen_diff, frozen_s=c.frozen_s,
                           blank_std=c.blank_std, blank_s=c.blank_s, moved_match=c.moved_match, moved_s=c.moved_s,
                           blurred_ratio=c.blurred_ratio, blurred_s=c.blurred_s, learn_s=c.learn_s)


# ------------------------------------------------------------------------------------ the thumbnail


@pytest.mark.parametrize("size, shape", [((1920, 1080), (38, 68)), ((1280, 720), (36, 64)), ((640, 360), (45, 80)),
                                         ((3840, 2160), (36, 64)), ((160, 120), (30, 40)), ((3, 2), (2, 3))])
def test_thumbnail_is_a_small_grey_area_mean(size: tuple[int, int], shape: tuple[int, int]) -> None:
    w, h = size
    image = np.empty((h, w, 3), np.uint8)
    image[:] = (10, 200, 50)  # BGR
    thumb = thumbnail(image)
    assert thumb.shape == shape and thumb.dtype == np.float32
    np.testing.assert_allclose(thumb, 0.114 * 10 + 0.587 * 200 + 0.299 * 50, rtol=1e-5)
    image[:, : w // 2] = 0  # left half black, right half white: each side's pixels keep their grey
    image[:, w // 2:] = 255
    thumb = thumbnail(image)
    assert thumb[:, 0].max() == 0 and thumb[:, -1].min() == pytest.approx(255, rel=1e-5)


def test_thumbnail_averages_what_it_samples() -> None:
    """Noise of +-2 grey levels per pixel shrinks to a fraction of a level: a live sensor's noise does not
    read as contrast, and one pixel changed is not a moving picture."""
    rng = np.random.default_rng(0)
    noisy = (128 + rng.integers(-2, 3, (720, 1280, 3))).astype(np.uint8)
    assert thumbnail(noisy).std() < 0.5


# ------------------------------------------------------------------------------ the verdict's timing


def _flat(level: float, *, seed: int | None = None, spread: float = 40.0) -> np.ndarray:
    """A 36x64 thumbnail: a fixed pattern of contrast ``spread`` around ``level`` (``seed`` picks another
    picture of the same contrast)."""
    rng = np.random.default_rng(seed if seed is not None else 0)
    return (level + spread * (rng.random((36, 64)) - 0.5)).astype(np.float32)


def _run(check: PictureCheck, thumbs: list[tuple[float, np.ndarray]]) -> list[tuple[float, Picture, str]]:
    out = []
    for t, thumb in thumbs:
        if check.due(t):
            change = check.update(thumb, t)
            if change is not None:
                out.append((t, *change))
    return out


def test_a_picture_that_stops_changing_is_frozen_after_frozen_s_and_back_when_it_moves() -> None:
    moving = [(i * 0.2, _flat(100, seed=i)) for i in range(5)]  # t 0 .. 0.8
    still = [(1.0 + i * 0.2, _flat(100, seed=99)) for i in range(10)]  # t 1.0 .. 2.8, one picture
    again = [(3.0 + i * 0.2, _flat(100, seed=200 + i)) for i in range(3)]
    changes = _run(PictureCheck(FAST), moving + still + again)
    # unchanged from the check at t=1.0 on: frozen once that has lasted frozen_s (t=2.0); moving at 3.0
    assert [(round(t, 1), p) for t, p, _ in changes] == [(2.0, P.FROZEN), (3.0, P.OK)]
    assert changes[0][2] == "picture frozen for 1.0 s" and changes[1][2].startswith("picture back (change ")


def test_noise_below_frozen_diff_is_still_and_hysteresis_keeps_the_verdict() -> None:
    base = _flat(100, seed=1)
    check = PictureCheck(FAST)
    k, offset = 0, 0.0

    def step(delta: float) -> tuple[Picture, str] | None:
        """The next check, 0.2 s on, of a picture that changed by ``delta`` (every pixel)."""
        nonlocal k, offset
        k, offset = k + 1, offset + delta
        return check.update(base + np.float32(offset), k * 0.2)

    check.update(base, 0.0)
    assert [step(0.005) for _ in range(4)] == [None] * 4  # a change of 0.005 a check: still, not yet 1 s
    assert step(0.0)[0] is P.FROZEN  # type: ignore[index]
    # on: a change over frozen_diff but within the margin keeps it frozen; past 1.5x frozen_diff clears
    assert step(0.012) is None and check.picture is P.FROZEN
    assert step(0.01 * CLEAR_MARGIN * 1.1)[0] is P.OK  # type: ignore[index]
    # off: a change over frozen_diff (within the margin) starts the still time again
    assert [step(0.005) for _ in range(4)] + [step(0.012)] + [step(0.0) for _ in range(4)] == [None] * 9
    assert step(0.0)[0] is P.FROZEN  # type: ignore[index]


def test_a_picture_without_contrast_is_blank_after_blank_s_and_back_past_the_margin() -> None:
    thumbs = [(i * 0.2, _flat(30, seed=i, spread=5.0)) for i in range(8)]  # std 1.4 and changing
    thumbs += [(1.6 + i * 0.2, _flat(30, seed=50 + i, spread=2.0 * CLEAR_MARGIN * 3.0)) for i in range(2)]  # 2.6
    thumbs += [(2.0 + i * 0.2, _flat(30, seed=60 + i, spread=40.0)) for i in range(2)]  # std 11.5
    changes = _run(PictureCheck(FAST), thumbs)
    assert [(round(t, 1), p) for t, p, _ in changes] == [(1.0, P.BLANK), (2.0, P.OK)]
    stds = [f"{thumbs[i][1].std():.1f}" for i in (5, 10)]  # of the checks that changed the verdict
    assert changes[0][2] == f"picture blank (std {stds[0]}) for 1.0 s" and changes[1][2] == f"picture back (std {stds[1]})"


def test_blank_wins_over_frozen_and_checks_turned_off_never_fire() -> None:
    black = [(i * 0.2, np.zeros((36, 64), np.float32)) for i in range(12)]
    assert [(round(t, 1), p) for t, p, _ in _run(PictureCheck(FAST), black)] == [(1.0, P.BLANK)]
    slow_blank = PictureSettings(interval_s=0.2, frozen_diff=0.01, frozen_s=1.0, blank_std=2.0, blank_s=2.0)
    changes = _run(PictureCheck(slow_blank), black)  # frozen first, then blank: the more telling of the two
    assert [(round(t, 1), p) for t, p, _ in changes] == [(1.0, P.FROZEN), (2.0, P.BLANK)]
    off = PictureSettings(interval_s=0.2, frozen_diff=0.01, frozen_s=None, blank_std=2.0, blank_s=None)
    assert _run(PictureCheck(off), black) == []


def test_checks_go_by_interval_and_start_again_when_time_goes_back() -> None:
    check = PictureCheck(FAST)
    assert check.due(5.0)
    check.update(_flat(100), 5.0)
    assert not check.due(5.1) and check.due(5.2) and check.due(4.0)  # a clock that went back: check now
    still = [(4.0 + i * 0.2, _flat(100)) for i in range(5)]  # t 4.0 .. 4.8: not a second since 4.0
    assert _run(check, still) == []
    assert _run(check, [(5.0, _flat(100))])[0][1] is P.FROZEN


def test_a_restarted_decoder_keeps_its_cameras_verdict_until_the_picture_says_otherwise() -> None:
    check = PictureCheck(FAST, picture=P.FROZEN)
    assert check.update(_flat(100), 0.0) is None  # one picture proves nothing
    assert check.update(_flat(100), 0.2) is None
    assert check.update(_flat(100, seed=3), 0.4)[0] is P.OK  # type: ignore[index]
    off = PictureSettings(interval_s=0.2, frozen_diff=0.01, frozen_s=None, blank_std=2.0, blank_s=1.0)
    assert PictureCheck(off, picture=P.FROZEN).update(_flat(100), 0.0) == (P.OK, "picture back")
    blank = PictureCheck(FAST, picture=P.BLANK)
    assert blank.update(_flat(30, spread=2.0), 0.0) is None  # std 0.6: still blank
    assert blank.update(_flat(30), 0.2) == (P.OK, f"picture back (std {_flat(30).std():.1f})")


# ----------------------------------------------------------------------------- moved and blurred


def _scene(seed: int = 0, size: tuple[int, int] = (640, 360)) -> np.ndarray:
    """A BGR view with structure at every scale and no repeats: smooth random shading, plus edged
    rectangles (buildings, signs) of random grey levels."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = cv2.resize(rng.random((9, 16, 3), np.float32) * 160 + 40, size, interpolation=cv2.INTER_CUBIC)
    for _ in range(40):
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        cv2.rectangle(base, (x, y), (x + int(rng.integers(10, w // 4)), y + int(rng.integers(10, h // 4))),
                      tuple(float(v) for v in rng.random(3) * 255), -1)
    return np.clip(base, 0, 255).astype(np.uint8)


def _shift(image: np.ndarray, fx: float) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, np.float32([[1, 0, fx * w], [0, 1, 0]]), (w, h), borderMode=cv2.BORDER_REFLECT)


def _turn(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h),
                          borderMode=cv2.BORDER_REFLECT)


def _covered(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[:, : image.shape[1] // 3] = (40, 40, 200)  # a truck filling a third of the view
    return out


@pytest.mark.parametrize("change, low, high", [
    (lambda im: im, 1.0, 1.0),
    (lambda im: (im * 0.3).astype(np.uint8), 0.95, 1.0),  # dusk: the same view, darker
    (lambda im: (128 + (im.astype(np.float32) - 128) * 0.5).astype(np.uint8), 0.95, 1.0),  # haze
    (_covered, 0.6, 0.8),  # a third of the view hidden: only those cells lost
    (lambda im: _shift(im, 0.1), 0.0, 0.3),  # turned by a tenth of its field of view
    (lambda im: _turn(im, 10), 0.0, 0.3),  # rolled about its axis (5 degrees: 0.45 on this view)
    (lambda im: _scene(seed=9), 0.0, 0.3),  # another view altogether
], ids=["same", "darker", "hazy", "covered-third", "shifted-10%", "rolled-10deg", "another-view"])
def test_view_match_ignores_light_and_loses_a_view_that_moved(change: Callable[[np.ndarray], np.ndarray],
                                                              low: float, high: float) -> None:
    view = _scene()
    match = view_match(thumbnail(view), thumbnail(change(view)))
    assert match is not None and low <= match <= high


def test_view_match_needs_structure_and_one_size() -> None:
    flat = np.full((36, 64), 90, np.float32)
    assert view_match(flat, thumbnail(_scene())) is None  # nothing in the reference to compare
    assert view_match(thumbnail(_scene()), thumbnail(_scene(size=(320, 240)))) is None


@pytest.mark.parametrize("change, low, high", [
    (lambda im: (im * 0.3).astype(np.uint8), 0.9, 1.1),
    (lambda im: (128 + (im.astype(np.float32) - 128) * 0.4).astype(np.uint8), 0.9, 1.1),
    (lambda im: cv2.GaussianBlur(im, (0, 0), 2.0), 0.0, 0.5),
    (lambda im: cv2.GaussianBlur(im, (0, 0), 4.0), 0.0, 0.35),
], ids=["darker", "less-contrast", "blur-2px", "blur-4px"])
def test_sharpness_falls_with_blur_not_with_light(change: Callable[[np.ndarray], np.ndarray], low: float,
                                                  high: float) -> None:
    rng = np.random.default_rng(1)
    view = np.clip(_scene(size=(1280, 720)) + rng.normal(0, 2, (720, 1280, 3)), 0, 255).astype(np.uint8)
    sharp, changed = sharpness(view), sharpness(change(view))
    assert sharp is not None and changed is not None and low <= changed / sharp <= high
    assert sharpness(np.full((720, 1280, 3), 70, np.uint8)) is None  # no contrast: nothing to say


VIEW = PictureSettings(interval_s=0.5, frozen_diff=0.01, frozen_s=None, blank_std=2.0, blank_s=1.0,
                       moved_s=2.0, blurred_s=2.0, learn_s=2.0)


def _look(check: PictureCheck, images: list[np.ndarray], t0: float) -> list[tuple[float, Picture, str]]:
    """Check ``images`` one every interval from ``t0``; the verdict changes."""
    out = []
    for i, image in enumerate(images):
        t = t0 + i * check.s.interval_s
        change = check.update(thumbnail(image), t, sharpness(image) if check.wants_sharpness else None)
        if change is not None:
            out.append((t, *change))
    return out


def test_a_camera_knocked_aside_is_moved_until_its_view_comes_back() -> None:
    """Learned over learn_s (4 checks), the view is judged from then on: turned for moved_s, it is moved,
    and stays moved however long it stays turned (the usual view does not learn the new one); pointed
    back, it is back. Two views that alternate (a learner that had learned the turned view would have
    said back)."""
    view, turned = _scene(), _shift(_scene(), 0.12)
    check = PictureCheck(VIEW)
    assert _look(check, [view] * 6, 0.0) == []
    changes = _look(check, [turned] * 20, 3.0)  # 10 s turned
    assert [(t, p) for t, p, _ in changes] == [(5.0, P.MOVED)]
    assert changes[0][2].startswith("picture moved (view match 0.") and changes[0][2].endswith(" for 2.0 s")
    back = _look(check, [view] * 2, 13.0)
    assert [(t, p) for t, p, _ in back] == [(13.0, P.OK)] and back[0][2] == "picture back (view match 1.00)"
    # a third of the view hidden for a long time is the same view
    assert _look(check, [_covered(view)] * 20, 14.0) == []


def test_a_defocused_camera_is_blurred_until_it_is_sharp_again() -> None:
    view = _scene(size=(1280, 720))
    soft = cv2.GaussianBlur(view, (0, 0), 3.0)
    check = PictureCheck(VIEW)
    assert _look(check, [view] * 6, 0.0) == []
    changes = _look(check, [soft] * 12, 3.0)
    assert [(t, p) for t, p, _ in changes] == [(5.0, P.BLURRED)]
    assert changes[0][2].startswith("picture blurred (sharpness 0.") and "of usual) for 2.0 s" in changes[0][2]
    back = _look(check, [view], 9.0)
    assert [p for _, p, _ in back] == [P.OK] and back[0][2] == "picture back (sharpness 1.00 of usual)"


def test_moved_and_blurred_wait_for_their_reference_and_give_way_to_blank() -> None:
    view, other = _scene(), _scene(seed=5)
    check = PictureCheck(VIEW)
    # the view changes during the first learn_s: that is the view being learned, not a move
    assert _look(check, [view] * 2 + [other] * 10, 0.0) == []
    black = np.zeros_like(view)
    changes = _look(check, [black] * 8 + [view] * 8, 6.0)  # blank, then a view unlike the learned one
    assert [(t, p) for t, p, _ in changes] == [(7.0, P.BLANK), (10.0, P.OK), (12.0, P.MOVED)]


def test_a_restarted_decoder_learns_the_view_again_and_then_judges_it() -> None:
    """Its camera was moved: the new decoder keeps saying so until it has learned a view, which is the
    one the camera has now: back. The checks turned off never hold a verdict."""
    view = _scene()
    changes = _look(PictureCheck(VIEW, picture=P.MOVED), [view] * 6, 0.0)
    assert [(t, p) for t, p, _ in changes] == [(2.0, P.OK)] and changes[0][2] == "picture back (view match 1.00)"
    off = PictureSettings(interval_s=0.5, frozen_diff=0.01, frozen_s=None, blank_std=2.0, blank_s=None)
    assert _look(PictureCheck(off, picture=P.BLURRED), [view], 0.0) == [(0.0, P.OK, "picture back")]


# ---------------------------------------------------------------------------- decoders on real clips


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**kw: object) -> Harness:
        h = Harness(shm.prefix_for(90 + len(made)), **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def frozen_clip(path: Path, *, moving: int = 15, repeats: int = 30, after: int = 15, fps: int = 10) -> Path:
    """``moving`` frames of a moving picture, then its last one ``repeats`` more times, exactly (lossless
    H.264: the repeats decode identical), then moving again."""
    size = (160, 120)
    images = [make_frame(i, size=size) for i in range(moving)] + [make_frame(moving - 1, size=size)] * repeats
    images += [make_frame(moving + i, size=size) for i in range(after)]
    return write_clip(path, images=images, fps=fps, crf=0)


def picture_statuses(statuses: list[CameraStatus]) -> list[tuple[CameraState, Picture]]:
    """(state, picture) of each status that changed the picture."""
    out, last = [], P.OK
    for s in statuses:
        if s.picture is not last:
            out.append((s.state, s.picture))
            last = s.picture
    return out


def test_a_frozen_stretch_is_reported_while_the_camera_stays_live_and_its_frames_flow(
        tmp_path: Path, harness: Callable[..., Harness]) -> None:
    """15 moving frames, the 15th repeated 30 times (3 s at 10 fps), 15 moving again: frozen once the
    picture has not changed for 1 s, back at the first check that sees it move; LIVE throughout."""
    clip = frozen_clip(tmp_path / "frozen.mp4")
    h = harness(url=str(clip), is_file=True, realtime=False, lossless=True, picture=FAST)
    h.run()
    assert h.states == [S.CONNECTING, S.LIVE, S.LIVE, S.LIVE, S.ENDED], h.statuses
    assert picture_statuses(h.statuses) == [(S.LIVE, P.FROZEN), (S.LIVE, P.OK)]
    frozen, back = h.statuses[2], h.statuses[3]
    assert frozen.detail == "picture frozen for 1.0 s" and back.detail.startswith("picture back (change ")
    assert h.statuses[-1].picture is P.OK  # the statuses after it carry the verdict
    # every frame went on to the ring (lossless), the repeats too, before and after the verdict
    assert [f.seq for f in h.frames] == list(range(60))
    repeats = [f for f in h.frames if 15 <= f.seq < 45]
    assert {frame_index(f.image) for f in repeats} == {14}
    assert any(f.capture_ts > frozen.ts for f in repeats)  # frames kept flowing while frozen
    assert frozen.ts < back.ts <= h.frames[46].capture_ts  # back at the first moving check (t=4.6 at the latest)
    assert back.ts > repeats[-1].capture_ts


@pytest.mark.parametrize("level", [0, 128], ids=["black", "grey"])
def test_a_blank_stretch_is_reported_and_clears(tmp_path: Path, harness: Callable[..., Harness], level: int) -> None:
    """A black (or uniform grey) stretch of 3 s between moving pictures: blank after 1 s, back once the
    picture has contrast again; never frozen, though it does not change either (blank says more)."""
    size = (160, 120)
    images = [make_frame(i, size=size) for i in range(15)] + [np.full((120, 160, 3), level, np.uint8)] * 30
    images += [make_frame(15 + i, size=size) for i in range(15)]
    clip = write_clip(tmp_path / "blank.mp4", images=images, fps=10, crf=18)
    h = harness(url=str(clip), is_file=True, realtime=False, lossless=True, picture=FAST)
    h.run()
    assert picture_statuses(h.statuses) == [(S.LIVE, P.BLANK), (S.LIVE, P.OK)], h.statuses
    assert h.statuses[2].detail.startswith("picture blank (std ") and h.statuses[2].detail.endswith(" for 1.0 s")
    assert h.statuses[3].detail.startswith("picture back (std ")
    assert S.STALLED not in h.states and h.decoded == 60


def test_a_clip_that_blurs_then_turns_aside_is_reported_blurred_then_moved(
        tmp_path: Path, harness: Callable[..., Harness]) -> None:
    """Through a real decoder (H.264, crf 18): 3 s of a view (learned over 2 s), 3 s of it out of focus,
    1 s sharp, 3 s turned aside, 1 s back: blurred after 2 s and back, moved after 2 s and back; LIVE
    throughout and every frame decoded."""
    view = _scene(size=(320, 180))
    soft, aside = cv2.GaussianBlur(view, (0, 0), 2.5), _shift(view, 0.15)
    images = [view] * 30 + [soft] * 30 + [view] * 10 + [aside] * 30 + [view] * 10
    clip = write_clip(tmp_path / "knocked.mp4", images=images, fps=10, crf=18)
    h = harness(url=str(clip), is_file=True, realtime=False, lossless=True,
                picture=dataclasses.replace(VIEW, blank_s=None))
    h.run()
    assert picture_statuses(h.statuses) == [(S.LIVE, P.BLURRED), (S.LIVE, P.OK), (S.LIVE, P.MOVED),
                                            (S.LIVE, P.OK)], h.statuses
    details = [s.detail for s in h.statuses[2:6]]
    assert details[0].startswith("picture blurred (sharpness ") and details[0].endswith(" for 2.0 s")
    assert details[1].startswith("picture back (sharpness ")
    assert details[2].startswith("picture moved (view match ") and details[2].endswith(" for 2.0 s")
    assert details[3].startswith("picture back (view match ")
    assert S.STALLED not in h.states and h.decoded == len(images)


def test_the_check_is_off_when_not_configured(tmp_path: Path, harness: Callable[..., Harness]) -> None:
    h = harness(url=str(frozen_clip(tmp_path / "frozen.mp4")), is_file=True, realtime=False)
    h.run()
    assert all(s.picture is P.OK for s in h.statuses) and h.states[-1] is S.ENDED


@pytest.fixture(scope="module")
def synth_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pipeline.cli import main

    d = tmp_path_factory.mktemp("synth")
    out = {}
    for style in ("traffic", "factory"):
        out[style] = d / f"{style}.mp4"
        assert main(["synth", "video", "--out", str(out[style]), "--seconds", "8", "--fps", "10", "--size",
                     "320x180", "--style", style, "--seed", "3"]) == 0
    return out


@pytest.mark.parametrize("style", ["traffic", "factory"])
def test_synthetic_scenes_raise_nothing_with_every_check_on(synth_clips: dict[str, Path],
                                                            harness: Callable[..., Harness], style: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """45 s of stream time (the 8 s clip looped, unpaced), longer than frozen_s and blank_s, with moved
    and blurred on as well (learned over 5 s, judged on every check after): no picture status, and every
    check well clear of every threshold, though vehicles and boxes come, go and cover the view."""
    seen: list[tuple[float | None, float, float | None, float | None]] = []
    update = PictureCheck.update

    def recording(self: PictureCheck, thumb: np.ndarray, t: float, sharp: float | None = None
                  ) -> tuple[Picture, str] | None:
        change = update(self, thumb, t, sharp)
        seen.append((self.diff, self.std, self.match, self.sharp_ratio))
        return change

    monkeypatch.setattr(decoder_module.PictureCheck, "update", recording)
    settings = DecoderSettings.from_config(_camera(synth_clips[style]))
    assert settings.picture == defaults()
    picture = dataclasses.replace(settings.picture, moved_s=1.0, blurred_s=1.0, learn_s=5.0)
    h = harness(url=settings.url, is_file=True, realtime=False, loop=True, picture=picture)
    h.run(stop_after_decoded=450)
    assert h.decoded >= 450 and len(seen) >= 44
    assert all(s.picture is P.OK for s in h.statuses), h.statuses
    diffs = [d for d, *_ in seen if d is not None]
    assert min(diffs) > 20 * picture.frozen_diff
    assert min(s for _, s, *_ in seen) > 5 * picture.blank_std
    matches, ratios = [m for *_, m, _ in seen if m is not None], [r for *_, r in seen if r is not None]
    assert len(matches) >= 38 and len(ratios) >= 38  # judged from 5 s on
    assert min(matches) > picture.moved_match * CLEAR_MARGIN and min(ratios) > picture.blurred_ratio * CLEAR_MARGIN


def test_a_restarted_decoder_is_given_its_cameras_picture(tmp_path: Path) -> None:
    """The supervisor's pool starts a crashed camera's new decoder from the verdict so far (no "picture
    back" from a decoder that has seen nothing yet), and its rows (/cameras, the console) carry it."""
    import multiprocessing as mp

    from pipeline.decoders import DecoderPool

    spawned: list[tuple] = []

    def spawn(name: str, target: object, *args: object) -> object:
        spawned.append(args)
        return object()

    pool = DecoderPool(spawn=spawn, pipe=mp.Pipe, publish=lambda status: None)
    cam = pool.add(_camera(tmp_path / "x.mp4"))
    try:
        pool.start(cam, initial=S.CONNECTING)
        assert spawned[-1][-2:] == (S.CONNECTING, P.OK) and pool.rows()[0]["picture"] == "ok"
        pool._status(cam, CameraStatus(camera_id="cam", state=S.LIVE, ts=1.0, picture=P.FROZEN))
        assert pool.rows()[0]["picture"] == "frozen"
        pool.start(cam, initial=S.RECONNECTING)
        assert spawned[-1][-2:] == (S.RECONNECTING, P.FROZEN)
    finally:
        cam.control.close()
        shm.unlink_all(cam.prefix + "_")


def test_mqtt_retains_a_picture_status_like_any_status(mqtt_broker: MqttBroker) -> None:
    """A subscriber that connects after a camera's picture froze learns it from the retained status."""
    from pipeline.events import encode, status_event
    from pipeline.sinks.base import Envelope, policy_for
    from pipeline.sinks.mqtt import MqttSink
    from tests.pipeline.test_sink_mqtt import Subscriber

    sink = MqttSink(name="mqtt", url=mqtt_broker.url, client_id="segpipe-picture", policy=policy_for("mqtt"),
                    backoff_max_s=1)
    try:
        wait_for(sink.connected.is_set, 10, "the sink to connect")
        for st in (CameraStatus(camera_id="gate", state=S.LIVE, ts=1.0, detail="640x360"),
                   CameraStatus(camera_id="gate", state=S.LIVE, ts=2.0, detail="picture frozen for 30 s",
                                picture=P.FROZEN)):
            sink.publish(Envelope(camera_id="gate", kind="status", payload=encode(status_event(st)), item=st))
        assert sink.flush(10)
        late = Subscriber(mqtt_broker, client_id="late")
        try:
            wait_for(lambda: any(t == "segpipe/gate/status" for t, _, _ in late.got), 10, "the retained status")
            [event] = [e for t, e, retained in late.got if t == "segpipe/gate/status" and retained]
            assert (event["state"], event["picture"], event["detail"]) == ("live", "frozen", "picture frozen for 30 s")
        finally:
            late.close()
    finally:
        sink.close()


def _camera(url: Path) -> CameraConfig:
    return CameraConfig(id="cam", url=str(url))


# ------------------------------------------------------------------------------- segpipe run end to end

MODEL = {"path": "yolov8n-seg.yaml", "device": "cpu", "imgsz": 64, "conf": 1e-6, "max_det": 4, "threads": 1}


def _metric(port: int, camera: str, problem: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    line = f'segpipe_camera_picture_problem{{camera="{camera}",problem="{problem}"}} '
    return next((float(x[len(line):]) for x in text.splitlines() if x.startswith(line)), None)


def test_segpipe_run_publishes_picture_statuses_and_serves_them(tmp_path: Path) -> None:
    """A paced file camera with a 4 s frozen stretch: status events live/frozen then live/ok, in order,
    every frame of the stretch inferred; /cameras, `segpipe status` and /metrics show it while it lasts."""
    from pipeline.cli.status import fetch, table

    clip = frozen_clip(tmp_path / "frozen.mp4", repeats=40)
    events, port = tmp_path / "events.jsonl", free_port()
    cfg = {"model": MODEL, "batch": {"max_batch": 2, "max_wait_ms": 5, "max_age_ms": 5000},
           "cameras": [{"id": "door", "url": str(clip), "lossless": True,
                        "picture": {"interval_s": 0.2, "frozen_s": 1.0}}],
           "sinks": [{"type": "jsonl", "path": str(events)}], "metrics": {"port": port}}
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(path), "--no-console"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def frozen_now() -> bool:
            try:
                cams = fetch(f"http://127.0.0.1:{port}", timeout=2)["cameras"]
            except Exception:
                return False
            return bool(cams) and cams[0]["picture"] == "frozen"

        wait_for(frozen_now, 120, "/cameras to show the frozen picture", step=0.05)
        now = fetch(f"http://127.0.0.1:{port}")
        assert now["cameras"][0]["state"] == "live"
        row = table(now, now).splitlines()[2].split()
        assert row[:3] == ["door", "live", "frozen"]  # what `segpipe status` prints
        wait_for(lambda: _metric(port, "door", "frozen") == 1.0, 10, "the frozen gauge")
        assert _metric(port, "door", "blank") == _metric(port, "door", "moved") == _metric(port, "door", "blurred") == 0.0
        _, err = proc.communicate(timeout=120)  # the clip ends, and so does the run
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, err[-3000:]
    lines = read_jsonl(events)
    statuses = [e for e in lines if e["kind"] == "status"]
    assert [(e["state"], e["picture"]) for e in statuses] == [
        ("connecting", "ok"), ("live", "ok"), ("live", "frozen"), ("live", "ok"), ("ended", "ok")], statuses
    assert statuses[2]["detail"] == "picture frozen for 1.0 s"
    assert "picture=frozen" in err
    seqs = sorted(e["seq"] for e in lines if e["kind"] == "frame")
    assert seqs == list(range(70))  # lossless: every frame inferred, the 40 repeats too


def test_a_reload_that_changes_the_picture_section_applies(tmp_path: Path) -> None:
    """A camera looping a black clip with its picture check off says nothing; a reload that turns it on
    (and shortens blank_s) restarts the camera with it, and the picture goes blank."""
    clip = write_clip(tmp_path / "black.mp4", images=[np.zeros((64, 96, 3), np.uint8)] * 10, fps=10)
    events, path = tmp_path / "events.jsonl", tmp_path / "cameras.yaml"

    def write(picture: dict) -> None:
        path.write_text(yaml.safe_dump({"model": MODEL, "cameras": [{"id": "cam", "url": str(clip), "loop": True,
                                                                     "picture": picture}],
                                        "sinks": [{"type": "jsonl", "path": str(events)}],
                                        "metrics": {"enabled": False}}))

    def statuses() -> list[dict]:
        return [e for e in read_jsonl(events) if e["kind"] == "status"]

    write({"enabled": False, "blank_s": 0.5, "interval_s": 0.1})
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(path), "--no-console"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: sum(e["kind"] == "frame" for e in read_jsonl(events)) >= 20, 120, "frames")
        assert all(e["picture"] == "ok" for e in statuses())  # 2 s of a black picture, nothing said
        write({"blank_s": 0.5, "interval_s": 0.1})
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(e["picture"] == "blank" for e in statuses()), 60, "the blank picture")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, err[-3000:]
    states = [(e["state"], e["picture"]) for e in statuses()]
    assert ("stopped", "ok") in states and states.index(("stopped", "ok")) < states.index(("live", "blank"))
    assert "camera=cam event=camera_added" in err
