"""The decoder processes of a run: one per camera, started, watched, restarted and stopped here.

Imports pipeline's camera, decoder, shm and messages (and, when asked for status rows or stats, the
sink config's ``redact_url`` and metrics' ``StageStats``); the supervisor owns the pool, spawns the
processes for it (``spawn``) and publishes the statuses it hands back (``publish``).

A decoder that exits unexpectedly, or stops beating its heartbeat for ``heartbeat_timeout_s`` (then
it is killed), is restarted after the camera's back-off, up to ``max_restarts`` failures in a row
(FAILED after that). Every camera gets a shared-memory index of its own, never reused in a run, so a
camera removed and added again by a reload cannot meet its old ring.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from engines.urls import redact_url
from pipeline import shm
from pipeline.camera import TERMINAL, CameraStateMachine
from pipeline.decoder import DecoderSettings, decoder_main
from pipeline.messages import CameraState, CameraStatus

log = logging.getLogger("segpipe.supervisor")  # the pool is part of the supervisor's story
S = CameraState
DECODER_STOP_GRACE_S = 5.0


@dataclass(slots=True)
class CameraHandle:
    """The supervisor's view of one camera: its control block, its decoder process, its state."""

    settings: DecoderSettings
    prefix: str
    control: shm.ControlBlock
    machine: CameraStateMachine
    heartbeat_timeout_s: float
    proc: Any = None
    conn: Connection | None = None
    restarts: int = 0  # consecutive, reset once the camera is live again
    reconnects: int = 0  # RECONNECTING statuses since the start (decoder reconnects and restarts)
    reported_reconnects: int = 0
    restart_at: float | None = None
    last: dict[str, float | int] = field(default_factory=dict)  # control snapshot at the last stats tick

    @property
    def camera_id(self) -> str:
        return self.settings.camera_id

    @property
    def done(self) -> bool:
        return self.machine.state in TERMINAL and self.proc is None and self.restart_at is None


