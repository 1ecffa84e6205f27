"""Why an MP4 will not open, when FFmpeg only says "Invalid data found". Leaf module: imports nothing
from segpipe and nothing outside the standard library (the run's decoder processes use it)."""

from __future__ import annotations

import struct
from pathlib import Path

_MP4_SUFFIXES = (".mp4", ".m4v", ".mov", ".3gp")


def _top_level_boxes(path: Path, limit: int = 4096) -> list[bytes]:
    """The types of the ISO-BMFF boxes at the top of ``path``, in order, up to ``limit`` of them; it stops
    at a box that runs past the end of the file (a cut-off file's last) or does not parse."""
    kinds: list[bytes] = []
    with path.open("rb") as f:
        end = f.seek(0, 2)
        pos = 0
        while pos + 8 <= end and len(kinds) < limit:
            f.seek(pos)
            size, kind = struct.unpack(">I4s", f.read(8))
            if size == 1:  # a 64-bit size follows
                raw = f.read(8)
                if len(raw) < 8:
                    break
                size = struct.unpack(">Q", raw)[0]
            elif size == 0:  # the box runs to the end of the file
                size = end - pos
            kinds.append(kind)
            if size < 8 or pos + size > end:
                break
            pos += size
    return kinds


def unfinished_mp4(path: str | Path) -> str | None:
    """A sentence saying why ``path`` cannot be played when it is an MP4 (or MOV) whose recording was
    cut off before the file was closed: its video data (``mdat``) is there but not its index (``moov``),
    which a recorder writes last. None when that is not what is wrong (not such a file, not readable, an
    index present, or a fragmented MP4, whose fragments index themselves)."""
    p = Path(path)
    if p.suffix.lower() not in _MP4_SUFFIXES:
        return None
    try:
        kinds = _top_level_boxes(p)
    except (OSError, struct.error):
        return None
    if b"mdat" not in kinds or b"moov" in kinds or b"moof" in kinds:
        return None
    return ("the MP4 was never finished: its video data is there but not its index (the moov box, which a "
            "recorder writes when it closes the file), so nothing can play it; record to .mkv or .ts, or to MP4 "
            "with ffmpeg's -movflags +frag_keyframe+empty_moov, and a recording that is cut off stays readable")
