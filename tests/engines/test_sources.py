"""Video sources of ``predict`` on real files as users' devices write them: damaged, turned."""

from __future__ import annotations

from pathlib import Path

from engines.sources import iter_video
from tests.pipeline.media import corrupt, frame_index, write_clip


def test_a_damaged_packet_is_skipped_and_the_frames_after_it_still_come(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", frames=30, fps=15, size=(160, 120), gop=5)
    # a span of garbage inside one sample: its packet fails to decode (InvalidDataError) in FFmpeg 5-8
    damaged = corrupt(clip, tmp_path / "damaged.mp4", start=0.3, length=0.02)
    items = list(iter_video(str(damaged)))
    assert [it.frame for it in items] == list(range(len(items)))
    assert 20 <= len(items) < 30 and frame_index(items[-1].image) == 29
