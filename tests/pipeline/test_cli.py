from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engines.errors import ConfigError
from pipeline.cli import COMMANDS, main, translate_key_value
from pipeline.cli.common import parse_classes, parse_imgsz


def _actions() -> dict:
    import argparse

    p = argparse.ArgumentParser()
    for flag in ("--model", "--source", "--conf", "--imgsz"):
        p.add_argument(flag)
    p.add_argument("--retina-masks", action="store_true")
    p.add_argument("--half", action="store_true")
    p.add_argument("--val", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--resume", nargs="?", const=True)
    return p._option_string_actions


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["model=a.pt", "source=bus.jpg"], ["--model", "a.pt", "--source", "bus.jpg"]),
        (["retina_masks=True", "conf=0.5"], ["--retina-masks", "--conf", "0.5"]),
        (["half=False", "--imgsz", "320"], ["--imgsz", "320"]),
        (["configs/cameras.yaml"], ["configs/cameras.yaml"]),
        # an option's value is left as it is: a file named a=b.jpg was taken for an unknown option a
        (["--source", "a=b.jpg", "conf=0.5"], ["--source", "a=b.jpg", "--conf", "0.5"]),
        (["--model", "model=x.pt"], ["--model", "model=x.pt"]),
        (["--source=a=b.jpg"], ["--source=a=b.jpg"]),
        (["--sou", "a=b.jpg", "conf=0.5"], ["--sou", "a=b.jpg", "--conf", "0.5"]),  # argparse's abbreviation
        (["--res", "run=1.pt"], ["--res", "run=1.pt"]),
        (["--resume", "run=1.pt"], ["--resume", "run=1.pt"]),
        (["--resume", "conf=0.5"], ["--resume", "--conf", "0.5"]),
        (["--half", "conf=0.5"], ["--half", "--conf", "0.5"]),
        # Ultralytics' args.yaml spells an unset option None (freeze=None, time=None): the default
        (["model=a.pt", "conf=None", "imgsz=null", "half=None"], ["--model", "a.pt"]),
    ],
)
def test_key_value_spelling(argv: list[str], expected: list[str]) -> None:
    assert translate_key_value(argv, _actions()) == expected


def test_unknown_key_is_refused() -> None:
    from pipeline.cli import UnknownKey

    with pytest.raises(UnknownKey, match="bogus"):
        translate_key_value(["--half", "bogus=1"], _actions())


@pytest.mark.parametrize(("spec", "expected"), [(None, None), ("640", 640), ("384,640", (384, 640)),
                                              ("384x640", (384, 640))])
def test_imgsz_flag_is_a_side_or_height_width(spec: str | None, expected: object) -> None:
    assert parse_imgsz(spec) == expected


@pytest.mark.parametrize("spec", ["big", "384,640,3", "384;640"])
def test_bad_imgsz_flag_names_itself(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"--imgsz: expected N or H,W"):
        parse_imgsz(spec)


@pytest.mark.parametrize(("spec", "expected", "error"), [
    (None, None, None), ("", None, None), ("0,2", (0, 2), None), ("[0, 2]", (0, 2), None),
    # a list that names no class kept nothing: predict --save-txt wrote every frame as background
    (",", None, "--classes: no class id given"), ("[]", None, "--classes: no class id given"),
    ("a,b", None, "--classes: expected comma-separated integers"), ("-1", None, "--classes: class ids must be >= 0"),
])
def test_classes_flag_names_itself_for_bad_lists(spec: str | None, expected: object, error: str | None) -> None:
    if error is None:
        assert parse_classes(spec) == expected
    else:
        with pytest.raises(ConfigError, match=error):
            parse_classes(spec)


def test_false_turns_off_a_flag_that_defaults_to_on() -> None:
    assert translate_key_value(["val=False", "half=False", "val=True"], _actions()) == ["--no-val", "--val"]


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


_HANDLER_BEFORE_TORCH = """
import signal, sys
real = signal.signal
def spy(sig, handler):
    if sig == signal.SIGHUP and not getattr(spy, "seen", False):
        spy.seen = True
        print("torch" in sys.modules)
    return real(sig, handler)
signal.signal = spy
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_run_takes_sighup_before_the_slow_imports(tmp_path: Path) -> None:
    # a SIGHUP before `segpipe run` has its handler kills it (the default action); importing every
    # command (torch among them, 2-3 s) before that killed runs signalled right after a restart
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {path: yolov8n-seg.yaml}\ncameras: [{id: a, url: 'rtsp://127.0.0.1:9/x'}]\n")
    r = subprocess.run([sys.executable, "-c", _HANDLER_BEFORE_TORCH, "run", str(cfg), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "False", "torch was imported before the SIGHUP handler"


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    # `segpipe listen ... | head`, `segpipe status | head -2`: once the reader has exited, the next print
    # raised BrokenPipeError, a traceback on the user's terminal
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "info", "--model", "yolov8n-seg.yaml"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # no reader is left before the command prints its first line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGPIPE, err.decode()
    assert err == b""


@pytest.mark.parametrize(("argv", "expected"), [
    (["predict", "--model", "m.pt", "--source", "x", "bogus=1"], "segpipe predict: error: unknown option bogus (in bogus=...)"),
    (["train", "project=runs"], "segpipe train: error: unknown option project (in project=...)"),
    (["predict", "--model", "m.pt", "--source", "x", "conf=abc"], "segpipe predict: error: argument --conf: invalid float value: 'abc'"),
    (["predict"], "segpipe predict: error: the following arguments are required: --model, --source"),
    (["synth", "video", "--out"], "segpipe synth video: error: argument --out: expected one argument"),
    (["nope"], "segpipe: error: argument COMMAND: invalid choice: 'nope'"),
])
def test_usage_mistake_is_one_line(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    # argparse printed its usage block first, and named an unknown key=value as the --key it had become
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(expected), err
