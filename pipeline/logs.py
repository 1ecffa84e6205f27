"""Log output of ``segpipe run``: one line per record on stderr (stdout carries the camera table), as
``key=value`` text or one JSON object. Imports nothing from pipeline/.

Every process of a run logs the same way: the supervisor hands its ``LogSetup`` to each child it
starts (decoders, device stage, sink stage, event workers), which applies it first. Without that a
child's records would reach stderr through Python's last-resort handler: warnings only, unformatted
(a JSON log would get plain lines), and every info line (a server reachable again) lost.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


@dataclass(frozen=True, slots=True)
class LogSetup:
    """level: debug | info | warning | error; fmt: text | json."""

    level: str = "info"
    fmt: str = "text"

    def apply(self) -> None:
        """Make this process's root logger write records of ``level`` and above to stderr in ``fmt``."""
        handler = logging.StreamHandler(sys.stderr)
        if self.fmt == "json":
            handler.setFormatter(_JsonFormatter())
        else:
            handler.setFormatter(logging.Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(self.level.upper())
