"""Camera rings in real shared memory for tests that play the decoders: one control block, writer
and reader per camera, unlinked again by ``close()``."""

from __future__ import annotations

from pipeline import shm


class CameraRings:
    """``n`` camera rings under the shm prefixes of ids ``base .. base + n - 1`` (a range no other test
    uses at the same time). Reader ``i`` is camera ``camera_id.format(i)``."""

    def __init__(self, n: int, base: int, *, nslots: int = 4, camera_id: str = "cam{}") -> None:
        self.prefixes = [shm.prefix_for(base + i) for i in range(n)]
        self.controls = [shm.ControlBlock(p, create=True) for p in self.prefixes]
        self.writers = [shm.RingWriter(p, nslots=nslots) for p in self.prefixes]
        self.readers = [shm.RingReader(p, camera_id=camera_id.format(i)) for i, p in enumerate(self.prefixes)]

    def close(self) -> None:
        for x in (*self.writers, *self.readers, *self.controls):
            x.close()
        for p in self.prefixes:
            shm.unlink_all(p)
