"""Event clips: what triggers one, the pre-roll held as JPEG, post_s and max_s (pipeline/sinks/clips.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.messages import Crossing, Crowding, Detection, FrameAnalytics, FrameResult, Overstay
from pipeline.sinks.clips import ClipGate
from pipeline.sinks.config import ClipConfig

FPS = 10.0


def _result(seq: int, *, label: str | None = None, zones: tuple[str, ...] | None = None,
            crossed: str | None = None, stayed: str | None = None, size: tuple[int, int] = (16, 12)) -> FrameResult:
    dets = () if label is None else (Detection(class_id=0, label=label, score=0.9, box=(1.0, 1.0, 9.0, 9.0),
                                               zones=zones),)
    crossings = None if crossed is None else (Crossing(line="gate", track_id=1, class_id=0, label=crossed,
                                                       direction="in"),)
    return FrameResult(camera_id="cam", seq=seq, pts=seq / FPS, capture_ts=seq / FPS, infer_ts=seq / FPS,
                       frame_size=size, model="m", detections=dets,
                       analytics=FrameAnalytics(crossings=crossings, overstays=None if stayed is None else (
                           Overstay(zone="dock", track_id=1, class_id=0, label=stayed, dwell_s=30.0),)))


def _crowd(state: str) -> FrameResult:
    return dataclasses.replace(_result(0), analytics=FrameAnalytics(crowding=(Crowding(zone="q", state=state,
                                                                                       objects=4),)))


def _canvas(seq: int) -> np.ndarray:
    return np.full((12, 16, 3), seq * 10 % 250, np.uint8)


@pytest.mark.parametrize("on, classes, result, fired", [
    (("crossing",), None, _result(0, crossed="car"), True),
    (("crossing",), None, _result(0, label="car", zones=("dock",)), False),
    (("crossing",), ("person",), _result(0, crossed="car"), False),
    (("zone",), None, _result(0, label="car", zones=("dock",)), True),
    (("zone",), None, _result(0, label="car", zones=()), False),  # the camera has zones, the car is in none
    (("zone",), ("person",), _result(0, label="car", zones=("dock",)), False),
    (("detection",), None, _result(0, label="car"), True),
    (("detection",), None, _result(0), False),
    (("detection", "crossing"), ("bicycle",), _result(0, crossed="bicycle"), True),
    (("overstay",), None, _result(0, stayed="person"), True),
    (("overstay",), ("car",), _result(0, stayed="person"), False),
    (("overstay",), None, _result(0, label="person", zones=("dock",)), False),  # in the zone, not for long
    (("crowding",), ("car",), _crowd("start"), True),  # a zone's count: classes do not apply
    (("crowding",), None, _crowd("end"), False),
])
def test_triggers(on: tuple, classes: tuple | None, result: FrameResult, fired: bool) -> None:
    assert ClipGate(ClipConfig(triggers=on, classes=classes)).triggered(result) is fired


def test_a_clip_starts_pre_s_before_its_trigger_and_ends_post_s_after_the_last() -> None:
    gate = ClipGate(ClipConfig(triggers=("crossing",), pre_s=0.5, post_s=0.35))
    steps = {}
    for seq in range(40):
        crossed = "car" if seq in (20, 23) else None
        steps[seq] = gate.step("cam", seq / FPS, _canvas(seq), _result(seq, crossed=crossed))
    assert all(not s.frames and not s.close for q, s in steps.items() if q < 20)  # held, nothing written
    opening = steps[20].frames
    assert [round(t * FPS) for t, _, _ in opening] == [15, 16, 17, 18, 19, 20]  # 0.5 s of pre-roll, then the trigger
    assert np.abs(opening[0][1].astype(int) - 150).max() <= 2  # the held JPEG decodes to its frame
    assert [r.seq for _, _, r in opening] == [15, 16, 17, 18, 19, 20]  # each with its own result
    written = [q for q, s in steps.items() if 20 < q and s.frames]
    assert written == list(range(21, 27))  # the second trigger (2.3 s) keeps it open to 2.65 s
    assert steps[27].close and not steps[27].frames and not any(s.close for q, s in steps.items() if q != 27)
    assert gate.held_bytes() > 0  # after the clip: holding pre-roll again


def test_max_s_cuts_a_clip_and_the_next_starts_at_once() -> None:
    gate = ClipGate(ClipConfig(triggers=("detection",), pre_s=0.2, post_s=1.0, max_s=1.0))
    opened = []
    for seq in range(35):
        step = gate.step("cam", seq / FPS, _canvas(seq), _result(seq, label="car"))
        if step.close or seq == 0:
            opened.append((seq, step.close, len(step.frames)))
    assert opened == [(0, False, 1), (10, True, 1), (20, True, 1), (30, True, 1)]


def test_a_new_frame_size_forgets_pre_roll_and_cameras_are_independent() -> None:
    gate = ClipGate(ClipConfig(triggers=("detection",), pre_s=1.0))
    for seq in range(5):
        gate.step("a", seq / FPS, _canvas(seq), _result(seq))
        gate.step("b", seq / FPS, _canvas(seq), _result(seq))
    big = np.zeros((24, 32, 3), np.uint8)  # camera a switched resolution; b did not
    assert len(gate.step("a", 0.5, big, _result(5, label="car", size=(32, 24))).frames) == 1
    assert len(gate.step("b", 0.5, _canvas(5), _result(5, label="car")).frames) == 6


def test_no_pre_roll_holds_nothing() -> None:
    gate = ClipGate(ClipConfig(triggers=("detection",), pre_s=0))
    for seq in range(5):
        gate.step("cam", seq / FPS, _canvas(seq), _result(seq))
    assert gate.held_bytes() == 0
    assert len(gate.step("cam", 0.5, _canvas(5), _result(5, label="car")).frames) == 1


def test_a_new_picture_size_or_stream_starts_over() -> None:
    gate = ClipGate(ClipConfig(triggers=("detection",), pre_s=1.0))
    for seq in range(5):
        gate.step("cam", seq / FPS, _canvas(seq), _result(seq))
    wide = np.zeros((12, 24, 3), np.uint8)
    step = gate.step("cam", 0.5, wide, _result(5, label="car", size=(24, 12)))  # the camera switched resolution
    assert [f[1].shape for f in step.frames] == [(12, 24, 3)] and not step.close
    gate.step("cam", 1.6, wide, _result(6, label="car", size=(24, 12)))
    step = gate.step("cam", 0.0, wide, _result(0, label="car", size=(24, 12)))  # its decoder restarted: pts from 0
    assert step.close and len(step.frames) == 1  # the open clip ends; a new one starts from this frame
