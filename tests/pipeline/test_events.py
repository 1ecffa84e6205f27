"""Event wire format: real events validated against the JSON Schema, masks decodable by pycocotools."""

from __future__ import annotations

import copy
import json

import jsonschema
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipeline.events import SCHEMA_VERSION, encode, load_schema, status_event, to_event
from pipeline.messages import CameraState, CameraStatus, Detection, FrameResult, Picture

H, W = 48, 64


def _mask(rng: np.random.Generator) -> np.ndarray:
    m = np.zeros((H, W), bool)
    y, x = int(rng.integers(0, H - 8)), int(rng.integers(0, W - 8))
    m[y:y + 8, x:x + 10] = True
    return m & (rng.random((H, W)) > 0.1)


def _result(masks: str = "rle", n: int = 3, seed: int = 0) -> tuple[FrameResult, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    dets, ms = [], []
    for i in range(n):
        m = _mask(rng)
        ys, xs = np.nonzero(m)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        if masks == "rle":
            mask = mask_utils.encode(np.asfortranarray(m))  # counts are bytes, as pycocotools makes them
        elif masks == "polygon":
            x1, y1, x2, y2 = box
            mask = [[x1, y1, x2, y1, x2, y2, x1, y2]]
        else:
            mask = None
        dets.append(Detection(class_id=i % 2, label=["person", "car"][i % 2], score=0.5 + i / 10, box=box, mask=mask))
        ms.append(m)
    res = FrameResult(camera_id="cam-0", seq=7, pts=1.25, capture_ts=1_700_000_000.5, infer_ts=1_700_000_000.52,
                      frame_size=(W, H), model="yolov8n-seg", detections=tuple(dets))
    return res, ms


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("masks", ["rle", "polygon", "none"])
def test_frame_event_matches_schema_and_round_trips(validator: jsonschema.Validator, masks: str) -> None:
    res, _ = _result(masks)
    event = to_event(res, publish_ts=1_700_000_000.6)
    data = encode(event)
    assert b"\n" not in data and b", " not in data and b": " not in data  # compact, one line
    back = json.loads(data)
    validator.validate(back)
    assert back["version"] == SCHEMA_VERSION and back["kind"] == "frame"
    assert (back["camera"], back["seq"], back["pts"]) == ("cam-0", 7, 1.25)
    assert back["frame"] == {"width": W, "height": H}
    assert back["publish_ts"] == 1_700_000_000.6
    assert [d["label"] for d in back["detections"]] == ["person", "car", "person"]
    assert back["detections"][1]["box"] == list(res.detections[1].box)
    if masks == "none":
        assert all(d["mask"] is None for d in back["detections"])


def test_track_ids_are_published_only_when_set(validator: jsonschema.Validator) -> None:
    import dataclasses

    res, _ = _result("rle")
    tracked = dataclasses.replace(res, detections=(dataclasses.replace(res.detections[0], track_id=12),
                                                   *res.detections[1:]))
    event = json.loads(encode(to_event(tracked)))
    validator.validate(event)
    assert event["detections"][0]["track_id"] == 12
    assert all("track_id" not in d for d in event["detections"][1:])  # tracking off or track unconfirmed


def test_a_roi_is_published_for_cameras_that_have_one(validator: jsonschema.Validator) -> None:
    import dataclasses

    res, _ = _result("rle")
    assert "roi" not in to_event(res)
    event = json.loads(encode(to_event(dataclasses.replace(res, roi=(8, 4, 64, 48)))))
    validator.validate(event)
    assert event["roi"] == [8, 4, 64, 48]


def test_zones_and_crossings_are_published_for_cameras_that_have_them(validator: jsonschema.Validator) -> None:
    import dataclasses

    from pipeline.messages import Crossing, Crowding, FrameAnalytics, Overstay

    res, _ = _result("rle")
    plain = json.loads(encode(to_event(res)))
    assert not {"zone_counts", "crossings"} & set(plain) and all("zones" not in d for d in plain["detections"])
    dets = tuple(dataclasses.replace(d, zones=z) for d, z in zip(res.detections, [("dock",), (), ("dock", "aisle")],
                                                                 strict=True))
    dets = (dataclasses.replace(dets[0], track_id=3, dwell_s={"dock": 12.34567}), *dets[1:])
    crossing = Crossing(line="gate", track_id=4, class_id=2, label="car", direction="in")
    analytics = FrameAnalytics(zone_counts={"dock": 2, "aisle": 1}, crossings=(crossing,), line_totals={"gate": (1, 0)},
                               shapes={"lines": {"gate": ((0.0, 1.0), (2.0, 3.0))}})
    event = json.loads(encode(to_event(dataclasses.replace(res, detections=dets, analytics=analytics))))
    validator.validate(event)
    assert [d["zones"] for d in event["detections"]] == [["dock"], [], ["dock", "aisle"]]
    assert event["detections"][0]["dwell_s"] == {"dock": 12.346} and "dwell_s" not in event["detections"][1]
    assert event["zone_counts"] == {"dock": 2, "aisle": 1}
    assert event["crossings"] == [{"line": "gate", "direction": "in", "track_id": 4, "class_id": 2, "label": "car"}]
    assert "shapes" not in json.dumps(event) and "line_totals" not in event  # drawing aids stay in the process
    lines_only = dataclasses.replace(res, analytics=FrameAnalytics(crossings=()))
    assert json.loads(encode(to_event(lines_only)))["crossings"] == []
    assert "overstays" not in event  # no zone of the camera has max_dwell_s
    stay = Overstay(zone="dock", track_id=3, class_id=0, label="person", dwell_s=30.0004)
    crowd = Crowding(zone="dock", state="start", objects=7)
    timed = json.loads(encode(to_event(dataclasses.replace(res, analytics=FrameAnalytics(
        overstays=(stay,), crowding=(crowd,))))))
    validator.validate(timed)
    assert timed["crowding"] == [{"zone": "dock", "state": "start", "objects": 7}]
    assert timed["overstays"] == [{"zone": "dock", "track_id": 3, "class_id": 0, "label": "person", "dwell_s": 30.0}]


def test_rle_masks_decode_with_pycocotools() -> None:
    res, masks = _result("rle", n=4, seed=3)
    event = json.loads(encode(to_event(res)))
    for det, m in zip(event["detections"], masks, strict=True):
        assert det["mask"]["format"] == "rle" and det["mask"]["size"] == [H, W]
        np.testing.assert_array_equal(mask_utils.decode(det["mask"]).astype(bool), m)


def test_status_event_matches_schema(validator: jsonschema.Validator) -> None:
    st = CameraStatus(camera_id="cam-0", state=CameraState.RECONNECTING, ts=1_700_000_001.0, detail="read timeout")
    event = json.loads(encode(status_event(st, publish_ts=1_700_000_001.1)))
    validator.validate(event)
    assert event == {"version": SCHEMA_VERSION, "kind": "status", "camera": "cam-0", "state": "reconnecting",
                     "picture": "ok", "ts": 1_700_000_001.0, "publish_ts": 1_700_000_001.1, "detail": "read timeout"}
    # a picture change is a status too, the state as it was; the schema knows its values
    st = CameraStatus(camera_id="cam-0", state=CameraState.LIVE, ts=1.0, detail="picture frozen for 30 s",
                      picture=Picture.FROZEN)
    event = json.loads(encode(status_event(st, publish_ts=1.5)))
    validator.validate(event)
    assert (event["state"], event["picture"], event["detail"]) == ("live", "frozen", "picture frozen for 30 s")
    for picture in Picture:  # every verdict the decoders can give
        validator.validate({**event, "picture": picture.value})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**event, "picture": "dark"})
    del event["picture"]  # an older segpipe's status: still valid (the field was added, not versioned)
    validator.validate(event)
    with pytest.raises(ValueError, match="CameraStatus.picture: expected a Picture"):
        CameraStatus(camera_id="c", state=CameraState.LIVE, ts=1.0, picture="frozen")  # type: ignore[arg-type]


