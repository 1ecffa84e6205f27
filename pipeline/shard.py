"""Rendezvous (highest-random-weight) sharding of cameras over replicas. Imports nothing from pipeline/.

Each camera goes to the replica with the highest hash(camera id, replica index). This gives every
camera exactly one owner, an assignment that depends only on (id, N), and, when N grows to N+1, only the
cameras whose new top scorer is the new replica move (about 1/(N+1) of them); nothing else reshuffles.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engines.errors import ConfigError

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Shard:
    """This replica's place in the cluster: ``index`` in ``[0, count)``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError("--shard", f"replica count must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError("--shard", f"shard index {self.index} is out of range for {self.count} "
                              f"replicas (valid: 0..{self.count - 1})")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec: str) -> Shard:
    """Parse ``"K/N"`` (0-based K). Raises ConfigError naming the spec."""
    m = _SPEC.match(spec)
    if not m:
        raise ConfigError("--shard", f"expected K/N such as 0/4, got {spec!r}")
    return Shard(int(m.group(1)), int(m.group(2)))


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """Shard from ``SEGPIPE_SHARD`` ("K/N"), or from a StatefulSet pod name (``name-K``) plus
    ``SEGPIPE_REPLICAS``. Returns None when neither is set; replicas without an index is an error."""
    env = os.environ if env is None else env
    if env.get("SEGPIPE_SHARD"):
        return parse_shard(env["SEGPIPE_SHARD"])
    replicas = env.get("SEGPIPE_REPLICAS")
    if not replicas:
        return None
    if not replicas.strip().isdigit():
        raise ConfigError("SEGPIPE_REPLICAS", f"expected a positive integer, got {replicas!r}")
    pod = env.get("SEGPIPE_POD_NAME") or env.get("HOSTNAME", "")
    m = re.search(r"-(\d+)$", pod)
    if not m:
        raise ConfigError("SEGPIPE_REPLICAS", f"is set to {replicas} but no shard index was given: set "
                          "SEGPIPE_SHARD=K/N or run as a StatefulSet pod named <name>-<ordinal> "
                          f"(SEGPIPE_POD_NAME/HOSTNAME is {pod!r})")
    return Shard(int(m.group(1)), int(replicas))


def _weight(camera_id: str, replica: int) -> int:
    digest = hashlib.blake2b(f"{camera_id}\x00{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(camera_id: str, count: int) -> int:
    """Index of the replica in ``[0, count)`` that owns ``camera_id``."""
    if count < 1:
        raise ConfigError("--replicas", f"must be >= 1, got {count}")
    return max(range(count), key=lambda r: _weight(camera_id, r))


def assign(camera_ids: Iterable[str], count: int) -> dict[int, list[str]]:
    """Map every replica index to the camera ids it owns (input order kept). Ids must be unique."""
    ids = list(camera_ids)
    seen: set[str] = set()
    for i, cid in enumerate(ids):
        if cid in seen:
            raise ConfigError(f"cameras[{i}].id", f"{cid!r} is not unique across the cluster config")
        seen.add(cid)
    table: dict[int, list[str]] = {r: [] for r in range(count)}
    for cid in ids:
        table[owner(cid, count)].append(cid)
    return table


def select(camera_ids: Iterable[str], shard: Shard) -> list[str]:
    """The camera ids this shard runs."""
    return assign(camera_ids, shard.count)[shard.index]
