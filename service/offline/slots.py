"""Memory shared by a bulk run's parent and its forked workers, a slot for each chunk under way."""

from __future__ import annotations

import mmap

import numpy as np

from service.core.features import FEATURES


class Slots:
    """A ring of slots of memory shared by the parent and the workers (an anonymous shared mapping
    made before the fork), each for one chunk: the rows as the walker reads them (float32,
    row-major), each worker writing its share of the columns; each worker's bit sets of refused and
    out-of-distribution values (uint32 a row); then the probabilities (float64), written by the
    worker that walks the chunk."""

    def __init__(self, count: int, chunk_rows: int, workers: int) -> None:
        self.chunk_rows, self.workers = chunk_rows, workers
        self._layout = {"rows": 0, "probability": 4 * len(FEATURES) * chunk_rows}
        self._layout["refused"] = self._layout["probability"] + 8 * chunk_rows
        self._layout["outside"] = self._layout["refused"] + 4 * workers * chunk_rows
        size = self._layout["outside"] + 4 * workers * chunk_rows
        self.size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE  # each slot starts on a page
        self._memory = mmap.mmap(-1, count * self.size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)

    def _array(self, slot: int, part: str, dtype: type, count: int, offset: int = 0) -> np.ndarray:
        if count > self.chunk_rows * (len(FEATURES) if part == "rows" else 1):
            raise ValueError(f"{count} values do not fit in a slot of {self.chunk_rows} rows")
        start = slot * self.size + self._layout[part] + offset
        return np.frombuffer(self._memory, dtype, count, start)

    def rows(self, slot: int, n: int) -> np.ndarray:
        return self._array(slot, "rows", np.float32, n * len(FEATURES)).reshape(n, len(FEATURES))

    def probability(self, slot: int, n: int) -> np.ndarray:
        return self._array(slot, "probability", np.float64, n)

    def refused(self, slot: int, k: int, n: int) -> np.ndarray:
        return self._array(slot, "refused", np.uint32, n, 4 * k * self.chunk_rows)

    def outside(self, slot: int, k: int, n: int) -> np.ndarray:
        return self._array(slot, "outside", np.uint32, n, 4 * k * self.chunk_rows)

    def bits(self, slot: int, part: str, n: int) -> np.ndarray:
        """Every worker's bit set of the slot's rows, OR-ed: a bit a feature."""
        return np.bitwise_or.reduce(
            [self._array(slot, part, np.uint32, n, 4 * k * self.chunk_rows) for k in range(self.workers)]
        )
