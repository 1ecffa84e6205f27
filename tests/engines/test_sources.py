"""Video sources of ``predict`` on real files as users' devices write them: damaged, turned, cut off."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engines.errors import SourceError
from engines.mp4 import unfinished_mp4
from engines.sources import iter_source, iter_video
from tests.pipeline.media import corrupt, frame_index, write_clip


def test_a_damaged_packet_is_skipped_and_the_frames_after_it_still_come(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", frames=30, fps=15, size=(160, 120), gop=5)
    # a span of garbage inside one sample: its packet fails to decode (InvalidDataError) in FFmpeg 5-8
    damaged = corrupt(clip, tmp_path / "damaged.mp4", start=0.3, length=0.02)
    items = list(iter_video(str(damaged)))
    assert [it.frame for it in items] == list(range(len(items)))
    assert 20 <= len(items) < 30 and frame_index(items[-1].image) == 29


def test_a_clip_with_a_display_rotation_is_read_upright(tmp_path: Path, ffmpeg: str) -> None:
    """A phone clip stored sideways with a rotation beside it: frames come as ffmpeg shows them."""
    clip = write_clip(tmp_path / "c.mp4", frames=2, fps=15, size=(96, 64))
    turned = tmp_path / "turned.mp4"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(clip), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(turned)], check=True)
    shown = subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(turned), "-frames:v", "1",
                            "-f", "rawvideo", "-pix_fmt", "bgr24", "-"], check=True, capture_output=True).stdout
    first = next(iter_video(str(turned))).image
    assert first.shape == (96, 64, 3) and first.flags.c_contiguous
    assert np.abs(first.astype(int) - np.frombuffer(shown, np.uint8).reshape(first.shape)).mean() < 2.0


@pytest.mark.parametrize("suffix", [".mts", ".m2ts", ".3gp"])
def test_camcorder_and_phone_files_are_videos(tmp_path: Path, suffix: str) -> None:
    clip = write_clip(tmp_path / f"c{suffix}", frames=3, fps=15, size=(96, 64))
    assert [it.frame for it in iter_source(str(clip))] == [0, 1, 2]  # (before: "unsupported source")


def test_an_animated_gif_is_a_video(tmp_path: Path) -> None:
    import av

    gif = tmp_path / "anim.gif"
    with av.open(str(gif), "w") as c:
        s = c.add_stream("gif", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "rgb8"
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            for pkt in s.encode(frame.reformat(format="rgb8")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    items = list(iter_source(str(gif)))
    assert len(items) == 4 and items[0].image.shape == (48, 64, 3)  # (before: "unsupported source")


def test_a_stream_that_fails_never_shows_its_password() -> None:
    from engines.errors import SourceError
    from tests.conftest import free_port

    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/cam"
    with pytest.raises(SourceError) as e:
        list(iter_video(url))
    assert "hunter2" not in str(e.value) and str(e.value).startswith("rtsp://***@127.0.0.1:")


def test_non_square_pixels_are_read_at_the_width_players_show(tmp_path: Path, ffmpeg: str) -> None:
    clip = tmp_path / "hdv.mp4"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=10",
                    "-frames:v", "2", "-vf", "setsar=4/3", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)],
                   check=True)
    assert [it.image.shape for it in iter_video(str(clip))] == [(64, 128, 3)] * 2


def test_an_mp4_cut_off_before_its_index_says_so(tmp_path: Path, ffmpeg: str) -> None:
    """A recording stopped before the file was closed has its frames but not its index (moov, written
    last): predict says that, not FFmpeg's "Invalid data found", and how to record so it cannot happen.
    Files that are not like that are not judged so: a whole MP4, a fragmented one cut short (its fragments
    index themselves, and it plays up to the cut), a .ts, a file that is not there."""
    clip = write_clip(tmp_path / "c.mp4", frames=30, fps=15, size=(96, 64))
    data = clip.read_bytes()
    assert data.index(b"moov") > data.index(b"mdat")  # PyAV, like most recorders, writes the index last
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"cut\.mp4: the MP4 was never finished: .* \+frag_keyframe\+empty_moov"):
        list(iter_video(str(cut)))
    fragmented = tmp_path / "frag.mp4"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(clip), "-c", "copy", "-movflags",
                    "+frag_keyframe+empty_moov", str(fragmented)], check=True)
    frag_cut = tmp_path / "frag_cut.mp4"
    frag_cut.write_bytes(fragmented.read_bytes()[: fragmented.stat().st_size * 2 // 3])
    assert 0 < len(list(iter_video(str(frag_cut)))) < 30
    ts = write_clip(tmp_path / "c.ts", frames=3, fps=15, size=(96, 64))
    for path in (clip, fragmented, frag_cut, ts, tmp_path / "absent.mp4"):
        assert unfinished_mp4(path) is None, path
    big = tmp_path / "big.mp4"  # a box with a 64-bit size, as recorders write mdat past 4 GiB
    big.write_bytes(struct.pack(">I4s", 16, b"ftyp") + b"isom" * 2 + struct.pack(">I4sQ", 1, b"mdat", 1 << 33))
    assert unfinished_mp4(big) is not None
