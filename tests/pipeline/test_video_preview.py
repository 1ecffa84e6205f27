"""A video sink in a real run draws on the camera's own frames (forwarded as FramePreview), downscaled
to its max_width; without a drawing sink no pixels travel to the sink stage."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from pipeline.device import DeviceSettings
from pipeline.supervisor import Supervisor
from tests.pipeline.media import make_frame, write_clip
from tests.pipeline.test_supervisor import MODEL, config


def test_video_sink_records_the_real_frames(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "cam.mp4", frames=6, fps=15, size=(160, 128))
    cfg = config(tmp_path, [{"id": "cam", "url": str(clip), "realtime": False, "lossless": True}],
                 sinks=[{"type": "video", "dir": str(tmp_path / "video"), "max_width": 96}],
                 # A random-weight model's masks could cover the picture: no detections (conf 1.0) leaves
                 # the recorded frame to be compared with the camera's own.
                 model={**MODEL, "conf": 1.0})
    assert DeviceSettings.from_config(cfg).preview_width == 96
    assert Supervisor(cfg=cfg).run() == 0
    files = sorted((tmp_path / "video").glob("cam*.mp4"))
    assert len(files) == 1
    with av.open(str(files[0])) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(frames) == 6
    assert frames[0].shape[1] <= 96
    # The recorded frame is the camera's picture, not a blank canvas: it correlates with the source.
    import cv2

    source = cv2.cvtColor(make_frame(0, size=(160, 128)), cv2.COLOR_BGR2GRAY).astype(np.float32)
    got = cv2.cvtColor(cv2.resize(frames[0], (160, 128)), cv2.COLOR_BGR2GRAY).astype(np.float32)
    assert np.corrcoef(source.ravel(), got.ravel())[0, 1] > 0.9


def test_no_drawing_sink_sends_no_pixels(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "cam.mp4", frames=2, fps=15, size=(96, 64))
    cfg = config(tmp_path, [{"id": "cam", "url": str(clip)}])
    assert DeviceSettings.from_config(cfg).preview_width is None
