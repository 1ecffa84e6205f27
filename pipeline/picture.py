"""Picture health: whether a camera that streams on shows a useless picture. Imports only
pipeline.messages (and numpy).

A decoder hands ``PictureCheck`` a small grey ``thumbnail`` of a frame every ``interval_s`` of stream
time (and the frame's ``sharpness`` when the blur check is on); the check answers with a ``Picture``
verdict when it changes: ``frozen`` (the picture stopped changing), ``blank`` (no contrast), ``moved``
(the view is not the one the camera had: turned, knocked, re-aimed) or ``blurred`` (its fine detail
has faded: defocused, fogged, smeared). The first two are absolute; the last two compare the picture
with what this camera's picture usually looks like, learned from its own checks (``_Reference``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.messages import Picture

THUMB_WIDTH = 64  # thumbnail pixels across (64-80, whatever divides the frame evenly)
_SAMPLES = 4  # each thumbnail pixel: the mean of a 4 x 4 grid of samples spread over its block of the frame
_LUMA = np.array([0.114, 0.587, 0.299], np.float32)  # BT.601 grey from B, G, R
CLEAR_MARGIN = 1.5  # a verdict clears only past 1.5x its threshold (hysteresis: no flapping on the line)
_SLACK_S = 1e-6  # stream times are sums of frame periods: 15 frames of a 15 fps clip may be 0.9999999 s apart
_SHARP_LINES = 128  # rows and columns that sharpness() reads at full resolution
_CELL = 4  # view_match() compares cells of 4 x 4 thumbnail pixels (a 64 px thumbnail: 16 cells across)
_CELL_GRADIENT = 4.0  # a cell with structure: mean squared gradient over this (grey levels squared)
_CELL_AGREE = 0.5  # a cell still shows the same thing: cosine of its gradients with the reference's over this
_MIN_CELLS = 8  # fewer cells with structure than this: no view to compare


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A small grey picture of a frame, for comparing pictures cheaply.

    image: (H, W, 3) uint8 BGR. Returns (h, w) float32 grey levels (0-255), w about ``THUMB_WIDTH``
    (64-80; a frame narrower than 256 px: W / 4), h in the frame's proportions. Each pixel is the mean of
    a 4 x 4 grid of samples spread evenly over its block of the frame: an area downscale that reads 1
    pixel in 50 of a 1080p frame, 0.3-0.5 ms on one core for 720p to 4K (a full 30 x 30 block mean
    took 2.2 ms at 1080p, numpy's multi-axis mean over the strided view 1.6 ms).
    """
    step = max(image.shape[1] // (THUMB_WIDTH * _SAMPLES), 1)
    grid = image[::step, ::step]
    k = _SAMPLES if min(grid.shape[:2]) >= _SAMPLES else 1  # a frame of a few pixels: as it is
    gh, gw = grid.shape[0] // k * k, grid.shape[1] // k * k
    grey = grid[:gh, :gw].astype(np.float32) @ _LUMA
    grey = grey.reshape(gh, gw // k, k).sum(axis=2)
    return grey.reshape(gh // k, k, gw // k).sum(axis=1) / (k * k)


def sharpness(image: np.ndarray) -> float | None:
    """How much of a frame's contrast is fine detail: the RMS difference between neighbouring pixels
    over the standard deviation of the grey levels, at full resolution, read on ``_SHARP_LINES`` rows
    (left-right neighbours) and as many columns (up-down neighbours) spread over the frame.

    image: (H, W, 3) uint8 BGR. Returns a unitless figure (0.05-0.5 for camera pictures; it depends on
    the scene, so only its changes mean something); None when the picture has no contrast (grey std
    under 1). Brightness and contrast do not move it, blur lowers it: medians over coco128's first 60
    photographs (``benchmarks/picture.py``), a picture 0.3x as bright 1.00x, at 0.4x contrast 1.00x, with
    noise of std 5 1.03x, JPEG at quality 20 0.89x, Gaussian blur of 1 px 0.45x, 2 px 0.27x, 4 px 0.17x.
    0.9 ms at 720p, 1.3 ms at 1080p, 3.2 ms at 4K (one core).
    """
    h, w = image.shape[:2]
    if h < 2 or w < 2:
        return None
    rows = image[:: max(h // _SHARP_LINES, 1)].astype(np.float32) @ _LUMA
    cols = image[:, :: max(w // _SHARP_LINES, 1)].astype(np.float32) @ _LUMA
    std = math.sqrt((float(rows.var()) + float(cols.var())) / 2)
    if std < 1.0:
        return None
    dx, dy = np.diff(rows, axis=1), np.diff(cols, axis=0)
    return math.sqrt((float(np.square(dx).mean()) + float(np.square(dy).mean())) / 2) / std


def _gradients(thumb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.zeros_like(thumb), np.zeros_like(thumb)
    gx[:, 1:-1] = thumb[:, 2:] - thumb[:, :-2]
    gy[1:-1] = thumb[2:] - thumb[:-2]
    return gx, gy


def view_match(reference: np.ndarray, thumb: np.ndarray) -> float | None:
    """Which share of a view's structure a thumbnail still shows where the reference has it.

    reference, thumb: (h, w) float32 thumbnails of one camera. The thumbnails are cut into cells of
    ``_CELL`` x ``_CELL`` pixels; a cell with structure in the reference (mean squared gradient over
    ``_CELL_GRADIENT``) matches when the cosine between its gradients and the thumbnail's is over
    ``_CELL_AGREE``. Returns the fraction of such cells that match (0-1); None when the reference has
    fewer than ``_MIN_CELLS`` of them (nothing to compare) or the sizes differ. Gradient directions,
    not grey levels: light that brightens or dims the scene changes nothing; an object that covers part
    of the view costs only its cells; a view that moved loses nearly all. coco128's first 60 photographs
    against themselves changed (``benchmarks/picture.py``, median / 95th percentile): 0.3x as bright or
    0.4x the contrast 1.00 / 1.00, a third covered 0.66 / 0.68, shifted by 1 % of the width 0.80 / 0.94,
    3 % 0.21 / 0.49, 10 % 0.10 / 0.34, turned 2 degrees 0.62 / 0.85, 5 degrees 0.23 / 0.41. ``segpipe
    synth video`` clips against a view learned over their first 5 s, vehicles passing: 0.86 or more.
    0.07 ms.
    """
    if reference.shape != thumb.shape:
        return None
    h, w = (n // _CELL * _CELL for n in thumb.shape)
    if h == 0 or w == 0:
        return None
    (ax, ay), (bx, by) = _gradients(reference), _gradients(thumb)

    def cells(x: np.ndarray) -> np.ndarray:
        return x[:h, :w].reshape(h // _CELL, _CELL, w // _CELL, _CELL).sum(axis=(1, 3))

    energy_ref, energy = cells(ax * ax + ay * ay), cells(bx * bx + by * by)
    structured = energy_ref > _CELL_GRADIENT * _CELL * _CELL
    if int(structured.sum()) < _MIN_CELLS:
        return None
    cosine = cells(ax * bx + ay * by)[structured] / np.sqrt(energy_ref[structured] * energy[structured] + 1e-9)
    return float((cosine > _CELL_AGREE).mean())


@dataclass(frozen=True, slots=True, kw_only=True)
class PictureSettings:
    """What ``PictureCheck`` looks for (a camera's ``picture:`` section). Seconds are stream time;
    frozen_diff and blank_std are grey levels (0-255) of the thumbnail, moved_match a ``view_match``
    share, blurred_ratio a share of the usual ``sharpness``. A ``*_s`` of None: that check is off."""

    interval_s: float
    frozen_diff: float
    frozen_s: float | None
    blank_std: float
    blank_s: float | None
    moved_match: float = 0.4
    moved_s: float | None = None
    blurred_ratio: float = 0.5
    blurred_s: float | None = None
    learn_s: float = 60.0


@dataclass(slots=True)
class _Held:
    """A condition that comes on once it has held for ``hold_s`` (never when None), and goes off once it
    is clearly gone (past its threshold's margin, not merely over it)."""

    hold_s: float | None
    on: bool = False
    since: float | None = None  # when the current run of checks that found it began

    def update(self, *, found: bool, gone: bool, start: float, t: float) -> bool:
        """One check at ``t``: ``found`` the condition holds (since ``start``, when this begins a run),
        ``gone`` it clearly does not. Returns whether ``on`` changed."""
        if self.hold_s is None:
            return False
        if found:
            self.since = start if self.since is None else self.since
            if not self.on and t - self.since >= self.hold_s - _SLACK_S:
                self.on = True
                return True
            return False
        self.since = None
        if self.on and gone:
            self.on = False
            return True
        return False

    @property
    def engaged(self) -> bool:
        """On, or on its way (a run of checks that found it): what the camera shows now is not its usual
        picture, and a reference must not learn it."""
        return self.on or self.since is not None

    def for_s(self, t: float) -> str:
        if self.since is None:
            return ""
        d = t - self.since
        return f" for {d:.0f} s" if d >= 10 else f" for {d:.1f} s"


@dataclass(slots=True)
class _Reference:
    """What one camera's picture usually looks like: the mean of its first ``learn_s`` of checks, then
    an exponential average with time constant ``learn_s``, so that it follows slow change (dusk, a
    season) but not a sudden one. It is ready once it has learned ``learn_s`` of checks."""

    learn_s: float
    interval_s: float
    value: np.ndarray | float | None = None
    n: int = 0

    @property
    def ready(self) -> bool:
        return self.n * self.interval_s >= self.learn_s - _SLACK_S

    def learn(self, x: np.ndarray | float) -> None:
        if self.value is None or np.shape(self.value) != np.shape(x):  # the first, or a new picture size
            self.value, self.n = x, 1
            return
        w = max(1.0 / (self.n + 1), self.interval_s / self.learn_s)
        self.value = self.value + w * (x - self.value)
        self.n += 1


class PictureCheck:
    """The verdict on a camera's picture, from a ``thumbnail`` (and ``sharpness``) every ``interval_s``.

    frozen: the thumbnail changed by at most ``frozen_diff`` (mean absolute difference from the previous
    check) on every check for ``frozen_s``; back once a check sees it change by more than
    ``CLEAR_MARGIN * frozen_diff``. blank: the thumbnail's standard deviation stayed below ``blank_std``
    for ``blank_s``; back once it is above ``CLEAR_MARGIN * blank_std``.

    moved: the ``view_match`` of the thumbnail with the camera's usual view stayed below
    ``moved_match`` for ``moved_s``; back once it is over ``CLEAR_MARGIN * moved_match``. blurred: the
    frame's ``sharpness`` stayed below ``blurred_ratio`` of its usual level for ``blurred_s``; back once
    it is over ``CLEAR_MARGIN * blurred_ratio`` of it. The usual view and sharpness are ``_Reference``s
    learned from the checks themselves, except while the condition they judge is found or on, so a
    camera knocked aside stays ``moved`` until its view comes back. Neither is judged until its
    reference has ``learn_s`` of checks, nor on a blank picture. A decoder started afresh learns them
    again (a camera reported moved before is then judged against its new view, and is back).

    When several hold, the verdict is the most telling: blank, frozen, moved, blurred. Times are the
    decoder's stream time (seconds), so a file played faster than real time is judged on the video it
    holds; time that goes back starts the runs again (the references stay).
    """

    def __init__(self, settings: PictureSettings, *, picture: Picture = Picture.OK) -> None:
        """picture: the verdict to start from (a restarted decoder's camera keeps its own until its
        pictures say otherwise)."""
        self.s = settings
        self.picture = picture

        def held(hold_s: float | None, verdict: Picture) -> _Held:
            # a check that is off cannot hold a verdict it would never clear
            return _Held(hold_s, on=picture is verdict and hold_s is not None)

        self._frozen = held(settings.frozen_s, Picture.FROZEN)
        self._blank = held(settings.blank_s, Picture.BLANK)
        self._moved = held(settings.moved_s, Picture.MOVED)
        self._blurred = held(settings.blurred_s, Picture.BLURRED)
        # each problem's condition, the most telling first: the verdict when several hold
        self._held = {Picture.BLANK: self._blank, Picture.FROZEN: self._frozen, Picture.MOVED: self._moved,
                      Picture.BLURRED: self._blurred}
        self._view = _Reference(settings.learn_s, settings.interval_s)
        self._sharp = _Reference(settings.learn_s, settings.interval_s)
        self._thumb: np.ndarray | None = None
        self._t: float | None = None
        self.diff: float | None = None  # the last check's figures: change and contrast (grey levels),
        self.std = 0.0
        self.match: float | None = None  # view match and sharpness against the usual (None: not judged)
        self.sharp_ratio: float | None = None

    @property
    def wants_sharpness(self) -> bool:
        """Whether ``update`` is to be given the frame's ``sharpness`` (the blur check is on)."""
        return self.s.blurred_s is not None

    def due(self, t: float) -> bool:
        """Whether a frame at stream time ``t`` (seconds) is to be checked."""
        return self._t is None or not 0 <= t - self._t < self.s.interval_s - _SLACK_S

    def update(self, thumb: np.ndarray, t: float, sharp: float | None = None) -> tuple[Picture, str] | None:
        """Check one ``thumbnail`` taken at stream time ``t`` (and its frame's ``sharpness``, when
        ``wants_sharpness``); the new verdict and why, when it changed."""
        prev, start = self._thumb, self._t
        if start is None or t < start:  # the first check, or a clock that went back: runs start here
            for held in self._held.values():
                held.since = None
            start = t
        self.std = float(thumb.std())
        self.diff = (None if prev is None else math.inf if prev.shape != thumb.shape
                     else float(np.abs(thumb - prev).mean()))
        self._thumb, self._t = thumb, t
        if self.diff is not None:
            self._frozen.update(found=self.diff <= self.s.frozen_diff,
                                gone=self.diff > self.s.frozen_diff * CLEAR_MARGIN, start=start, t=t)
        self._blank.update(found=self.std < self.s.blank_std, gone=self.std > self.s.blank_std * CLEAR_MARGIN,
                           start=t, t=t)
        self._compare(thumb, sharp, t)
        verdict = next((p for p, held in self._held.items() if held.on), Picture.OK)
        if verdict is self.picture:
            return None
        before, self.picture = self.picture, verdict
        return verdict, self._detail(verdict, before, t)

    def _compare(self, thumb: np.ndarray, sharp: float | None, t: float) -> None:
        """The moved and blurred checks against the usual view and sharpness, which then learn this
        check unless what it shows is the condition they judge. A blank picture is neither judged nor
        learned (it has no view and no detail)."""
        blank = self.std < self.s.blank_std
        self.match = self.sharp_ratio = None
        if self.s.moved_s is not None and not blank:
            self.match = _against(self._moved, self._view, thumb, lambda usual: view_match(usual, thumb),
                                  self.s.moved_match, t)
        if self.s.blurred_s is not None and not blank and sharp is not None:
            self.sharp_ratio = _against(self._blurred, self._sharp, sharp, lambda usual: sharp / usual,
                                        self.s.blurred_ratio, t)

    def _detail(self, verdict: Picture, before: Picture, t: float) -> str:
        """``picture frozen for 30 s``, ``picture moved (view match 0.12) for 60 s``, ``picture back (std
        25.3)``: the verdict, the figure the check judged (not a frozen picture's change: about 0, it says
        nothing) and how long it held; back, the figure of the problem that went."""
        if verdict is Picture.OK:
            return f"picture back{self._figure(before)}"
        figure = "" if verdict is Picture.FROZEN else self._figure(verdict)
        return f"picture {verdict.value}{figure}{self._held[verdict].for_s(t)}"

    def _figure(self, problem: Picture) -> str:
        """The last check's figure for ``problem``, as `` (std 1.2)``; "" when it has none."""
        figures = {Picture.BLANK: f"std {self.std:.1f}",
                   Picture.FROZEN: None if self.diff is None else f"change {self.diff:.2f}",
                   Picture.MOVED: None if self.match is None else f"view match {self.match:.2f}",
                   Picture.BLURRED: None if self.sharp_ratio is None else f"sharpness {self.sharp_ratio:.2f} of usual"}
        figure = figures.get(problem)
        return "" if figure is None else f" ({figure})"


def _against(held: _Held, usual: _Reference, sample: Any, measure: Callable[[Any], float | None],
             threshold: float, t: float) -> float | None:
    """Judge one check against the camera's ``usual``: ``measure(usual.value)`` (None until it is ready,
    or when there is nothing to compare) holds ``held``'s condition when under ``threshold`` and clears it
    past ``CLEAR_MARGIN`` times that. ``usual`` then learns ``sample`` unless the condition is found or
    on (it must not learn the problem), or it is not ready yet. Returns the figure measured."""
    figure = measure(usual.value) if usual.ready else None
    if figure is not None:
        held.update(found=figure < threshold, gone=figure > threshold * CLEAR_MARGIN, start=t, t=t)
    if not held.engaged or not usual.ready:
        usual.learn(sample)
    return figure
