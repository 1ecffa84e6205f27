from __future__ import annotations

import subprocess
import sys

import pytest

from engines.errors import ConfigError
from pipeline.cli import COMMANDS, main, translate_key_value
from pipeline.cli.common import parse_imgsz


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["model=a.pt", "source=bus.jpg"], ["--model", "a.pt", "--source", "bus.jpg"]),
        (["retina_masks=True", "conf=0.5"], ["--retina-masks", "--conf", "0.5"]),
        (["half=False", "--imgsz", "320"], ["--imgsz", "320"]),
        (["--model", "x=y.pt"], ["--model", "--x", "y.pt"]),
        (["configs/cameras.yaml"], ["configs/cameras.yaml"]),
    ],
)
def test_key_value_spelling(argv: list[str], expected: list[str]) -> None:
    assert translate_key_value(argv) == expected


@pytest.mark.parametrize(("spec", "expected"), [(None, None), ("640", 640), ("384,640", (384, 640)),
                                              ("384x640", (384, 640))])
def test_imgsz_flag_is_a_side_or_height_width(spec: str | None, expected: object) -> None:
    assert parse_imgsz(spec) == expected


@pytest.mark.parametrize("spec", ["big", "384,640,3", "384;640"])
def test_bad_imgsz_flag_names_itself(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"--imgsz: expected N or H,W"):
        parse_imgsz(spec)


def test_false_turns_off_a_flag_that_defaults_to_on() -> None:
    opts = {"--val", "--no-val", "--half"}
    assert translate_key_value(["val=False", "half=False", "val=True"], opts) == ["--no-val", "--val"]


def test_every_registered_command_has_help() -> None:
    names = [n for n, _ in COMMANDS]
    assert len(names) == len(set(names))
    for name in names:
        r = subprocess.run([sys.executable, "-m", "pipeline", name, "--help"], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, (name, r.stderr)
        assert "usage: segpipe" in r.stdout


def test_user_error_is_one_line_without_traceback(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["predict", "--model", str(tmp_path / "missing.pt"), "--source", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    assert err.count("\n") == 1 and "missing.pt" in err
