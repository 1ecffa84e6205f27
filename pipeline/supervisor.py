"""The supervisor: starts, watches, restarts and stops the runtime's processes. Runs in the main
process of ``segpipe run``.

    decoder x N --shm ring--> device stage --queue--> sink stage
         \\--status pipe--> supervisor --CameraStatus--^   (and StageStats -> Prometheus metrics)

Why processes: a decoder stuck in FFmpeg or a sink library that crashes takes only itself down. The
supervisor's ``DecoderPool`` (pipeline/decoders.py) restarts a decoder that exits unexpectedly or stops
beating its heartbeat (killed after ``heartbeat_timeout_s``), with the camera's back-off, up to
``max_restarts`` in a row. A device stage, event worker or sink stage that dies (a crash in a native
library, the OOM killer), or hangs (``STAGE_HANG_S``: then it is killed), takes the data plane down and
up again while the decoders stream on: the device stage, workers and sink stage are stopped (killed
where nothing can take their output) and started afresh with new queues, up to ``STAGE_RESTARTS``
times in ``STAGE_RESTART_WINDOW_S``; one more ends the run. A stage that reports an error (a model
that does not load, a sink that cannot be set up) ends the run at once: starting it again would fail
the same way. First error wins.

Shutdown (SIGINT/SIGTERM, every camera ended, or a stage failure) runs downstream in order so nothing
is lost or blocked: decoders are asked to stop (then killed) -> the device stage finishes every batch
already gathered and exits -> STOP goes to the sink stage, which flushes and closes its sinks ->
every shared-memory segment is unlinked. While waiting, the supervisor drains the sink queue itself if
the sink stage is gone, so the device stage never blocks on it.

Reload (``request_reload``; ``segpipe run`` calls it on SIGHUP): the config is read again; removed
cameras are stopped (their decoder, then their ring is detached from the device stage and unlinked;
status ``stopped``), added ones started, changed ones both; new zones and lines go to the sink stage;
a new model (or masks section) is loaded by the device stage beside the running one and swapped in
between two batches (kept out, with the old one running on, if it fails to load). The other cameras
and the sinks run on untouched. A config that does not load is reported and the running one kept. A
replica (``--shard``) whose cameras all move away stops them and idles until a reload gives it some.

Children ignore SIGINT (inherited SIG_IGN) and SIGTERM (set first thing): Ctrl-C reaches the whole
process group, and so does SIGTERM from systemd (KillMode=control-group, its default), timeout(1) or
``kill -- -PGID``, but only the supervisor decides how to stop, in order (a device stage killed by such a
SIGTERM lost its batches and ended the run as a failure). It stops children with SIGKILL where it must;
on Linux they also die with the supervisor (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from pipeline import shm
from pipeline.decoders import CameraHandle, DecoderPool
from pipeline.logs import LogSetup
from pipeline.messages import STOP, CameraState, CameraStatus

if TYPE_CHECKING:
    from pipeline.config import RunConfig

# Every child unpickles _child_main from this module, so it imports nothing heavy at the top: a
# decoder process must not pay for torch (pipeline.device) or pydantic (pipeline.config).

log = logging.getLogger("segpipe.supervisor")
S = CameraState

SINK_QUEUE_SIZE = 256  # FrameResults between device and sink stage; a slow sink backs up into ring drops
STATS_QUEUE_SIZE = 1000
DEVICE_STOP_GRACE_S = 60.0  # in-flight batches on a slow CPU model
SINK_STOP_GRACE_S = 30.0
STAGE_RESTARTS = 3  # data-plane restarts allowed within STAGE_RESTART_WINDOW_S; one more ends the run
STAGE_RESTART_WINDOW_S = 600.0
RESTART_GRACE_S = 10.0  # a stage left running by a dead one may be stuck on its queues: killed after this
# a restarted stage's trackers start this far past the last track id reported: ids handed out in the
# second before a crash are never reported, and no id may name two objects
TRACK_ID_MARGIN = 1000
# a stage is taken for hung (killed, so the data plane starts again) after this long: the device stage
# with no frame inferred while cameras deliver frames, a sink stage or event worker with no report
STAGE_HANG_S = 60.0
_TICK_S = 0.1


def _refuse_reload(problems: list[str]) -> None:
    for line in problems:
        log.error("event=reload_failed error=%r", line)
    log.error("event=reload_failed kept=running_config")


def _child_main(logs: LogSetup | None, target: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Entry of every child: ignore SIGTERM (module doc), die with the supervisor (Linux), log as it does,
    then run ``target``."""
    # first: not inherited like SIGINT's SIG_IGN, since the supervisor must not ignore a SIGTERM of its own
    # while it starts a child (another thread of it could take the signal and drop it)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(Exception):  # best effort: not on macOS, not without libc
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if logs is not None:
        logs.apply()
    target(*args, **kwargs)


