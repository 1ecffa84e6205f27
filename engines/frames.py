"""Decoded video frames as people see them. Imports numpy only: the run's decoder processes use it too,
and they never load cv2 or torch."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_shown(frame: Any, sar: Any = None) -> np.ndarray:
    """A PyAV video frame as (H, W, 3) uint8 BGR, as players show it.

    - At its display width when its pixels are not square (``sar``, the stream's sample aspect ratio:
      HDV's 1440x1080 shown 1920 wide, an analog encoder's 704x576 shown 4:3), scaled in the one colour
      conversion. The model saw such cameras' objects squeezed, and boxes, masks and zones were in stored
      pixels. A ratio outside 1/4..4 (a corrupt stream's) is ignored.
    - Turned as its display matrix says: a phone clip, or a camera mounted on its side, is stored sideways
      with a rotation beside it, and the model, the zones and the drawings must see what a person sees.
      A view then, not a copy.
    """
    if sar and sar != 1 and 0.25 <= sar <= 4:
        image = frame.to_ndarray(format="bgr24", width=max(round(frame.width * sar), 1), height=frame.height)
    else:
        image = frame.to_ndarray(format="bgr24")
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # counterclockwise, as np.rot90 counts
    return np.rot90(image, turns) if turns else image
