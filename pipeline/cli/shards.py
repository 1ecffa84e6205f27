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
    import yaml

    from engines.errors import ConfigError

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(str(path), f"cannot read config: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"invalid YAML: {e}") from None
    cams = raw.get("cameras") if isinstance(raw, dict) else None
    if not isinstance(cams, list) or not cams:
        raise ConfigError(f"{path}:cameras", "expected a non-empty list of cameras")
    ids = []
    for i, cam in enumerate(cams):
        if not isinstance(cam, dict) or not isinstance(cam.get("id"), str) or not cam["id"]:
            raise ConfigError(f"{path}:cameras[{i}].id", "every camera needs a string id")
        ids.append(cam["id"])
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
