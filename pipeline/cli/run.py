"""segpipe run: the streaming runtime (cameras -> cross-camera batches -> model -> sinks).

Exit codes: 0 when the run ended normally (stopped by a signal, or every file camera ended), 1 on a
runtime failure (a stage died, a camera gave up), 2 on a config error (nothing is started).
SIGHUP reads the config again and applies its cameras (added, removed, changed; zones and lines)
without stopping the others (``pipeline.reload``); a config that does not load is logged and ignored.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from pipeline.logs import LogSetup

NAME = "run"
HELP = "run the streaming pipeline described by a cameras YAML"

log = logging.getLogger("segpipe.run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML (see configs/cameras.yaml)")
    p.add_argument("--check", action="store_true", help="validate the config (all errors at once) and exit")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="run only shard K of N replicas (default: SEGPIPE_SHARD, or SEGPIPE_REPLICAS with a "
                        "StatefulSet pod name)")
    p.add_argument("--no-console", action="store_true", help="do not print the live per-camera table")
    p.add_argument("--console-interval", type=float, default=None, metavar="S",
                   help="seconds between table refreshes (default: 1 on a terminal, 10 otherwise)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="text: key=value lines; json: one JSON object per line")


def run(args: argparse.Namespace) -> int:
    # A SIGHUP while starting (config management reloading right after a deploy) must not kill the run
    # (its default action): it is kept and applied once the pipeline is up.
    from engines.errors import SegpipeError

    early_hangup = threading.Event()
    previous = signal.signal(signal.SIGHUP, lambda *_: early_hangup.set())
    try:
        return _start(args, early_hangup)
    except SegpipeError as e:
        if args.log_format != "json":
            raise  # the command line prints it: one line per problem
        # a log shipper reads stderr as one JSON object per line: config errors too
        LogSetup(args.log_level, "json").apply()
        for line in str(e).splitlines():
            log.error("segpipe run: error: %s", line)
        return e.exit_code
    finally:
        signal.signal(signal.SIGHUP, previous)


def _start(args: argparse.Namespace, early_hangup: threading.Event) -> int:
    from pipeline.config import load_config, resolve_demo
    from pipeline.shard import parse_shard, select, shard_from_env

    shard = parse_shard(args.shard) if args.shard else shard_from_env()

    def replica(cfg: Any) -> Any:
        if shard is None:
            return cfg
        return cfg.for_replica(select([c.id for c in cfg.cameras], shard), f"{shard.index}of{shard.count}")

    def load() -> Any:
        return replica(load_config(args.config))  # ConfigErrors: every problem, exit 2, nothing started

    whole = load_config(args.config)
    cfg = replica(whole)
    if args.check:
        _check_classes(cfg)
        where = f" (shard {shard}: {len(cfg.cameras)} of them here)" if shard else ""
        extras = [f"{n} {what}" for n, what in ((sum(len(c.zones) for c in cfg.cameras), "zone(s)"),
                                                 (sum(len(c.lines) for c in cfg.cameras), "line(s)")) if n]
        extras += ["tracking"] if cfg.tracking.enabled else []
        extras += [f"{cfg.events.workers} event workers"] if cfg.events.workers > 1 else []
        extras += [f"event clips ({s.sink_name})" for s in cfg.sinks if getattr(s, "clips", None) is not None]
        extras += [f"live preview on http://{s.host}:{s.port}/ ({s.sink_name})" for s in cfg.sinks
                   if s.type == "preview"]
        extras += [f"webhook {'/'.join(s.events)} to {s.redacted_url()} ({s.sink_name})" for s in cfg.sinks
                   if s.type == "webhook"]
        extras += [f"live video to {s.redacted_url()} ({s.sink_name})" for s in cfg.sinks if s.type == "restream"]
        rois = sum(c.roi is not None for c in cfg.cameras)
        extras += [f"{rois} camera roi(s)"] if rois else []
        print(f"{args.config}: OK: {len(whole.cameras)} camera(s){where}, {len(cfg.sinks)} sink(s), "
              f"model {cfg.model.path}" + "".join(f", {e}" for e in extras))
        return 0
    logs = LogSetup(args.log_level, args.log_format)
    logs.apply()

    def resolved(cfg: Any) -> Any:
        return resolve_demo(cfg, on_render=lambda cam, url: log.info(
            "camera=%s event=demo_clip url=%s (rendered into the cache on first use)", cam, url))

    return _run(resolved(cfg), args, shard, reloader=lambda: resolved(load()), early_hangup=early_hangup,
                logs=logs)


def _check_classes(cfg: Any) -> None:
    """Raise ConfigErrors for classes the config names (``model.classes`` ids; cameras', clip triggers' and
    webhooks' labels) that the model lacks, when the model is a checkpoint whose labels can be read here;
    other formats are checked once the device stage has loaded them. Without it, --check passed
    ``classes: [car]`` and the run then failed on a model that says ``vehicle``."""
    from pathlib import Path

    from engines.errors import ConfigErrors
    from pipeline.config import check_labels, resolve_demo

    if not check_labels(cfg, ()):  # against no labels at all, every class named is reported
        return  # none named
    path = resolve_demo(cfg.with_cameras([])).model.path  # the model only: no demo clip is rendered
    if Path(path).suffix not in (".pt", ".safetensors") or not Path(path).is_file():
        return
    from engines.checkpoint import load_checkpoint

    errors = check_labels(cfg, tuple(load_checkpoint(path).meta.names))
    if errors:
        raise ConfigErrors(errors)


def _run(cfg: Any, args: argparse.Namespace, shard: Any, reloader: Any = None,
         early_hangup: threading.Event | None = None, logs: LogSetup | None = None) -> int:
    from pipeline.console import Console
    from pipeline.messages import CameraState
    from pipeline.metrics import Metrics, MetricsServer
    from pipeline.supervisor import Supervisor

    stop = threading.Event()
    metrics = Metrics() if cfg.metrics.enabled else None
    console = None
    if not args.no_console:
        interval = args.console_interval or (1.0 if sys.stdout.isatty() else 10.0)
        console = Console(interval_s=interval)

    def on_tick(sup: Supervisor) -> None:
        if console is not None:
            console.update([(c["id"], CameraState(c["state"]), c) for c in sup.status()["cameras"]])

    sup = Supervisor(cfg=cfg, metrics=metrics, on_tick=on_tick, reloader=reloader, logs=logs)
    server = None
    if metrics is not None:
        server = MetricsServer(metrics=metrics, host=cfg.metrics.host, port=cfg.metrics.port, status=sup.status)
        port = server.start()  # ConfigError (exit 2) when the port is taken
        log.info("event=metrics_listening url=http://%s:%d/metrics", cfg.metrics.host, port)
    for sink in cfg.sinks:  # the sink stage's own log lines stay in its process
        if sink.type == "preview":
            log.info("event=preview_listening sink=%s url=http://%s:%d/", sink.sink_name, sink.host, sink.port)

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        sup.request_stop(signal.Signals(signum).name)

    hangup = threading.Event()

    def on_hangup(_signum: int, _frame: Any) -> None:
        log.info("event=reload_requested signal=SIGHUP config=%s", args.config)
        hangup.set()
        sup.request_reload()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    if early_hangup is not None and early_hangup.is_set():  # sent while starting: reload now
        on_hangup(signal.SIGHUP, None)
    try:
        if not cfg.cameras:  # a replica that owns no camera of the shard: idle until stopped or given one
            log.warning("event=idle reason=no_cameras_in_shard shard=%s", shard)
        while not sup.cfg.cameras:
            if stop.wait(1.0):
                return 0
            if hangup.is_set():
                hangup.clear()
                sup.cfg = sup.read_config() or sup.cfg
        code = sup.run()
        if console is not None:  # the final figures: the clips may have ended between two refreshes
            console.update([(c["id"], CameraState(c["state"]), c) for c in sup.status()["cameras"]], force=True)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if server is not None:
            server.stop()
    # each with its reason: the run's last line is what an operator reads first
    failed = [f"{c.camera_id} ({c.machine.detail})" if c.machine.detail else c.camera_id
              for c in sup.cameras if c.machine.state.value == "failed"]
    for line in [*sup.errors[:1], *([f"camera(s) failed: {', '.join(failed)}"] if failed else [])]:
        if args.log_format == "json":  # every line of stderr a JSON object, for a log shipper
            log.error("segpipe run: error: %s", line)
        else:
            print(f"segpipe run: error: {line}", file=sys.stderr)
    return code
