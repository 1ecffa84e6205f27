"""Sinks: where events go. A small registry maps a config's ``type:`` to its sink class.

Entries name a module and class so a sink's dependencies (PyAV, redis) load only when it is used.
The registry raises on a duplicate or unknown type; nothing is registered at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any, Protocol

from engines.errors import SinkError
from pipeline.sinks.base import Sink
from pipeline.sinks.config import SinkConfig

BUILTIN_SINKS: tuple[tuple[str, str], ...] = (
    ("zmq", "pipeline.sinks.zmq:ZmqSink"),
    ("redis", "pipeline.sinks.redis:RedisSink"),
    ("mqtt", "pipeline.sinks.mqtt:MqttSink"),
    ("webhook", "pipeline.sinks.webhook:WebhookSink"),
    ("jsonl", "pipeline.sinks.jsonl:JsonlSink"),
    ("video", "pipeline.sinks.video:VideoSink"),
    ("restream", "pipeline.sinks.restream:RestreamSink"),
    ("preview", "pipeline.sinks.preview:PreviewSink"),
)


class SinkClass(Protocol):
    """What a registry entry names: a class built from its config."""

    # Any: each class takes only its own member of SinkConfig, which build() picks by ``type``
    def from_config(self, cfg: Any, /) -> Sink: ...


class SinkRegistry:
    """``type`` -> ``"module:Class"``; the class has ``from_config(cfg) -> Sink``."""

    def __init__(self, entries: Iterable[tuple[str, str]] = BUILTIN_SINKS) -> None:
        self._entries: dict[str, str] = {}
        for type_name, target in entries:
            self.register(type_name, target)

    def register(self, type_name: str, target: str) -> None:
        if type_name in self._entries:
            raise ValueError(f"sink type {type_name!r} is already registered ({self._entries[type_name]})")
        if ":" not in target:
            raise ValueError(f"sink target {target!r}: expected 'module:Class'")
        self._entries[type_name] = target

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, type_name: str) -> SinkClass:
        """The sink class for ``type_name``; SinkError naming the known types when unknown."""
        target = self._entries.get(type_name)
        if target is None:
            raise SinkError(f"unknown sink type {type_name!r} (known: {', '.join(self._entries)})")
        module, cls = target.split(":")
        return getattr(importlib.import_module(module), cls)

    def build(self, config: SinkConfig) -> Sink:
        """A running sink for ``config`` (SinkError when it cannot be set up)."""
        return self.get(config.type).from_config(config)


__all__ = ["BUILTIN_SINKS", "SinkClass", "SinkRegistry"]
