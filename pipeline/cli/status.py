"""segpipe status: the live per-camera table of a running pipeline, read from its metrics port.

``segpipe run`` serves what its console shows as JSON on ``/cameras`` (beside ``/metrics``); this
reads it twice, ``--interval`` apart, for rates, and prints the same table (each camera's state, its
picture: ok, frozen, blank, moved or blurred, and its figures; or the JSON with ``--json``). ``--watch`` keeps
refreshing until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from typing import Any

from engines.errors import ConfigError, SourceError
from pipeline.console import camera_row, render
from pipeline.messages import CameraState

NAME = "status"
HELP = "show the per-camera table of a running pipeline (its metrics port)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", nargs="?", default="http://127.0.0.1:9108",
                   help="the run's metrics address (default http://127.0.0.1:9108)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between the two reads (rates)")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--json", action="store_true", help="print the raw /cameras JSON once")


def fetch(url: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """``/cameras`` of the run at ``url`` (SourceError when it cannot be read)."""
    where = url.rstrip("/") + "/cameras"
    try:
        with urllib.request.urlopen(where, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise SourceError(f"{where}: HTTP {e.code} (is this a segpipe run's metrics port?)") from None
    except (urllib.error.URLError, OSError) as e:
        raise SourceError(f"cannot reach {where}: {getattr(e, 'reason', e)} (is a segpipe run serving its "
                          f"metrics there? see metrics.host and metrics.port in its config)") from None
    except ValueError:
        raise SourceError(f"{where}: not JSON (is this a segpipe run's metrics port?)") from None


def table(before: dict[str, Any], now: dict[str, Any]) -> str:
    """The console table from two ``/cameras`` reads (rates over the time between them)."""
    dt = now["ts"] - before["ts"]
    prev = {c["id"]: c for c in before["cameras"]}
    rows = [camera_row(c["id"], CameraState(c["state"]), c, prev.get(c["id"]), dt) for c in now["cameras"]]
    header = f"model {now['model']}" + (f" on {now['device']}" if now.get("device") else "")
    if now.get("queues"):  # how full each stage's inbox is: one near 100 % cannot keep up
        header += "; queues " + ", ".join(f"{k} {v:.0%}" for k, v in now["queues"].items())
    if now.get("stage_restarts"):  # the data plane came back after a crash
        header += f"; stages restarted {now['stage_restarts']}x"
    return render(rows, header=header)


def run(args: argparse.Namespace) -> int:
    if not args.url.startswith(("http://", "https://")):
        raise ConfigError("url", f"expected http://host:port, got {args.url!r}")
    if args.interval <= 0:
        raise ConfigError("--interval", f"expected seconds > 0, got {args.interval}")
    before = fetch(args.url)
    if args.json:
        print(json.dumps(before, indent=2))
        return 0
    while True:
        time.sleep(args.interval)
        now = fetch(args.url)
        print(table(before, now), flush=True)
        if not args.watch:
            return 0
        print()
        before = now
