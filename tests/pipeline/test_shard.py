from __future__ import annotations

import pytest

from engines.errors import ConfigError
from pipeline.shard import Shard, assign, owner, parse_shard, select, shard_from_env

IDS = [f"cam-{i:04d}" for i in range(1000)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_every_camera_on_exactly_one_shard(n: int) -> None:
    table = assign(IDS, n)
    flat = [c for r in range(n) for c in table[r]]
    assert sorted(flat) == sorted(IDS)
    assert len(flat) == len(set(flat))
    for r in range(n):
        assert select(IDS, Shard(r, n)) == table[r]


def test_balanced_and_stable() -> None:
    table = assign(IDS, 4)
    sizes = [len(v) for v in table.values()]
    assert min(sizes) > 200 and max(sizes) < 300, sizes
    assert assign(list(reversed(IDS)), 4) == {r: list(reversed(v)) for r, v in table.items()}
    assert assign(IDS, 4) == table


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_minimal_movement_when_growing(n: int) -> None:
    before = {c: owner(c, n) for c in IDS}
    after = {c: owner(c, n + 1) for c in IDS}
    moved = [c for c in IDS if before[c] != after[c]]
    # Only cameras whose new owner is the new replica move: no shuffling among the old ones.
    assert all(after[c] == n for c in moved)
    expected = len(IDS) / (n + 1)
    assert 0.7 * expected < len(moved) < 1.3 * expected


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("3/2", "out of range"),
        ("0/0", "must be >= 1"),
        ("2/2", "out of range"),
        ("1", "expected K/N"),
        ("a/b", "expected K/N"),
        ("-1/2", "expected K/N"),
    ],
)
def test_bad_shard_specs(spec: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_shard(spec)


def test_good_spec_and_env() -> None:
    assert parse_shard(" 1 / 3 ") == Shard(1, 3)
    assert shard_from_env({}) is None
    assert shard_from_env({"SEGPIPE_SHARD": "2/4"}) == Shard(2, 4)
    assert shard_from_env({"SEGPIPE_REPLICAS": "3", "HOSTNAME": "segpipe-2"}) == Shard(2, 3)
    with pytest.raises(ConfigError, match="no shard index"):
        shard_from_env({"SEGPIPE_REPLICAS": "3", "HOSTNAME": "box"})
    with pytest.raises(ConfigError, match="out of range"):
        shard_from_env({"SEGPIPE_REPLICAS": "2", "SEGPIPE_POD_NAME": "segpipe-5"})


def test_duplicate_ids_named() -> None:
    with pytest.raises(ConfigError, match=r"cameras\[2\]\.id: 'a' is not unique"):
        assign(["a", "b", "a"], 2)
