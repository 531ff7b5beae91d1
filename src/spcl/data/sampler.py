"""The reference's "random multiple gallery" identity sampler (docs/method.md#training-loop).

Each pass visits every class once in random order. A class contributes one random anchor image
and then ``num_instances - 1`` more images of the same class, drawn from its images taken by
*other cameras* than the anchor; when the class has no other camera, from its other images. The
draw is without replacement when at least ``num_instances`` candidates exist and with replacement
otherwise (the reference's threshold, kept on purpose). A class with a single image (an
un-clustered target instance) contributes just its anchor: outliers are trained on.

Randomness never touches a global generator: the order of a pass is a pure function of
``(seed, epoch, pass_index)``, so a run resumed from :meth:`state_dict` replays the same stream.
With ``seeded=True`` every index comes with the seed of its augmentation, drawn from its own
stream of the same ``(seed, epoch, pass_index)``; :meth:`resume` restarts the stream in the middle
of a pass, so a run stopped at any batch continues with exactly the next one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from spcl.data.base import camera_codes

__all__ = ["RandomMultipleGallerySampler"]


_AUGMENTATION_STREAM = 1


class RandomMultipleGallerySampler(Sampler[Any]):
    """Yields dataset indices grouped by class, ``num_instances`` per class (1 for singletons).

    ``pids`` are the training labels: true identities for the source domain, pseudo labels
    (clusters then one class per un-clustered instance) for the target. Samples with a negative
    label are skipped, as the reference does for unlabelled images. ``camids`` are the cameras
    (None: unknown, a camera of its own).

    The stream of one pass is derived from ``(seed, epoch, pass_index)``; ``set_epoch`` selects
    the epoch and restarts the pass counter, and every further ``iter()`` in the same epoch (a
    loader that cycles to reach a fixed number of iterations) gives a new, reproducible order.
    """

    def __init__(
        self,
        pids: Sequence[int] | np.ndarray,
        camids: Sequence[int | None] | np.ndarray,
        num_instances: int = 4,
        seed: int = 0,
        epoch: int = 0,
        min_length: int = 0,
        seeded: bool = False,
    ) -> None:
        """``min_length``: one ``iter()`` chains further passes until it yields at least this many
        indices, so a loader that drops partial batches always gets a batch even when clusters are
        so large that one pass is shorter than a batch (where the reference's loader stalls).
        ``seeded``: yield ``(index, augmentation seed)`` pairs instead of indices."""
        self.min_length = int(min_length)
        self.seeded = bool(seeded)
        self.iter_pass = 0
        self._skip = 0
        pids_arr = np.asarray(pids, dtype=np.int64).reshape(-1)
        cams_arr = camera_codes(np.asarray(camids, dtype=object).reshape(-1))
        if pids_arr.shape != cams_arr.shape:
            raise ValueError(
                f"pids and camids must have the same length, got {pids_arr.size} and {cams_arr.size}"
            )
        if num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {num_instances}")
        self.num_instances = int(num_instances)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.pass_index = 0

        keep = np.flatnonzero(pids_arr >= 0)
        # Classes in ascending label order; members in dataset order (stable sort).
        order = keep[np.argsort(pids_arr[keep], kind="stable")]
        labels, starts = np.unique(pids_arr[order], return_index=True)
        self.class_labels = labels
        self._members: list[np.ndarray] = np.split(order, starts[1:]) if order.size else []
        self._cams: list[np.ndarray] = [cams_arr[m] for m in self._members]
        sizes = np.array([m.size for m in self._members], dtype=np.int64)
        # A class of one image yields 1 index; any larger class yields num_instances.
        self._length = int(np.where(sizes > 1, self.num_instances, 1).sum())

    @property
    def num_classes(self) -> int:
        """Number of classes visited in one pass (clusters + un-clustered instances)."""
        return len(self._members)

    def __len__(self) -> int:
        """Exact number of indices one pass yields (the reference reports the class count)."""
        return self._length

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose streams the next passes produce, restarting the pass count."""
        self.epoch = int(epoch)
        self.pass_index = 0

    def resume(self, pass_index: int, skip: int) -> None:
        """Make the next ``iter()`` the one that started at ``pass_index``, without its first
        ``skip`` entries (those a stopped run had already trained on)."""
        self.pass_index = int(pass_index)
        self._skip = int(skip)

    def state_dict(self) -> dict[str, int]:
        """Everything needed to replay the next pass exactly after a resume."""
        return {"seed": self.seed, "epoch": self.epoch, "pass_index": self.pass_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the position saved by :meth:`state_dict`."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.pass_index = int(state["pass_index"])

    def __iter__(self) -> Iterator[Any]:
        self.iter_pass = self.pass_index
        out: list[int] = []
        while True:
            rng = np.random.default_rng([self.seed, self.epoch, self.pass_index])
            self.pass_index += 1
            out.extend(self._draw(rng))
            if len(out) >= self.min_length or not out:
                break
        skip, self._skip = self._skip, 0
        if not self.seeded:
            return iter(out[skip:])
        seeds = np.random.default_rng([self.seed, self.epoch, self.iter_pass, _AUGMENTATION_STREAM]).integers(
            0, 2**63 - 1, size=len(out), dtype=np.int64
        )
        return iter(list(zip(out, seeds.tolist()))[skip:])

    def _draw(self, rng: np.random.Generator) -> list[int]:
        """One pass: classes in random order, anchor first, then its gallery companions."""
        k = self.num_instances - 1
        out: list[int] = []
        for c in rng.permutation(len(self._members)):
            members = self._members[c]
            cams = self._cams[c]
            a = int(rng.integers(members.size))
            out.append(int(members[a]))
            if k == 0 or members.size == 1:
                continue
            candidates = np.flatnonzero(cams != cams[a])
            if candidates.size == 0:
                candidates = np.delete(np.arange(members.size), a)
            replace = candidates.size < self.num_instances
            picks = rng.choice(candidates, size=k, replace=replace)
            out.extend(int(i) for i in members[picks])
        return out
