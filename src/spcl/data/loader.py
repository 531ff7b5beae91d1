"""The training stream of one domain (docs/method.md#training-loop): identity-sampled batches, endless within an
epoch, that can stop after any batch and continue with exactly the next one.

The sampler's passes follow one another (a loader that drops the partial last batch is re-iterated
when a pass runs out); the position is the pass the current iteration started at and the number of
batches taken from it since, which is all a resume needs: the passes are pure functions of
``(seed, epoch, pass)``, and so are the augmentation seeds that come with every index.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from spcl.data.image_dataset import AugmentedImages
from spcl.data.sampler import RandomMultipleGallerySampler

__all__ = ["RankBatches", "TrainLoader"]


class RankBatches:
    """Cuts the sampler's one global stream into batches of ``batch_size`` and yields this rank's
    consecutive slice of each (all of it with one process): K ranks together see exactly the
    batches one process would, in the same order."""

    def __init__(self, sampler: RandomMultipleGallerySampler, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"a batch of {batch_size} does not split evenly over {world_size} processes")
        self.sampler = sampler
        self.batch_size = batch_size
        per_rank = batch_size // world_size
        self.part = slice(rank * per_rank, (rank + 1) * per_rank)

    def __iter__(self) -> Iterator[list[Any]]:
        batch: list[Any] = []
        for entry in self.sampler:
            batch.append(entry)
            if len(batch) == self.batch_size:
                yield batch[self.part]
                batch = []

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size


class TrainLoader:
    """Endless batches of ``(images, pids, indexes)`` of one domain, this rank's part of each.

    ``batch_size`` is the global batch (all ranks together). With ``persistent`` workers the same
    worker processes serve every pass and, through :meth:`set_sampler`, every epoch.
    """

    def __init__(
        self,
        dataset: AugmentedImages,
        sampler: RandomMultipleGallerySampler,
        batch_size: int,
        *,
        workers: int = 0,
        generator: torch.Generator | None = None,
        pin_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        persistent: bool = False,
    ) -> None:
        self.batches_of = RankBatches(sampler, batch_size, rank, world_size)
        self.batch_size = batch_size
        extra: dict[str, Any] = {"prefetch_factor": prefetch, "persistent_workers": persistent} if workers > 0 else {}
        self.loader = DataLoader(
            dataset, batch_sampler=self.batches_of, num_workers=workers, generator=generator,
            pin_memory=pin_memory, **extra,
        )
        self._iterator: Any = None
        self.iter_pass = sampler.pass_index
        self.batches = 0

    @property
    def sampler(self) -> RandomMultipleGallerySampler:
        return self.batches_of.sampler

    def set_sampler(self, sampler: RandomMultipleGallerySampler) -> None:
        """Continue with another stream (the next epoch's labels), keeping the worker processes."""
        self.batches_of.sampler = sampler
        self._iterator, self.iter_pass, self.batches = None, sampler.pass_index, 0

    def next(self) -> Any:
        """The next batch, starting a new pass of the sampler when the current one is used up."""
        for _ in range(2):
            if self._iterator is None:
                self.iter_pass = self.sampler.pass_index
                self._iterator = iter(self.loader)
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator, self.batches = None, 0
                continue
            self.batches += 1
            return batch
        raise RuntimeError("the sampler yields no full batch: fewer training samples than the batch size")

    def state_dict(self) -> dict[str, int]:
        """Where the stream is: the pass the current iteration started at and the (global) batches
        taken from it; the same on every rank, so any number of ranks can resume it."""
        return {"pass": int(self.iter_pass), "batches": int(self.batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after the batches a stopped run had taken (call before the first :meth:`next`)."""
        self.sampler.resume(state["pass"], state["batches"] * self.batch_size)
        self._iterator = None
        self.iter_pass, self.batches = int(state["pass"]), int(state["batches"])
