"""Per-camera object tracking: a stable ``track_id`` for each object across a camera's frames.

Imports from pipeline/ only ``messages`` and ``config``. The association is ByteTrack's (Zhang et al.,
2022): confident detections first, then the low-score ones (a partly hidden object's score drops
before it vanishes) against the tracks that were seen on the previous frame, each round solved
globally (Hungarian, scipy) on box IoU with a Kalman-predicted box per track. Three additions for a
stream that drops frames under load or is sampled at a few frames/s:

- the step between two results is the gap in their decoder ``seq``, so a track predicts as far as
  the frames the model never saw (overwritten in the camera's ring, or older than
  ``batch.max_age_ms``); ``max_lost_frames`` also counts decoder frames. (A camera's ``fps`` limit
  samples before numbering: its kept frames are consecutive.)
- boxes are compared grown by a fraction of their size (C-BIoU), so fast objects keep overlapping;
- a camera's tracks end at a gap in its stream: at its first frame captured after it stopped being
  live (stall, reconnect), or when its ``seq`` goes back. The objects seen before a gap say nothing
  about the picture after it. (Frames captured before the status change, still on their way through
  the model when the status arrives, continue the old tracks.)

Only objects of one class continue a track. A detection gets an id once its track is confirmed
(``min_hits`` matched frames in a row); until then, and for low-score detections that continue no
track, ``track_id`` stays None. No detection is ever removed or changed otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.config import TrackingConfig
from pipeline.messages import CameraState, CameraStatus, Detection, FrameResult

# ByteTrack's own fixed thresholds for its second and third rounds (low-score detections against
# tracks seen last frame; confident leftovers against tracks still unconfirmed).
LOW_MATCH_IOU = 0.5
TENTATIVE_MATCH_IOU = 0.3
# Rounds 1 and 3 compare boxes grown on every side by these fractions of their size (C-BIoU, Yang et
# al., 2023): an object that moves more than its own size between two results (a camera sampled at a
# few frames/s, frames dropped) still overlaps its track. A new track has no velocity yet, so its round
# grows more. Measured on demo clips sampled at 5 frames/s (benchmarks/demo_accuracy.py --camera-fps 5):
# IDF1 0.775 -> 0.956 and id switches 11 -> 1, nothing lost at 15 frames/s.
MATCH_GROW = 0.3
TENTATIVE_GROW = 0.5

# Kalman noise as fractions of the box height (SORT/DeepSORT's values): position, velocity.
_STD_POS = 1.0 / 20
_STD_VEL = 1.0 / 160


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), xyxy pixels -> (N, M)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _grow(boxes: np.ndarray, grow: float) -> np.ndarray:
    """(N, 4) xyxy boxes widened by ``grow`` x their width and height on every side."""
    wh = boxes[:, 2:] - boxes[:, :2]
    return np.concatenate([boxes[:, :2] - grow * wh, boxes[:, 2:] + grow * wh], 1)


def _to_xyah(box: np.ndarray) -> np.ndarray:
    w, h = box[..., 2] - box[..., 0], np.maximum(box[..., 3] - box[..., 1], 1e-6)
    return np.stack([box[..., 0] + w / 2, box[..., 1] + h / 2, w / h, h], -1)


def _to_xyxy(xyah: np.ndarray) -> np.ndarray:
    cx, cy, a, h = xyah[..., 0], xyah[..., 1], xyah[..., 2], xyah[..., 3]
    w = a * h
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


class _Kalman:
    """Constant-velocity Kalman filter on (cx, cy, aspect w/h, h) and their rates per frame.

    Vectorised over tracks: ``mean`` (N, 8), ``cov`` (N, 8, 8). The noise scales with each box's
    height, so a near and a far object are equally sure of themselves relative to their size. The
    transition is F = I + E (E adds each rate to its value), the observation H = [I 0] (the box);
    both are applied as slices.
    """

    @staticmethod
    def initiate(xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = xyah[:, 3]
        std = np.stack([2 * _STD_POS * h, 2 * _STD_POS * h, np.full_like(h, 1e-2), 2 * _STD_POS * h,
                        10 * _STD_VEL * h, 10 * _STD_VEL * h, np.full_like(h, 1e-5), 10 * _STD_VEL * h], -1)
        mean = np.concatenate([xyah, np.zeros_like(xyah)], -1)
        return mean, _diag(std**2)

    @classmethod
    def predict(cls, mean: np.ndarray, cov: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """``steps`` frames ahead in closed form, so a long gap costs what one frame does.

        F^k = I + kE (E shifts rates onto values, E^2 = 0), and the k process noises sum to
        kQ + S1 (EQ + QE^T) + S2 EQE^T with S1 = sum(j), S2 = sum(j^2) over j < k; Q is taken at the
        current height (exactly what k one-frame steps give when the height is steady).
        """
        k = float(steps)
        h = mean[:, 3]
        q = np.stack([_STD_POS * h, _STD_POS * h, np.full_like(h, 1e-2), _STD_POS * h,
                      _STD_VEL * h, _STD_VEL * h, np.full_like(h, 1e-5), _STD_VEL * h], -1) ** 2  # diag(Q)
        s1, s2 = k * (k - 1) / 2, (k - 1) * k * (2 * k - 1) / 6
        # As slices, not 8x8 products (numpy's per-call cost is most of a frame's): (I + kE) x adds k
        # times each rate to its value; for the covariance, rows then columns. EQ, QE^T and EQE^T of a
        # diagonal Q put the rates' variances at (i, i+4), (i+4, i) and (i, i), i < 4.
        mean = mean.copy()
        mean[:, :4] += k * mean[:, 4:]
        cov = cov.copy()
        cov[:, :4, :] += k * cov[:, 4:, :]
        cov[:, :, :4] += k * cov[:, :, 4:]
        i8, i4 = np.arange(8), np.arange(4)
        cov[:, i8, i8] += k * q
        cov[:, i4, i4 + 4] += s1 * q[:, 4:]
        cov[:, i4 + 4, i4] += s1 * q[:, 4:]
        cov[:, i4, i4] += s2 * q[:, 4:]
        return mean, cov

    @classmethod
    def update(cls, mean: np.ndarray, cov: np.ndarray, xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = mean[:, 3]
        std = np.stack([_STD_POS * h, _STD_POS * h, np.full_like(h, 1e-1), _STD_POS * h], -1)
        s = cov[:, :4, :4] + _diag(std**2)                            # (N, 4, 4) innovation covariance (H = [I 0])
        gain = np.linalg.solve(s, cov[:, :, :4].transpose(0, 2, 1)).transpose(0, 2, 1)  # (N, 8, 4)
        innovation = xyah - mean[:, :4]
        mean = mean + (gain @ innovation[..., None])[..., 0]
        cov = cov - gain @ s @ gain.transpose(0, 2, 1)
        return mean, cov


def _diag(v: np.ndarray) -> np.ndarray:
    out = np.zeros(v.shape + v.shape[-1:])
    idx = np.arange(v.shape[-1])
    out[..., idx, idx] = v
    return out


class Tracker:
    """One camera's tracks. ``update`` takes a frame's detections and returns their track ids.

    Track state lives in parallel arrays (one row per track), so predicting, matching and updating
    cost a few numpy calls per frame whatever the number of objects.
    """

    def __init__(self, cfg: TrackingConfig, *, first_id: int = 1) -> None:
        self.cfg = cfg
        self._last_seq: int | None = None
        self._first_id = self._next_id = first_id
        self.reset()

    def reset(self) -> None:
        """Forget every track (ids keep counting up, so an id never names two objects)."""
        self._mean = np.zeros((0, 8))        # Kalman state (cx, cy, w/h, h and their rates)
        self._cov = np.zeros((0, 8, 8))
        self._cls = np.zeros(0, np.int64)    # class of the track's objects
        self._seen = np.zeros(0, np.int64)   # decoder seq of the last matched frame
        self._hits = np.zeros(0, np.int64)   # matched frames in a row while unconfirmed
        self._first = np.zeros((0, 4))       # the box that started the track
        self.born: dict[int, tuple[float, ...]] = {}  # ids given on the last update -> their first box
        self._id = np.zeros(0, np.int64)     # track id, 0 while unconfirmed
        self._last_seq = None

    @property
    def active(self) -> int:
        """Confirmed tracks currently held (seen, or lost for at most ``max_lost_frames``)."""
        return int((self._id > 0).sum())

    @property
    def started(self) -> int:
        """Track ids handed out so far."""
        return self._next_id - self._first_id

    def update(self, seq: int, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> list[int | None]:
        """Track ids for one frame's detections, in their order.

        seq: the decoder's frame number (a step back resets the camera's tracks). boxes: (N, 4) xyxy
        frame pixels; scores: (N,); class_ids: (N,) ints.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if self._last_seq is not None and seq <= self._last_seq:
            self.reset()
        self.born = {}
        prev, self._last_seq = self._last_seq, seq
        # unconfirmed tracks all matched on the previous frame (the others were dropped there)
        self._keep(seq - self._seen <= self.cfg.max_lost_frames + 1)
        if prev is not None and len(self._id):
            self._mean, self._cov = _Kalman.predict(self._mean, self._cov, seq - prev)
        confirmed, tentative = np.flatnonzero(self._id > 0), np.flatnonzero(self._id == 0)
        predicted = _to_xyxy(self._mean[:, :4])
        high, low = np.flatnonzero(scores >= self.cfg.high_score), np.flatnonzero(scores < self.cfg.high_score)

        # 1: confident detections against every confirmed track, seen last frame or lost since
        first = self._associate(predicted, confirmed, boxes, high, class_ids, self.cfg.match_iou, MATCH_GROW)
        # 2: low-score detections against the confirmed tracks seen last frame that round 1 left
        # (masks, not Python loops over numpy ints: this runs for every camera's every frame)
        taken = np.zeros(len(self._id), bool)
        taken[[t for t, _ in first]] = True
        recent = confirmed[~taken[confirmed] & (self._seen[confirmed] == (-1 if prev is None else prev))]
        second = self._associate(predicted, recent, boxes, low, class_ids, LOW_MATCH_IOU, 0.0)
        # 3: confident detections still unmatched against the unconfirmed tracks
        used = np.zeros(len(boxes), bool)
        used[[d for _, d in first]] = True
        left = high[~used[high]]
        third = self._associate(predicted, tentative, boxes, left, class_ids, TENTATIVE_MATCH_IOU, TENTATIVE_GROW)

        ids: list[int | None] = [None] * len(boxes)
        pairs = first + second + third
        if pairs:
            ti, di = (np.array(v, np.int64) for v in zip(*pairs, strict=True))
            self._mean[ti], self._cov[ti] = _Kalman.update(self._mean[ti], self._cov[ti], _to_xyah(boxes[di]))
            self._seen[ti] = seq
            unconfirmed = ti[self._id[ti] == 0]
            self._hits[unconfirmed] += 1
            for t in unconfirmed[self._hits[unconfirmed] >= self.cfg.min_hits].tolist():
                self._id[t] = self._take_id()
                self.born[int(self._id[t])] = tuple(self._first[t].tolist())
            for d, i in zip(di.tolist(), self._id[ti].tolist(), strict=True):
                ids[d] = i or None
        keep = self._id > 0
        keep[[t for t, _ in third]] = True
        self._keep(keep)
        used[[d for _, d in third]] = True
        new = left[~used[left] & (scores[left] >= self.cfg.new_track_score)]
        if len(new):
            self._start(new, boxes, class_ids, seq, ids)
        return ids

    def _start(self, new: np.ndarray, boxes: np.ndarray, class_ids: np.ndarray, seq: int,
               ids: list[int | None]) -> None:
        mean, cov = _Kalman.initiate(_to_xyah(boxes[new]))
        track_ids = np.array([self._take_id() if self.cfg.min_hits <= 1 else 0 for _ in new], np.int64)
        self._first = np.concatenate([self._first, boxes[new]])
        for d, i in zip(new.tolist(), track_ids.tolist(), strict=True):
            ids[d] = i or None
        self._mean, self._cov = np.concatenate([self._mean, mean]), np.concatenate([self._cov, cov])
        self._cls = np.concatenate([self._cls, np.asarray(class_ids, np.int64)[new]])
        self._seen = np.concatenate([self._seen, np.full(len(new), seq, np.int64)])
        self._hits = np.concatenate([self._hits, np.ones(len(new), np.int64)])
        self._id = np.concatenate([self._id, track_ids])

    def _keep(self, mask: np.ndarray) -> None:
        self._mean, self._cov, self._cls = self._mean[mask], self._cov[mask], self._cls[mask]
        self._seen, self._hits, self._id = self._seen[mask], self._hits[mask], self._id[mask]
        self._first = self._first[mask]

    def _associate(self, predicted: np.ndarray, tracks_i: np.ndarray, boxes: np.ndarray, dets_i: np.ndarray,
                   class_ids: np.ndarray, thr: float, grow: float) -> list[tuple[int, int]]:
        """Globally best (track index, detection index) pairs of one class at IoU >= ``thr``, the IoU of
        both boxes grown by ``grow`` times their width and height on every side."""
        if len(tracks_i) == 0 or len(dets_i) == 0:
            return []
        iou = box_iou(_grow(predicted[tracks_i], grow), _grow(boxes[dets_i], grow))
        iou = np.where(self._cls[tracks_i][:, None] == np.asarray(class_ids)[dets_i][None, :], iou, 0.0)
        rows, cols = linear_sum_assignment(-iou)
        return [(int(tracks_i[r]), int(dets_i[c])) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= thr]

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1


