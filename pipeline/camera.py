"""Camera state machine, and the health of its picture. Imports only pipeline.messages (and numpy).

A camera is in exactly one ``CameraState``; ``TRANSITIONS`` lists every allowed move and
``CameraStateMachine.transition()`` is the only way to change state. Each change emits one
``CameraStatus``; an illegal move raises (it is a bug in the decoder or supervisor, not a user error).

    CONNECTING --frame--> LIVE --no frames for stall_timeout--> STALLED --frames--> LIVE
        |                  |                                       |
        +--open failed-----+--read error / stream closed-----------+--> RECONNECTING --> CONNECTING
    LIVE --end of file--> ENDED;  any live state --gave up--> FAILED;  any live state --shutdown--> STOPPED
    ENDED, FAILED and STOPPED are final.

Beside its state a camera has a ``Picture``: ``ok``, or ``frozen`` / ``blank`` when it streams on with
a useless picture. ``PictureCheck`` decides it in the decoder from a small grey thumbnail taken every
``interval_s`` of stream time; ``CameraStateMachine.set_picture()`` emits a status (state unchanged)
when the verdict changes, and every status carries the verdict.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.messages import CameraState, CameraStatus, Picture

S = CameraState

TRANSITIONS: dict[CameraState, frozenset[CameraState]] = {
    S.CONNECTING: frozenset({S.LIVE, S.RECONNECTING, S.ENDED, S.FAILED, S.STOPPED}),
    S.LIVE: frozenset({S.STALLED, S.RECONNECTING, S.ENDED, S.FAILED, S.STOPPED}),
    S.STALLED: frozenset({S.LIVE, S.RECONNECTING, S.ENDED, S.FAILED, S.STOPPED}),
    S.RECONNECTING: frozenset({S.CONNECTING, S.FAILED, S.STOPPED}),
    S.ENDED: frozenset(),
    S.FAILED: frozenset(),
    S.STOPPED: frozenset(),
}
"""Allowed moves: ``TRANSITIONS[current]`` is the set of states reachable in one step."""

TERMINAL: frozenset[CameraState] = frozenset({S.ENDED, S.FAILED, S.STOPPED})
"""States a decoder never leaves by itself: the camera produces no more frames."""

STATE_CODES: dict[CameraState, int] = {s: i for i, s in enumerate(CameraState)}
"""Small integer per state, for the shared-memory control block (the console reads it)."""

CODE_STATES: dict[int, CameraState] = {i: s for s, i in STATE_CODES.items()}


class IllegalTransition(RuntimeError):
    """A move that ``TRANSITIONS`` does not allow (a bug, never a user mistake)."""


class CameraStateMachine:
    """The state of one camera, changed only through ``transition()``.

    ``emit`` receives one ``CameraStatus`` per change (the decoder sends it to the supervisor); it is
    called under the machine's lock, so it must not call back into the machine.
    Thread-safe: the decoder's read loop and its stall watchdog both call ``transition()``.
    """

    def __init__(self, *, camera_id: str, emit: Callable[[CameraStatus], None],
                 initial: CameraState = S.CONNECTING, announce: bool = True, picture: Picture = Picture.OK) -> None:
        """picture: the verdict to start from (a restarted decoder keeps its camera's)."""
        self.camera_id = camera_id
        self._emit = emit
        self._state = initial
        self._picture = picture
        self.detail = ""  # why it is in its state (the last status's detail): a failed camera's reason
        self._lock = threading.Lock()
        if announce:
            emit(CameraStatus(camera_id=camera_id, state=initial, ts=time.time(), detail="start", picture=picture))

    @property
    def state(self) -> CameraState:
        return self._state

    @property
    def picture(self) -> Picture:
        return self._picture

    def set_picture(self, picture: Picture, detail: str) -> CameraStatus | None:
        """Change the picture verdict and emit its ``CameraStatus`` (the state as it is); nothing when
        ``picture`` is the verdict already."""
        with self._lock:
            if picture is self._picture:
                return None
            self._picture, self.detail = picture, detail
            status = CameraStatus(camera_id=self.camera_id, state=self._state, ts=time.time(), detail=detail,
                                  picture=picture)
            self._emit(status)
        return status

    def can(self, new: CameraState) -> bool:
        """True when ``new`` is one step away from the current state."""
        return new in TRANSITIONS[self._state]

    def transition(self, new: CameraState, detail: str = "") -> CameraStatus:
        """Move to ``new`` and emit its ``CameraStatus``; raise ``IllegalTransition`` if not allowed."""
        status = self._move(new, detail)
        if status is None:
            raise IllegalTransition(
                f"camera {self.camera_id}: {self._state.value} -> {new.value} is not allowed")
        return status

    def transition_if(self, new: CameraState, detail: str = "") -> CameraStatus | None:
        """``transition()`` when allowed, else nothing (for racy moves such as STALLED vs. a new frame)."""
        return self._move(new, detail)

    def _move(self, new: CameraState, detail: str) -> CameraStatus | None:
        # Emitting under the lock keeps statuses in the order the moves happened.
        with self._lock:
            if new not in TRANSITIONS[self._state]:
                return None
            self._state, self.detail = new, detail
            status = CameraStatus(camera_id=self.camera_id, state=new, ts=time.time(), detail=detail,
                                  picture=self._picture)
            self._emit(status)
        return status

    def follow(self, status: CameraStatus) -> None:
        """Adopt a state (and picture) another machine already validated and emitted (the supervisor
        mirrors its decoders' machines); emits nothing."""
        with self._lock:
            self._state, self.detail, self._picture = status.state, status.detail, status.picture


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential back-off with jitter: attempt ``n`` (0-based) waits
    ``min(max_s, initial_s * 2**n) * (1 + uniform(-jitter, jitter))`` seconds."""

    initial_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_s, self.initial_s * 2.0 ** min(attempt, 62))
        return max(0.0, base * (1.0 + rng.uniform(-self.jitter, self.jitter)))


# ------------------------------------------------------------------------------------ picture health

THUMB_WIDTH = 64  # thumbnail pixels across (64-80, whatever divides the frame evenly)
_SAMPLES = 4  # each thumbnail pixel: the mean of a 4 x 4 grid of samples spread over its block of the frame
_LUMA = np.array([0.114, 0.587, 0.299], np.float32)  # BT.601 grey from B, G, R
CLEAR_MARGIN = 1.5  # a verdict clears only past 1.5x its threshold (hysteresis: no flapping on the line)
_SLACK_S = 1e-6  # stream times are sums of frame periods: 15 frames of a 15 fps clip may be 0.9999999 s apart


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


@dataclass(frozen=True, slots=True, kw_only=True)
class PictureSettings:
    """What ``PictureCheck`` looks for (a camera's ``picture:`` section). Seconds are stream time;
    frozen_diff and blank_std are grey levels (0-255) of the thumbnail. frozen_s / blank_s None: that
    check is off."""

    interval_s: float
    frozen_diff: float
    frozen_s: float | None
    blank_std: float
    blank_s: float | None


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

    def for_s(self, t: float) -> str:
        if self.since is None:
            return ""
        d = t - self.since
        return f" for {d:.0f} s" if d >= 10 else f" for {d:.1f} s"


class PictureCheck:
    """Whether a camera's picture is frozen or blank, from a ``thumbnail`` every ``interval_s``.

    frozen: the thumbnail changed by at most ``frozen_diff`` (mean absolute difference from the previous
    check) on every check for ``frozen_s``; back once a check sees it change by more than
    ``CLEAR_MARGIN * frozen_diff``. blank: the thumbnail's standard deviation stayed below ``blank_std``
    for ``blank_s``; back once it is above ``CLEAR_MARGIN * blank_std``. Blank wins when both hold (a
    black picture does not change either). Times are the decoder's stream time (seconds), so a file
    played faster than real time is judged on the video it holds; time that goes back starts the runs
    again.
    """

    def __init__(self, settings: PictureSettings, *, picture: Picture = Picture.OK) -> None:
        """picture: the verdict to start from (a restarted decoder's camera keeps its own until its
        pictures say otherwise)."""
        self.s = settings
        self.picture = picture
        # a check that is off cannot hold a verdict it would never clear
        self._frozen = _Held(settings.frozen_s, on=picture is Picture.FROZEN and settings.frozen_s is not None)
        self._blank = _Held(settings.blank_s, on=picture is Picture.BLANK and settings.blank_s is not None)
        self._thumb: np.ndarray | None = None
        self._t: float | None = None
        self.diff: float | None = None  # the last check's change and contrast (grey levels)
        self.std = 0.0

    def due(self, t: float) -> bool:
        """Whether a frame at stream time ``t`` (seconds) is to be checked."""
        return self._t is None or not 0 <= t - self._t < self.s.interval_s - _SLACK_S

    def update(self, thumb: np.ndarray, t: float) -> tuple[Picture, str] | None:
        """Check one ``thumbnail`` taken at stream time ``t``; the new verdict and why, when it changed."""
        prev, start = self._thumb, self._t
        if start is None or t < start:  # the first check, or a clock that went back: runs start here
            self._frozen.since = self._blank.since = None
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
        verdict = Picture.BLANK if self._blank.on else Picture.FROZEN if self._frozen.on else Picture.OK
        if verdict is self.picture:
            return None
        before, self.picture = self.picture, verdict
        if verdict is Picture.BLANK:
            return verdict, f"picture blank (std {self.std:.1f}){self._blank.for_s(t)}"
        if verdict is Picture.FROZEN:
            return verdict, f"picture frozen{self._frozen.for_s(t)}"
        measure = (f" (std {self.std:.1f})" if before is Picture.BLANK else
                   "" if self.diff is None else f" (change {self.diff:.2f})")
        return verdict, f"picture back{measure}"