class DecoderPool:
    """Every camera's decoder process. ``spawn(name, target, *args)`` starts a child process;
    ``publish`` gets each camera status, the decoders' own and the pool's (restart, give up, stop)."""

    def __init__(self, *, spawn: Callable[..., Any], pipe: Callable[..., tuple[Connection, Connection]],
                 publish: Callable[[CameraStatus], None]) -> None:
        self.spawn, self.pipe, self.publish = spawn, pipe, publish
        self.cameras: list[CameraHandle] = []
        self._next_index = 0
        self._rng = random.Random()

    def add(self, cam: Any) -> CameraHandle:
        """A handle (and control block) for camera config ``cam``; its decoder is not started yet."""
        prefix = shm.prefix_for(self._next_index)
        self._next_index += 1
        handle = CameraHandle(
            settings=DecoderSettings.from_config(cam), prefix=prefix,
            control=shm.ControlBlock(prefix, create=True), heartbeat_timeout_s=cam.heartbeat_timeout_s,
            machine=CameraStateMachine(camera_id=cam.id, emit=lambda s: None, announce=False))
        self.cameras.append(handle)
        return handle

    def start(self, cam: CameraHandle, *, initial: CameraState) -> None:
        reader, writer = self.pipe(duplex=False)
        # The heartbeat field belongs to the decoder; set it once here, before the process exists,
        # so a decoder that hangs before its first beat is still caught.
        cam.control.set("heartbeat", time.monotonic())
        cam.control.set("stop", 0)
        # a restarted decoder starts from its camera's picture verdict: a frozen camera stays frozen (no
        # "picture back" then "frozen" again frozen_s later) until its pictures say otherwise
        cam.proc = self.spawn(f"decoder-{cam.camera_id}", decoder_main, cam.settings, cam.prefix, writer, initial,
                              cam.machine.picture)
        writer.close()
        cam.conn = reader
        cam.restart_at = None

    @property
    def done(self) -> bool:
        return all(c.done for c in self.cameras)

    def conns(self) -> list[Connection]:
        return [c.conn for c in self.cameras if c.conn is not None]

    def readable(self, conn: object) -> None:
        """``conn`` (one of ``conns()``) has statuses waiting: take them."""
        self._messages(next(c for c in self.cameras if c.conn is conn))

    def _messages(self, cam: CameraHandle) -> None:
        conn = cam.conn
        assert conn is not None
        try:
            while conn.poll():
                self._status(cam, conn.recv())
        except (EOFError, OSError):
            conn.close()
            cam.conn = None

    def _status(self, cam: CameraHandle, status: CameraStatus) -> None:
        cam.machine.follow(status)
        if status.state is S.LIVE:
            cam.restarts = 0
        if status.state is S.RECONNECTING:
            cam.reconnects += 1
        self.publish(status)

    def _transition(self, cam: CameraHandle, state: CameraState, detail: str) -> None:
        """A state change the pool itself decides (restart, give up, stop)."""
        status = cam.machine.transition_if(state, detail)
        if status is not None:
            if state is S.RECONNECTING:
                cam.reconnects += 1
            self.publish(status)

    def watch(self) -> None:
        """Restart decoders whose back-off is over; kill hung ones; notice the ones that exited."""
        now = time.monotonic()
        for cam in self.cameras:
            if cam.proc is None:
                if cam.restart_at is not None and now >= cam.restart_at:
                    cam.control.add("restarts")
                    self.start(cam, initial=S.RECONNECTING)
                continue
            if cam.proc.is_alive():
                silent = now - cam.control.get("heartbeat")
                if silent > cam.heartbeat_timeout_s:
                    log.warning("camera=%s event=decoder_hung silent_s=%.1f pid=%s", cam.camera_id, silent,
                                cam.proc.pid)
                    cam.proc.kill()
                    cam.proc.join(5)
                    self._exited(cam, f"decoder hung for {silent:.0f}s, killed")
                continue
            cam.proc.join()
            self._exited(cam, f"decoder exited with code {cam.proc.exitcode}")

    def _exited(self, cam: CameraHandle, why: str) -> None:
        self._hang_up(cam)
        cam.proc = None
        if cam.machine.state in TERMINAL:
            return  # ended or gave up by itself: nothing to restart
        cam.restarts += 1
        limit = cam.settings.max_restarts
        if limit is not None and cam.restarts > limit:
            self._transition(cam, S.FAILED, f"{why}; gave up after {limit} restarts")
            return
        delay = cam.settings.backoff.delay(cam.restarts - 1, self._rng)
        log.warning("camera=%s event=decoder_restart why=%r in_s=%.1f", cam.camera_id, why, delay)
        self._transition(cam, S.RECONNECTING, f"{why}; restart in {delay:.1f}s")
        cam.restart_at = time.monotonic() + delay

    def _hang_up(self, cam: CameraHandle) -> None:
        """Take a gone decoder's last statuses (they come before the pool's verdict), then close."""
        if cam.conn is not None:
            self._messages(cam)
        if cam.conn is not None:
            cam.conn.close()
            cam.conn = None

    def stop(self, cams: list[CameraHandle] | None = None, *, detail: str = "pipeline stopped") -> None:
        """Stop ``cams`` (default: all) together: all asked at once, then waited for, killed if slow."""
        cams = self.cameras if cams is None else cams
        for cam in cams:
            cam.control.set("stop", 1)
            cam.restart_at = None
        deadline = time.monotonic() + DECODER_STOP_GRACE_S
        for cam in cams:
            if cam.proc is not None:
                cam.proc.join(max(0.0, deadline - time.monotonic()))
                if cam.proc.is_alive():
                    log.warning("camera=%s event=decoder_killed reason=stop_timeout", cam.camera_id)
                    cam.proc.kill()
                    cam.proc.join(5)
            self._hang_up(cam)
            cam.proc = None
            self._transition(cam, S.STOPPED, detail)

    def rows(self) -> list[dict[str, Any]]:
        """Per camera: id, state, picture, url (credentials hidden) and its control block's counters."""
        out = []
        for c in self.cameras:
            counters = c.control.snapshot()
            for k in ("heartbeat", "stop", "gen", "latest_seq", "taken_seq", "state"):  # the ring's bookkeeping
                counters.pop(k)
            out.append({"id": c.camera_id, "state": c.machine.state.value, "picture": c.machine.picture.value,
                        "url": redact_url(c.settings.url), **counters})
        return out

    def take_stats(self) -> Any:
        """Counter deltas of every camera since the previous call, as a metrics ``StageStats``."""
        from pipeline.metrics import StageStats

        decoded, inferred, dropped, reconnects = {}, {}, {}, {}
        for cam in self.cameras:
            now = cam.control.snapshot()
            last = cam.last or {k: 0 for k in now}
            cid = cam.camera_id
            decoded[cid] = int(now["decoded"] - last["decoded"])
            inferred[cid] = int(now["inferred"] - last["inferred"])
            reconnects[cid] = cam.reconnects - cam.reported_reconnects
            cam.reported_reconnects = cam.reconnects
            dropped[cid, "overwritten"] = int(now["dropped"] - last["dropped"])
            dropped[cid, "stale"] = int(now["stale"] - last["stale"])
            cam.last = now
        states = {c.camera_id: c.machine.state for c in self.cameras}
        return StageStats(stage="supervisor", decoded=decoded, inferred=inferred, dropped=dropped,
                          reconnects=reconnects, camera_states=states)

    def remove(self, camera_ids: tuple[str, ...]) -> list[CameraHandle]:
        """Stop and forget these cameras (a reload removed them); their control blocks are closed and
        their shared-memory names unlinked (a reader still mapping them keeps its mapping)."""
        gone = [c for c in self.cameras if c.camera_id in camera_ids]
        self.stop(gone, detail="removed from the config")
        for cam in gone:
            self.cameras.remove(cam)
            cam.control.close()
            shm.unlink_all(cam.prefix + "_")
        return gone
