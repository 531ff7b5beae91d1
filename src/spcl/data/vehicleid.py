"""The VehicleID gallery draw (docs/method.md#evaluation): one random image per identity, 10 seeded draws.

The draw is a convention shared by the dataset reader and the evaluation: ``spcl.data.load(
"vehicleid", draw=d)`` builds its query/gallery lists with :func:`vehicleid_gallery_split`, and
the evaluation's draw ``d`` of the whole test list (``Dataset.test``) is the same images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["VEHICLEID_NUM_DRAWS", "VEHICLEID_TEST_SIZES", "vehicleid_gallery_split"]

VEHICLEID_TEST_SIZES = (800, 1600, 2400)
VEHICLEID_NUM_DRAWS = 10


def vehicleid_gallery_split(
    pids: np.ndarray | Sequence[int], draw: int, seed_base: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(query_idx, gallery_idx): positions into `pids` for VehicleID draw `draw`.

    Convention: ``rng = np.random.default_rng(seed_base + draw)``; the identities are taken in
    ascending pid order and ``choice = rng.integers(0, counts)`` draws, for the k-th identity, which
    of its images (counted in list order) goes to the gallery. Both outputs are ascending positions;
    every other image is a query. Deterministic for (pids, draw, seed_base).
    """
    pids = np.asarray(pids)
    if pids.ndim != 1 or len(pids) == 0:
        raise ValueError(f"pids must be a non-empty 1-D array, got shape {pids.shape}")
    if isinstance(draw, bool) or not isinstance(draw, (int, np.integer)) or draw < 0:
        raise ValueError(f"draw must be a non-negative integer, got {draw!r}")
    order = np.argsort(pids, kind="stable")  # grouped by ascending pid, list order inside a group
    _, first, counts = np.unique(pids[order], return_index=True, return_counts=True)
    rng = np.random.default_rng(seed_base + int(draw))
    choice = rng.integers(0, counts)
    gallery = np.sort(order[first + choice])
    is_gallery = np.zeros(len(pids), dtype=bool)
    is_gallery[gallery] = True
    return np.flatnonzero(~is_gallery), gallery
