"""Camera state machine, and the picture verdict it carries. Imports only pipeline.messages.

A camera is in exactly one ``CameraState``; ``TRANSITIONS`` lists every allowed move and
``CameraStateMachine.transition()`` is the only way to change state. Each change emits one
``CameraStatus``; an illegal move raises (it is a bug in the decoder or supervisor, not a user error).

    CONNECTING --frame--> LIVE --no frames for stall_timeout--> STALLED --frames--> LIVE
        |                  |                                       |
        +--open failed-----+--read error / stream closed-----------+--> RECONNECTING --> CONNECTING
    LIVE --end of file--> ENDED;  any live state --gave up--> FAILED;  any live state --shutdown--> STOPPED
    ENDED, FAILED and STOPPED are final.

Beside its state a camera has a ``Picture`` (``pipeline.picture.PictureCheck`` decides it in the
decoder); ``CameraStateMachine.set_picture()`` emits a status (state unchanged) when the verdict
changes, and every status carries the verdict.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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