class Supervisor:
    """Runs one pipeline from a validated ``RunConfig``; ``run()`` returns the exit code (0 or 1)."""

    def __init__(self, *, cfg: RunConfig, on_status: Callable[[CameraStatus], None] | None = None,
                 on_tick: Callable[[Supervisor], None] | None = None, metrics: Any = None,
                 reloader: Callable[[], RunConfig] | None = None, logs: LogSetup | None = None) -> None:
        self.cfg = cfg
        self.logs = logs  # how the children log (None: as Python does by default, warnings only)
        self.reloader = reloader  # reads the config again (raises SegpipeError on a bad one)
        self.ctx = mp.get_context("spawn")
        self.on_status = on_status
        self.on_tick = on_tick
        self.metrics = metrics
        self.decoders = DecoderPool(spawn=self._spawn, pipe=self.ctx.Pipe, publish=self._publish)
        self.errors: list[str] = []
        self.ready = False
        self.device_info = ""
        self._stop_reason: str | None = None
        self._inbox: Any = None
        self._stats: Any = None
        self._device: Any = None
        self._device_conn: Connection | None = None
        self._device_stop: Any = None
        self._device_cmds: Any = None
        self._sink: Any = None
        self._workers: Any = None  # EventWorkers when events.workers > 1
        self._started = False  # the stages came up once: a later death restarts them
        self._restarting = False
        self._restart_times: list[float] = []  # monotonic times of data-plane restarts
        self.stage_restarts = 0  # in this run
        self._heard: dict[str, float] = {}  # stage (sinks, events<K>) -> monotonic time of its last report
        # frames decoded and inferred, and when inferred last grew (None: the hang clock starts at the next check)
        self._progress: tuple[int, int, float] | None = None
        self._hung: dict[str, str] = {}  # stage -> why it was killed as hung
        self._reload = False
        self._next_models: list[Any] = []  # configs whose model the device stage loads, in order
        self._updates: list[tuple[Any, Any]] = []  # (queue, CamerasUpdate) not sent yet: the queue was full
        self.model_names: tuple[str, ...] | None = None  # the running model's classes, once loaded
        self._tracks: dict[str, int] = {}  # track ids handed out per camera, from the sink stage's reports
        self._first_track_ids: dict[str, int] = {}  # camera -> first id of the running stages' trackers
        self._tracks_now: dict[str, int] = {}  # ids the running stages handed out (reported), per camera
        self._crossed: dict[str, list[int]] = {}  # (in, out) line crossings per camera, likewise
        self._snapshot: dict[str, Any] = {"ts": time.time(), "model": cfg.model.path, "device": "", "cameras": []}
        self._prefix = f"{shm.ROOT}{os.getpid()}_"

    # ----------------------------------------------------------------------------- lifecycle

    @property
    def cameras(self) -> list[CameraHandle]:
        return self.decoders.cameras

    def pids(self) -> dict[str, int]:
        """Process id of every running child by role (``decoder:<camera>``, ``device``, ``sinks``)."""
        out = {f"decoder:{c.camera_id}": c.proc.pid for c in self.cameras if c.proc is not None and c.proc.pid}
        for name, proc in (("device", self._device), ("sinks", self._sink)):
            if proc is not None and proc.pid and proc.is_alive():
                out[name] = proc.pid
        if self._workers is not None:
            out.update(self._workers.pids())
        return out

    def request_reload(self) -> None:
        """Ask for the config to be read again and applied (signal-safe: only sets a flag)."""
        self._reload = True

    def request_stop(self, reason: str) -> None:
        """Ask for a graceful shutdown (signal handlers call this; safe to call repeatedly)."""
        if self._stop_reason is None:
            self._stop_reason = reason
            log.info("event=shutdown reason=%s", reason)

    def run(self) -> int:
        """Start everything, supervise until done or asked to stop, shut down; returns the exit code."""
        removed = shm.sweep_stale()
        if removed:
            log.info("event=shm_sweep removed=%d", removed)
        try:
            self._start()
            self._loop()
        except BaseException as e:
            self._fail(f"supervisor: {type(e).__name__}: {e}")
            raise
        finally:
            self._shutdown()
        failed = [c.camera_id for c in self.cameras if c.machine.state is S.FAILED]
        if failed:
            log.error("event=cameras_failed cameras=%s", ",".join(failed))
        return 1 if self.errors or failed else 0

    def _start(self) -> None:
        for cam in self.cfg.cameras:
            self.decoders.add(cam)
        self._start_stages()
        if self._stop_reason is None and self.model_names is not None:
            from pipeline.config import check_labels

            # a label the model never produces would silently filter out everything (or start no clip)
            for err in check_labels(self.cfg, self.model_names)[:1]:
                self._fail(str(err))
        if self._stop_reason is None:
            self._started = True
            for handle in self.cameras:
                self.decoders.start(handle, initial=S.CONNECTING)

    def _rings(self) -> dict[str, str]:
        """Camera id -> the shm prefix of its ring, for sinks that read an event's frame back."""
        return {c.camera_id: c.prefix for c in self.cameras}

    def _start_stages(self) -> None:
        """The data plane: sink stage, event workers, device stage and the queues between them (all new);
        returns once the model is loaded and warm (or the run is stopping)."""
        from pipeline.device import DeviceSettings, device_main
        from pipeline.device_settings import preview_watch
        from pipeline.sinks.stage import run_sink_stage

        self.ready = False
        self._heard, self._hung = {}, {}  # new processes: nothing heard from them yet, none hung
        self._progress = None  # the hang clock starts again at the next check
        self._inbox = self.ctx.Queue(SINK_QUEUE_SIZE)
        self._stats = self.ctx.Queue(STATS_QUEUE_SIZE)
        # the device stage's commands: reloads from here, watched cameras from a preview sink
        previews = preview_watch(self.cfg) is not None
        self._device_cmds = self.ctx.Queue() if self.reloader is not None or previews else None
        watch_out = self._device_cmds if previews else None
        results = self._inbox
        if self.cfg.events.workers > 1:  # they make the events: the sink stage only publishes
            from pipeline.sinks.workers import EventWorkers

            self._workers = EventWorkers(count=self.cfg.events.workers, ctx=self.ctx, spawn=self._spawn,
                                         out=self._inbox, stats=self._stats, tracking=self.cfg.tracking,
                                         cameras=self.cfg.cameras, queue_size=SINK_QUEUE_SIZE,
                                         first_track_ids=dict(self._first_track_ids))
            results = self._workers.inboxes
            self._sink = self._spawn("sinks", run_sink_stage, inbox=self._inbox, configs=list(self.cfg.sinks),
                                     stats=self._stats, watch_out=watch_out, rings=self._rings())
        else:
            self._sink = self._spawn("sinks", run_sink_stage, inbox=self._inbox, configs=list(self.cfg.sinks),
                                     stats=self._stats, tracking=self.cfg.tracking, cameras=self.cfg.cameras,
                                     watch_out=watch_out, first_track_ids=dict(self._first_track_ids),
                                     rings=self._rings())
        self._device_stop = self.ctx.Event()
        reader, writer = self.ctx.Pipe(duplex=False)
        cams = [(c.camera_id, c.prefix, self.cfg.camera(c.camera_id).roi) for c in self.cameras]
        self._device = self._spawn("device", device_main, DeviceSettings.from_config(self.cfg), cams,
                                   results, self._device_stop, writer, self._device_cmds,
                                   None if self._workers is None else dict(self._workers.route))
        writer.close()
        self._device_conn = reader
        # Decoders start once the model is loaded and warm: a short file would otherwise be over
        # (or a live stream's first seconds dropped as stale) before the first batch runs.
        while not self.ready and self._stop_reason is None:
            self._poll(_TICK_S)
            self._watch_stages()

    def _spawn(self, name: str, target: Callable[..., None], *args: Any, **kwargs: Any) -> Any:
        proc = self.ctx.Process(target=_child_main, args=(self.logs, target, *args), kwargs=kwargs,
                                name=f"segpipe-{name}")
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the child: see module doc
        try:
            proc.start()
        finally:
            signal.signal(signal.SIGINT, old)
        return proc

    # ------------------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        next_tick = time.monotonic()
        while self._stop_reason is None:
            self._poll(_TICK_S)
            self.decoders.watch()
            self._watch_stages()
            if self._reload:
                self._reload = False
                self._apply_reload()
            if self._updates:
                self._send_updates()
            if self.cameras and self.decoders.done:  # none at all: a reload emptied this shard, idle
                self.request_stop("all cameras ended")
            if time.monotonic() >= next_tick:
                self._tick()
                next_tick = time.monotonic() + 1.0

    def _poll(self, timeout: float) -> None:
        """Wait for messages from decoders and the device stage; handle what arrived."""
        conns = self.decoders.conns()
        if self._device_conn is not None:
            conns.append(self._device_conn)
        if not conns:
            time.sleep(timeout)
        for conn in wait(conns, timeout) if conns else ():
            if conn is self._device_conn:
                self._device_message()
            else:
                self.decoders.readable(conn)
        self._drain_stats()

    def _publish(self, status: CameraStatus) -> None:
        log.info("camera=%s state=%s picture=%s detail=%r", status.camera_id, status.state.value,
                 status.picture.value, status.detail)
        if self.metrics is not None:
            self.metrics.set_camera_state(status.camera_id, status.state)
            self.metrics.set_camera_picture(status.camera_id, status.picture, status.state)
        if self.on_status is not None:
            self.on_status(status)
        if self._sink is None or not self._sink.is_alive():
            return
        # with event workers, a status goes where its camera's frames go (tracks end on it, in order)
        inbox = self._inbox if self._workers is None else self._workers.inbox_of(status.camera_id)
        try:
            inbox.put(status, timeout=2.0)
        except queue.Full:
            log.warning("camera=%s event=status_dropped reason=sink_queue_full", status.camera_id)

    def _device_message(self) -> None:
        conn = self._device_conn
        assert conn is not None
        try:
            while conn.poll():
                kind, payload = conn.recv()
                if kind == "names":
                    self.model_names = tuple(payload)
                elif kind == "ready":
                    self.ready, self.device_info = True, payload
                    log.info("event=device_ready %s", payload)
                    if self.metrics is not None:
                        self.metrics.set_engine_loaded(True)
                elif kind == "stats" and self.metrics is not None:
                    self.metrics.apply(payload)
                elif kind == "error":
                    self._fail(f"device stage: {payload}")
                elif kind == "model_ready":
                    self.device_info, seconds = payload  # what status() and /cameras say runs now
                    log.info("event=model_swapped %s, swapped in %.2f s", self.device_info, seconds)
                    if self._next_models:
                        done = self._next_models.pop(0)
                        self.cfg = self.cfg.model_copy(update={"model": done.model, "masks": done.masks})
                    from pipeline.config import check_labels

                    for err in check_labels(self.cfg, self.model_names or ()):
                        log.warning("event=classes_unknown_to_new_model error=%r", str(err))
                elif kind == "model_error":
                    log.error("event=model_swap_failed error=%r kept=running_model", payload)
                    if self._next_models:
                        self._next_models.pop(0)
        except (EOFError, OSError):
            conn.close()
            self._device_conn = None

    def _drain_stats(self) -> None:
        while True:
            try:
                stats = self._stats.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            self._heard[stats.stage] = time.monotonic()
            if stats.error:
                self._fail(f"sink stage: {stats.error}")
            for cam, n in stats.tracks_started.items():
                self._tracks[cam] = self._tracks.get(cam, 0) + n
                self._tracks_now[cam] = self._tracks_now.get(cam, 0) + n
            for (cam, _, direction, _), n in stats.line_crossings.items():
                self._crossed.setdefault(cam, [0, 0])[direction == "out"] += n
            if self.metrics is not None:
                self.metrics.apply(stats)

    def _watch_stages(self) -> None:
        if self._stop_reason:
            return
        dead: tuple[str, str] | None = None
        if self._device is not None and not self._device.is_alive():
            if self._device_conn is not None:
                self._device_message()  # an error it reported (and so the end of the run) comes first
            dead = ("device", f"device stage exited with code {self._device.exitcode}")
        elif self._sink is not None and not self._sink.is_alive():
            self._drain_stats()
            dead = ("sinks", f"sink stage exited with code {self._sink.exitcode}")
        elif self._workers is not None:
            gone = self._workers.exited()
            if gone is not None:
                self._drain_stats()
                dead = ("events", gone)
        if dead is not None and not self._stop_reason:
            stage, error = dead
            hung = [why for name, why in self._hung.items() if name.startswith(stage)]
            if hung:  # killed by _check_hangs: say why rather than "exited with code -9"
                error = f"{error.split(' exited')[0]} hung ({hung[0]}) and was killed"
            self._restart_stages(stage, error)

    def _check_hangs(self) -> None:
        """Kill a stage that stopped working without dying (see ``STAGE_HANG_S``); ``_watch_stages`` then
        starts the data plane again."""
        now = time.monotonic()
        decoded = sum(int(c.control.get("decoded")) for c in self.cameras)
        inferred = sum(int(c.control.get("inferred")) for c in self.cameras)
        old_decoded, old_inferred, since = self._progress or (decoded, inferred, now)
        if not self.ready or inferred != old_inferred or decoded == old_decoded:
            since = now  # progress, or nothing to infer
        self._progress = (decoded, inferred, since)
        if not self.ready:
            return
        stuck = {}
        for stage, proc in [("sinks", self._sink), *(((f"events{k}", p) for k, p in enumerate(self._workers.procs))
                                                      if self._workers is not None else ())]:
            heard = self._heard.setdefault(stage, now)
            if now - heard > STAGE_HANG_S:
                stuck[stage] = (proc, f"no report for {now - heard:.0f} s")
        if not stuck and now - since > STAGE_HANG_S:  # (a device stage blocked on a stuck reader's queue is not)
            stuck["device"] = (self._device, f"no frame inferred for {now - since:.0f} s while cameras delivered")
        for stage, (proc, why) in stuck.items():
            if proc is not None and proc.is_alive():
                log.error("event=stage_hung stage=%s reason=%r action=kill", stage, why)
                self._hung[stage] = why
                proc.kill()

    def _restart_stages(self, stage: str, error: str) -> None:
        """A data-plane stage died: stop the others, start all of them again (see the module doc)."""
        now = time.monotonic()
        recent = [t for t in self._restart_times if now - t < STAGE_RESTART_WINDOW_S]
        if not self._started or self._restarting:
            self._fail(error if not self._restarting else f"{error} (while starting again after a failure)")
            return
        if len(recent) >= STAGE_RESTARTS:
            self._fail(f"{error} ({len(recent)} restarts in the last {STAGE_RESTART_WINDOW_S / 60:g} min)")
            return
        self._restart_times = [*recent, now]
        self.stage_restarts += 1
        log.error("event=stage_restart stage=%s error=%r restart=%d", stage, error, len(recent) + 1)
        if self.metrics is not None:
            self.metrics.stage_restarted(stage)
            self.metrics.set_engine_loaded(False)
        if self._next_models:
            log.warning("event=model_reload_lost reason=stage_restart (send SIGHUP again)")
            self._next_models.clear()
        self._updates.clear()  # for the old queues: the new stages start from the current cameras
        self._restarting = True
        try:
            self._stop_stages(grace_s=RESTART_GRACE_S)  # their last reports are in
            # every camera, reported or not: a stage killed before its first report had handed out ids too
            for cam in {*(c.camera_id for c in self.cameras), *self._tracks_now}:
                self._first_track_ids[cam] = (self._first_track_ids.get(cam, 1) + self._tracks_now.get(cam, 0)
                                              + TRACK_ID_MARGIN)
            self._tracks_now = {}
            self._start_stages()
        finally:
            self._restarting = False
        if self.ready:
            log.info("event=stage_restarted stage=%s", stage)

    def _fail(self, error: str) -> None:
        if not self.errors:
            log.error("event=stage_failed error=%r", error)
        self.errors.append(error)
        self.request_stop("error")

    def status(self) -> dict[str, Any]:
        """What the run looks like (refreshed every second; safe from any thread): model, device and,
        per camera, its state, url (credentials hidden) and control-block counters."""
        return self._snapshot

    def _tick(self) -> None:
        self._check_hangs()
        self._refresh_status()
        if self.metrics is not None:
            self.metrics.apply(self.camera_stats())
        if self.on_tick is not None:
            self.on_tick(self)

    def _refresh_status(self) -> None:
        cams = self.decoders.rows()
        lined = {c.id for c in self.cfg.cameras if c.lines}
        for cam in cams:
            if self.cfg.tracking.enabled:
                cam["tracks"] = self._tracks.get(cam["id"], 0)
            if cam["id"] in lined:
                cam["crossed"] = tuple(self._crossed.get(cam["id"], (0, 0)))
        self._snapshot = {"ts": time.time(), "model": self.cfg.model.path, "device": self.device_info,
                          "queues": self.queue_fill(), "stage_restarts": self.stage_restarts, "cameras": cams}

    def camera_stats(self) -> Any:
        """Counter deltas of every camera since the previous call, and how full the stages' queues
        are, as a metrics ``StageStats``."""
        return dataclasses.replace(self.decoders.take_stats(), queue_fill=self.queue_fill())

    def queue_fill(self) -> dict[str, float]:
        """How full the queue each stage reads is (0-1), by stage: ``sinks`` and ``events<K>``."""
        if self._inbox is None:  # not started
            return {}
        queues = {"sinks": self._inbox}
        if self._workers is not None:
            queues.update({f"events{k}": q for k, q in enumerate(self._workers.inboxes)})
        out = {}
        for name, q in queues.items():
            with contextlib.suppress(NotImplementedError, OSError, ValueError):  # qsize: not on macOS
                out[name] = min(max(q.qsize() / SINK_QUEUE_SIZE, 0.0), 1.0)
        return out

    # ---------------------------------------------------------------------------- shutdown

    def _shutdown(self) -> None:
        try:
            self.decoders.stop()
            log.debug("event=decoders_stopped")
            self._stop_stages()
            if self.metrics is not None and self.cameras:
                self.metrics.apply(self.camera_stats())  # the counts since the last tick
        finally:
            with contextlib.suppress(Exception):  # the final figures, for status() after the run
                self._refresh_status()
            for cam in self.cameras:
                c = cam.control.snapshot()
                log.info("camera=%s event=summary state=%s decoded=%d inferred=%d dropped=%d stale=%d restarts=%d",
                         cam.camera_id, cam.machine.state.value, c["decoded"], c["inferred"], c["dropped"],
                         c["stale"], c["restarts"])
                cam.control.close()
            n = shm.unlink_all(self._prefix)
            log.info("event=stopped shm_segments_unlinked=%d errors=%d", n, len(self.errors))

    # ----------------------------------------------------------------------------- reload

    def read_config(self) -> RunConfig | None:
        """The config read again by ``reloader``; None (each problem logged) when it does not load."""
        from engines.errors import SegpipeError

        if self.reloader is None:
            log.warning("event=reload_ignored reason=no_config_to_read")
            return None
        try:
            return self.reloader()
        except SegpipeError as e:
            _refuse_reload(str(e).splitlines())
            return None

    def _apply_reload(self) -> None:
        from pipeline.reload import plan_reload
        from pipeline.sinks.stage import CamerasUpdate

        new = self.read_config()
        if new is None:
            return
        if not new.cameras:  # the shard lost every camera: stop them (another replica may run them now)
            log.warning("event=idle reason=no_cameras_in_shard (until a reload gives this replica some)")
        if self.model_names is not None and new.model == self.cfg.model:  # a new model is checked once loaded
            from pipeline.config import check_classes

            errors = check_classes(new.cameras, self.model_names, new.model.path)
            if errors:
                _refuse_reload([str(e) for e in errors])
                return
        plan = plan_reload(self.cfg, new)
        for name in plan.ignored:
            log.warning("event=reload_ignored section=%s reason='needs a restart'", name)
        for gone in self.decoders.remove(plan.stop):
            # the device stage unmaps the ring once the frames gathered before have been counted
            self._device_cmds.put(("detach", gone.camera_id))
            if self._workers is not None and gone.camera_id not in {c.id for c in plan.start}:
                self._workers.release(gone.camera_id)
            log.info("camera=%s event=camera_removed", gone.camera_id)
        for cam in plan.start:
            handle = self.decoders.add(cam)
            worker = None if self._workers is None else self._workers.assign(cam.id)
            self._device_cmds.put(("attach", handle.camera_id, handle.prefix, worker, cam.roi))
            self.decoders.start(handle, initial=S.CONNECTING)
            log.info("camera=%s event=camera_added url=%s", cam.id, cam.redacted_url)
        if plan.changes_cameras:
            update = CamerasUpdate(cameras=plan.cameras, rings=self._rings())
            # with event workers the sink stage too: its sinks may read frames back from the rings
            inboxes = [self._inbox] if self._workers is None else [*self._workers.inboxes, self._inbox]
            self._updates += [(q, update) for q in inboxes]
            self._send_updates()
        self.cfg = self.cfg.model_copy(update={"cameras": plan.cameras})
        if plan.model:  # self.cfg takes the new model once the device stage has it
            from pipeline.device import DeviceSettings

            self._next_models.append(new)
            self._device_cmds.put(("model", DeviceSettings.from_config(
                self.cfg.model_copy(update={"model": new.model, "masks": new.masks}))))
            log.info("event=model_loading path=%s", new.model.path)
        log.info("event=reloaded stopped=%d started=%d shapes_changed=%s model_changed=%s", len(plan.stop),
                 len(plan.start), plan.shapes, plan.model)

    def _send_updates(self) -> None:
        """The new camera list to the sink stage (or each event worker); tried again every loop while an
        inbox is full, in order: a later reload's list that went first (room made meanwhile) was undone by
        the earlier one (a camera removed then put back by two quick reloads stayed removed there)."""
        waiting: list[tuple[Any, Any]] = []
        for q, update in self._updates:
            if not any(w is q for w, _ in waiting):  # one held back for this inbox: the rest wait behind it
                try:
                    q.put_nowait(update)
                    continue
                except queue.Full:
                    pass
            waiting.append((q, update))
        self._updates = waiting

    def _stop_stages(self, grace_s: float | None = None) -> None:
        """Device stage, then event workers, then sink stage, each finishing what it holds (``grace_s``:
        a restart's shorter patience, and a death in the data plane is not an error of the run)."""
        self._stop_device(grace_s)
        log.debug("event=device_stopped")
        if self._workers is not None:
            sink = self._sink
            self._workers.stop(grace_s=grace_s or SINK_STOP_GRACE_S, sink_alive=lambda: sink.is_alive(),
                               tick=self._drain_stats)
            log.debug("event=workers_stopped")
        self._stop_sink(grace_s)
        log.debug("event=sink_stopped")
        if grace_s is not None:  # a restart: the old handles go
            self._device = self._device_conn = self._sink = self._workers = None

    def _stop_device(self, grace_s: float | None = None) -> None:
        if self._device is None:
            return
        consumers = [self._sink, *([] if self._workers is None else self._workers.procs)]
        killed = False  # on purpose, here: its exit code then says nothing about the run
        if self._device.is_alive() and (not self.ready or not all(p is not None and p.is_alive() for p in consumers)):
            # Still loading the model (no frame taken), or a stage its results go to is dead: a dead
            # reader may hold its queue's lock, so there is nothing to drain and no point waiting.
            self._device.kill()
            killed = True
        self._device_stop.set()
        deadline = time.monotonic() + (grace_s or DEVICE_STOP_GRACE_S)
        while self._device.is_alive() and time.monotonic() < deadline:
            if self._device_conn is not None:
                self._device_message()
            # nobody else will read them: keep the device stage (and the workers) from blocking
            if self._sink is None or not self._sink.is_alive():
                from pipeline.sinks.workers import discard

                discard(self._inbox)
            if self._workers is not None:
                self._workers.discard_dead_inboxes()
            self._drain_stats()
            self._device.join(_TICK_S)
        if self._device.is_alive():
            log.error("event=device_killed reason=stop_timeout")
            self._device.kill()
            self._device.join(5)
        if self._device_conn is not None:
            self._device_message()
        if self._device.exitcode not in (0, None) and not killed and not self.errors and grace_s is None:
            self._fail(f"device stage exited with code {self._device.exitcode}")

    def _stop_sink(self, grace_s: float | None = None) -> None:
        if self._sink is None:
            return
        if self._sink.is_alive():
            try:
                self._inbox.put(STOP, timeout=5.0)
            except queue.Full:
                log.error("event=sink_stop_failed reason=queue_full")
        deadline = time.monotonic() + (grace_s or SINK_STOP_GRACE_S)
        while self._sink.is_alive() and time.monotonic() < deadline:
            self._drain_stats()
            self._sink.join(_TICK_S)
        if self._sink.is_alive():
            log.error("event=sink_killed reason=stop_timeout")
            self._sink.kill()
            self._sink.join(5)
        self._drain_stats()
        if self._sink.exitcode not in (0, None) and not self.errors and grace_s is None:
            self._fail(f"sink stage exited with code {self._sink.exitcode}")
        for q in (self._inbox, self._stats):
            q.cancel_join_thread()  # nothing left to read them: do not wait for their feeders at exit
            q.close()

