"""Live per-camera table for ``segpipe run``. Imports pipeline.messages only.

On a terminal the table is redrawn in place about once a second; when stdout is not a TTY (a log
file, a container) it is printed as plain text blocks, so logs stay readable and greppable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from pipeline.messages import CameraState, Picture

log = logging.getLogger("segpipe.console")

_COLUMNS = ("CAMERA", "STATE", "PICTURE", "SIZE", "DEC/s", "INF/s", "DROPS", "STALE", "LAT ms", "RESTARTS", "TRACKS", "IN/OUT")


@dataclass(frozen=True, slots=True)
class CameraRow:
    """One camera's line. fps are rates over the last refresh; latency_ms is capture -> results;
    tracks: objects tracked so far (None: tracking off); crossed: (in, out) over its counting lines so
    far (None: it has none); picture: ok, frozen, blank, moved or blurred (its frames are inferred all the same)."""

    camera_id: str
    state: CameraState
    size: str
    decoded_fps: float
    inferred_fps: float
    dropped: int
    stale: int
    latency_ms: float
    restarts: int
    tracks: int | None = None
    crossed: tuple[int, int] | None = None
    picture: Picture = Picture.OK


def camera_row(camera_id: str, state: CameraState, now: Mapping[str, Any],
               before: Mapping[str, Any] | None, dt: float) -> CameraRow:
    """A row from two control-block snapshots ``dt`` seconds apart (``before`` None: no rates yet); the
    camera's picture verdict comes in ``now["picture"]`` (absent: ok)."""
    def rate(key: str) -> float:
        if not before or dt <= 0:
            return 0.0
        return max(0.0, (now[key] - before[key]) / dt)

    w, h = int(now.get("width", 0)), int(now.get("height", 0))
    tracks, crossed = now.get("tracks"), now.get("crossed")
    return CameraRow(camera_id=camera_id, state=state, size=f"{w}x{h}" if w else "-",
                     decoded_fps=rate("decoded"), inferred_fps=rate("inferred"), dropped=int(now["dropped"]),
                     stale=int(now["stale"]), latency_ms=float(now["latency_ms"]), restarts=int(now["restarts"]),
                     tracks=None if tracks is None else int(tracks),
                     crossed=None if crossed is None else (int(crossed[0]), int(crossed[1])),
                     picture=Picture(now.get("picture", "ok")))


def render(rows: Sequence[CameraRow], *, header: str = "") -> str:
    """The table as text (no colours, no cursor codes), one line per camera plus a total."""
    cells = [_COLUMNS]
    for r in rows:
        cells.append((r.camera_id, r.state.value, r.picture.value, r.size, f"{r.decoded_fps:.1f}",
                      f"{r.inferred_fps:.1f}", str(r.dropped), str(r.stale), f"{r.latency_ms:.0f}" if r.latency_ms else "-",
                      str(r.restarts), "-" if r.tracks is None else str(r.tracks),
                      "-" if r.crossed is None else f"{r.crossed[0]}/{r.crossed[1]}"))
    tracked = [r.tracks for r in rows if r.tracks is not None]
    crossed = [r.crossed for r in rows if r.crossed is not None]
    bad = sum(r.picture is not Picture.OK for r in rows)
    cells.append(("total", f"{sum(r.state is CameraState.LIVE for r in rows)}/{len(rows)} live",
                  f"{bad} bad" if bad else "", "",
                  f"{sum(r.decoded_fps for r in rows):.1f}", f"{sum(r.inferred_fps for r in rows):.1f}",
                  str(sum(r.dropped for r in rows)), str(sum(r.stale for r in rows)), "", "",
                  str(sum(tracked)) if tracked else "",
                  f"{sum(c[0] for c in crossed)}/{sum(c[1] for c in crossed)}" if crossed else ""))
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    return "\n".join(([header] if header else []) + lines)


class Console:
    """Prints the table at most every ``interval_s`` (call ``update`` as often as convenient)."""

    def __init__(self, *, stream: IO[str] | None = None, interval_s: float = 1.0, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.interval_s = interval_s
        self.tty = self.stream.isatty() if tty is None else tty
        self._before: dict[str, Mapping[str, float | int]] = {}
        self._last = 0.0
        self._drawn = 0  # lines drawn last time (TTY redraw)
        self._off = False  # the stream went away: the table stops, the run goes on

    def update(self, cameras: Sequence[tuple[str, CameraState, Mapping[str, Any]]],
               *, header: str = "", force: bool = False) -> None:
        """cameras: (camera id, state, control-block snapshot) per camera. ``force``: now, whatever the
        interval (the final table)."""
        now = time.monotonic()
        if self._off or self._last and now - self._last < self.interval_s * 0.9 and not force:
            return
        dt = now - self._last if self._last else 0.0
        rows = [camera_row(cid, state, snap, self._before.get(cid), dt) for cid, state, snap in cameras]
        self._before = {cid: dict(snap) for cid, _, snap in cameras}
        self._last = now
        text = render(rows, header=header)
        try:
            if self.tty:
                # Move up over the previous table and clear to the end of the screen, then redraw.
                prefix = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
                self.stream.write(prefix + text + "\n")
                self._drawn = text.count("\n") + 1
            else:
                self.stream.write(f"--- {time.strftime('%H:%M:%S')}\n{text}\n")
            self.stream.flush()
        except OSError as e:  # a pipe whose reader exited (| head, a dead tee), a closed terminal
            self._stream_gone(e)

    def _stream_gone(self, error: OSError) -> None:
        """Stop the table, not the run: a camera wall must not die with whatever read its stdout."""
        self._off = True
        log.warning("event=console_off reason=%r (the run goes on; segpipe status shows the table)", str(error))
        if self.stream is sys.stdout:
            stdout_to_devnull()


def stdout_to_devnull() -> None:
    """Point stdout's descriptor at /dev/null once its reader has gone: Python flushes stdout at exit, and
    what is left in its buffer would fail again (exit status 120)."""
    with contextlib.suppress(OSError, ValueError):
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
