"""The training stream of one domain (SPEC section 7): identity-sampled batches, endless within an
epoch, that can stop after any batch and continue with exactly the next one.

The sampler's passes follow one another (a loader that drops the partial last batch is re-iterated
when a pass runs out); the position is the pass the current iteration started at and the number of
batches taken from it since, which is all a resume needs: the passes are pure functions of
``(seed, epoch, pass)``, and so are the augmentation seeds that come with every index.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from spcl.data.image_dataset import AugmentedImages
from spcl.data.sampler import RandomMultipleGallerySampler

__all__ = ["TrainLoader"]


class TrainLoader:
    """Endless batches of ``(images, pids, indexes)`` of one domain for one epoch."""

    def __init__(
        self,
        dataset: AugmentedImages,
        sampler: RandomMultipleGallerySampler,
        batch_size: int,
        *,
        workers: int = 0,
        generator: torch.Generator | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
            generator=generator, pin_memory=pin_memory, persistent_workers=False,
        )
        self._iterator: Any = None
        self.iter_pass = sampler.pass_index
        self.batches = 0

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
        """Where the stream is: the pass the current iteration started at and the batches taken from it."""
        return {"pass": int(self.iter_pass), "batches": int(self.batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after the batches a stopped run had taken (call before the first :meth:`next`)."""
        self.sampler.resume(state["pass"], state["batches"] * self.batch_size)
        self._iterator = None
        self.iter_pass, self.batches = int(state["pass"]), int(state["batches"])