def with_track_ids(result: FrameResult, ids: Sequence[int | None]) -> FrameResult:
    """A copy of ``result`` whose detections carry ``ids`` (one each)."""
    dets = tuple(Detection(d.class_id, d.label, d.score, d.box, d.mask, i, d.zones, d.dwell_s)
                 for d, i in zip(result.detections, ids, strict=True))
    return dataclasses.replace(result, detections=dets)


class CameraTrackers:
    """A ``Tracker`` per camera, fed the sink stage's FrameResults and CameraStatuses in arrival order."""

    def __init__(self, cfg: TrackingConfig, *, first_ids: Mapping[str, int] | None = None) -> None:
        """first_ids: camera -> its first track id (after a restart, past the ids handed out before)."""
        self.cfg = cfg
        self._first_ids = dict(first_ids or {})
        self._by_camera: dict[str, Tracker] = {}
        self._gap_at: dict[str, float] = {}  # camera -> when it stopped being live (wall clock)
        self._reported: dict[str, int] = {}  # camera -> ids counted by take_started

    def on_status(self, status: CameraStatus) -> None:
        """Any state but LIVE ends the camera's tracks at its next frame captured after ``status.ts``."""
        if status.state is not CameraState.LIVE:
            self._gap_at.setdefault(status.camera_id, status.ts)

    def apply(self, result: FrameResult) -> FrameResult:
        """``result`` with each detection's ``track_id`` set (None while its track is unconfirmed)."""
        return with_track_ids(result, self.track(result))

    def track(self, result: FrameResult) -> list[int | None]:
        """Each detection's track id (None while its track is unconfirmed), in order."""
        tracker = self._by_camera.get(result.camera_id)
        if tracker is None:
            tracker = self._by_camera[result.camera_id] = Tracker(self.cfg,
                                                                  first_id=self._first_ids.get(result.camera_id, 1))
        gap = self._gap_at.get(result.camera_id)
        if gap is not None and result.capture_ts > gap:
            del self._gap_at[result.camera_id]
            tracker.reset()
        dets = result.detections
        boxes = np.array([d.box for d in dets], np.float64).reshape(-1, 4)
        scores = np.array([d.score for d in dets], np.float64)
        classes = np.array([d.class_id for d in dets], np.int64)
        return tracker.update(result.seq, boxes, scores, classes)

    def born(self, camera_id: str) -> dict[int, tuple[float, ...]]:
        """Track ids the camera's last ``track`` call confirmed -> the box that started each (seen before
        it had an id: where the object came from, for counting lines)."""
        tracker = self._by_camera.get(camera_id)
        return tracker.born if tracker is not None else {}

    def forget(self, camera_ids: Sequence[str]) -> None:
        """Drop the tracks of cameras removed from the run (a config reload)."""
        for cid in camera_ids:
            for held in (self._by_camera, self._gap_at, self._reported):
                held.pop(cid, None)

    def active(self) -> dict[str, int]:
        """Confirmed tracks held per camera."""
        return {cam: t.active for cam, t in self._by_camera.items()}

    def take_started(self) -> dict[str, int]:
        """Track ids handed out per camera since the previous call (cameras with none left out)."""
        out = {}
        for cam, t in self._by_camera.items():
            n = t.started - self._reported.get(cam, 0)
            if n:
                out[cam] = n
                self._reported[cam] = t.started
        return out