def test_unicode_labels_stay_readable() -> None:
    res = FrameResult(camera_id="c", seq=0, pts=None, capture_ts=1.0, infer_ts=1.0, frame_size=(4, 4), model="m",
                      detections=(Detection(class_id=0, label="Fußgänger", score=1.0, box=(0, 0, 1, 1)),))
    assert "Fußgänger".encode() in encode(to_event(res))


def _bad(path: list, value: object) -> dict:
    res, _ = _result("rle", n=1)
    event = json.loads(encode(to_event(res)))
    node = event
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return event


_DELETE = object()


@pytest.mark.parametrize("path, value", [
    (["camera"], _DELETE),
    (["version"], 2),
    (["kind"], "frames"),
    (["seq"], -1),
    (["frame", "width"], 0),
    (["detections", 0, "box"], [1, 2, 3]),
    (["detections", 0, "score"], 1.5),
    (["detections", 0, "mask", "format"], "bitmap"),
    (["detections", 0, "mask", "counts"], [1, 2, 3]),
    (["detections", 0, "track_id"], 0),
    (["detections", 0, "track_id"], "7"),
    (["detections", 0, "zones"], "dock"),
    (["zone_counts"], {"dock": -1}),
    (["detections", 0, "dwell_s"], {"dock": "long"}),
    (["crossings"], [{"line": "gate", "direction": "up", "track_id": 1, "class_id": 0, "label": "car"}]),
    (["crossings"], [{"line": "gate", "direction": "in", "class_id": 0, "label": "car"}]),
])
def test_schema_rejects_broken_events(validator: jsonschema.Validator, path: list, value: object) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(_bad(path, value))


