"""README's "From footage to your own model" runs as written: auto-label two clips, fine-tune, score,
benchmark and export, on short generated clips with one epoch (the only changes made to its commands)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

README = Path(__file__).resolve().parents[2] / "README.md"
DEMO_MODEL = "engines/assets/demo-seg.pt"


def _walkthrough() -> tuple[list[list[str]], str]:
    """The section's segpipe commands (argv after ``segpipe``) and its data YAML."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## From footage to your own model", 1)[1].split("\n## ", 1)[0]
    sh = re.findall(r"```sh\n(.*?)```", section, re.S)
    data = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(sh) == 1 and len(data) == 1
    commands = [shlex.split(line)[1:] for line in sh[0].splitlines() if line.startswith("segpipe ")]
    return commands, data[0]


def test_the_walkthrough_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.checkpoint import load_checkpoint
    from pipeline.cli import main
    from pipeline.demo import demo_model_path

    commands, data_yaml = _walkthrough()
    assert [c[0] for c in commands] == ["predict", "predict", "train", "val", "benchmark", "export"]
    clips = {}
    for name, seed in (("footage.mp4", 5), ("check.mp4", 6)):
        clips[name] = tmp_path / name
        assert main(["synth", "video", "--out", str(clips[name]), "--seconds", "2", "--fps", "10", "--style", "traffic",
                     "--seed", str(seed), "--size", "640x384"]) == 0
    monkeypatch.chdir(tmp_path)
    scale = {"--epochs": "1", "--imgsz": "320"}  # a test's budget; everything else as the README has it
    for argv in commands:
        argv = [str(demo_model_path()) if a == DEMO_MODEL else str(clips.get(a, a)) for a in argv]
        argv = [scale.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]
        if argv[0] == "predict":  # the data YAML comes after labelling, as the README's step 2 writes it
            assert main(argv) == 0, argv
            (tmp_path / "mydata" / "data.yaml").write_text(data_yaml, encoding="utf-8")
            continue
        assert main(argv) == 0, argv
    for split in ("train", "val"):  # every 10th frame of 20: frames 1 and 11, each with its label file
        frames = sorted(p.name for p in (tmp_path / "mydata" / split / "images").iterdir())
        labels = sorted(p.name for p in (tmp_path / "mydata" / split / "labels").iterdir())
        assert len(frames) == 2 and {Path(n).stem for n in labels} <= {Path(n).stem for n in frames}, (frames, labels)
        assert labels
    assert yaml.safe_load(data_yaml)["names"] == list(load_checkpoint(demo_model_path()).meta.names)
    best = tmp_path / "runs" / "mine" / "weights" / "best.pt"
    assert load_checkpoint(best).meta.train_args["freeze"] == 10
    assert (tmp_path / "runs" / "mine-val" / "confusion_matrix.csv").is_file()
    assert (tmp_path / "runs" / "mine-bench" / "benchmark.csv").is_file()  # exit 0: no format failed
    assert best.with_suffix(".onnx").is_file()
