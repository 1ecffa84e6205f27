"""segpipe shards: print which replica runs which camera (rendezvous hashing, see pipeline/shard.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "shards"
HELP = "print the camera -> replica assignment for N replicas"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML")
    p.add_argument("--replicas", type=int, required=True, help="number of replicas (N)")


def _camera_ids(path: Path) -> list[str]:
    """The camera ids as ``segpipe run`` sees them (same YAML reader, ``${ENV}`` filled in): hashing the
    ids as written would place ``${SITE}-gate`` elsewhere than the replicas do. The rest of the config
    is not validated, so a cluster config whose secrets are unset here still prints."""
    import os

    from engines.errors import ConfigError
    from pipeline.config import interpolate, read_yaml

    raw = read_yaml(path)
    cams = raw.get("cameras") if isinstance(raw, dict) else None
    if not isinstance(cams, list) or not cams:
        raise ConfigError(f"{path}:cameras", "expected a non-empty list of cameras")
    ids = []
    for i, cam in enumerate(cams):
        errors: list[ConfigError] = []
        cid = interpolate(cam.get("id"), os.environ, errors, f"cameras[{i}].id") if isinstance(cam, dict) else None
        if errors:
            raise errors[0]
        if not isinstance(cid, str) or not cid:
            raise ConfigError(f"{path}:cameras[{i}].id", "every camera needs a string id")
        ids.append(cid)
    return ids


def run(args: argparse.Namespace) -> int:
    from pipeline.shard import assign

    ids = _camera_ids(Path(args.config))
    table = assign(ids, args.replicas)
    width = max(len(c) for c in ids)
    print(f"{'camera'.ljust(width)}  shard")
    for cid in ids:
        owner = next(r for r, cams in table.items() if cid in cams)
        print(f"{cid.ljust(width)}  {owner}/{args.replicas}")
    print("; ".join(f"shard {r}: {len(c)} camera(s)" for r, c in table.items()))
    return 0