@pytest.mark.parametrize("mask, error", [
    ({"size": [W, H], "counts": "PZ1"}, "Detection.mask size: expected [48, 64]"),
    ({"size": [H, W], "counts": [3, 4]}, "compressed RLE str"),
    ([[1.0, 2.0, 3.0, 4.0]], "polygon: expected >= 3"),
])
def test_to_event_refuses_masks_not_over_the_frame(mask: object, error: str) -> None:
    res = FrameResult(camera_id="c", seq=0, pts=None, capture_ts=1.0, infer_ts=1.0, frame_size=(W, H), model="m",
                      detections=(Detection(class_id=0, label="a", score=0.5, box=(0, 0, 1, 1), mask=mask),))
    with pytest.raises(ValueError, match=error.replace("[", r"\[")):
        to_event(res)


def test_event_does_not_alias_the_result() -> None:
    res, _ = _result("polygon", n=1)
    before = copy.deepcopy(res.detections[0].mask)
    event = to_event(res)
    event["detections"][0]["mask"]["polygons"][0][0] = -5
    assert res.detections[0].mask == before


def test_docs_examples_match_the_schema(validator: jsonschema.Validator) -> None:
    import re

    from tests.conftest import REPO

    blocks = re.findall(r"```json\n(.*?)```", (REPO / "docs" / "events.md").read_text(), re.S)
    assert {json.loads(b)["kind"] for b in blocks} == {"frame", "status"}
    for block in blocks:
        validator.validate(json.loads(block))


def test_snapshot_matches_schema(validator: jsonschema.Validator) -> None:
    """A webhook sink's frame event with its picture validates; a picture in another format does not."""
    event = to_event(_result("none", n=1)[0])
    event["snapshot"] = {"format": "jpeg", "width": 640, "height": 360, "data": "/9j/4AAQ"}
    validator.validate(event)
    event["snapshot"]["format"] = "png"
    assert not validator.is_valid(event)


def _docs_python_blocks(section: str) -> list[str]:
    import re

    from tests.conftest import REPO

    text = (REPO / "docs" / "events.md").read_text()
    start = text.index(f"## {section}")
    body = text[start:text.index("\n## ", start + 3)]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_docs_webhook_receivers_run_as_written() -> None:
    """docs/events.md's receivers, run as written on signed requests: a crossing alerts; a zone event
    of a camera without lines (no `crossings`) and a status are taken (the first version raised
    KeyError on those: a 5xx, so the sink resent them forever); forged, tampered and stale ones are refused."""
    import dataclasses
    import time

    from pipeline.client import webhook_signature
    from pipeline.messages import Crossing, FrameAnalytics

    handler, stdlib = _docs_python_blocks("Receiving webhooks")
    alerts: list[tuple] = []
    scope: dict = {"SECRET": "s3cret", "alert": lambda *a: alerts.append(a)}
    exec(handler, scope)  # noqa: S102 - the documentation's own code
    exec(stdlib, scope)  # noqa: S102

    res, _ = _result("none", n=1)
    crossing = Crossing(line="stop", direction="in", track_id=3, class_id=0, label="person")
    crossed = to_event(dataclasses.replace(res, analytics=FrameAnalytics(crossings=(crossing,))))
    zoned = to_event(dataclasses.replace(res, analytics=FrameAnalytics(zone_counts={"door": 1})))
    status = status_event(CameraStatus(camera_id="cam", state=CameraState.LIVE, ts=1.0))
    ts = str(int(time.time()))
    for event in (crossed, zoned, status):
        body = encode(event)
        sig = webhook_signature("s3cret", ts, body)
        assert scope["handle"](body, {"x-segpipe-timestamp": ts, "x-segpipe-signature": sig}) == 204
        assert scope["verify"](b"s3cret", body, ts, sig)
        assert scope["handle"](body + b" ", {"X-Segpipe-Timestamp": ts, "X-Segpipe-Signature": sig}) == 401
        assert not scope["verify"](b"s3cret", body + b" ", ts, sig)
        old = str(int(ts) - 301)
        assert not scope["verify"](b"s3cret", body, old, webhook_signature("s3cret", old, body))
        assert not scope["verify"](b"other", body, ts, sig)
    assert alerts == [(res.camera_id, "stop", "in", "person", 3)]
