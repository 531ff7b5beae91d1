"""The processes of a run: one, or K started by ``torchrun`` (PyTorch's ``torch.distributed``).

``Distributed`` is what the rest of the code asks about the processes: which rank this is, how a
list is cut over the ranks, and the few collectives the trainer needs (gather rows in rank order,
average tensors, broadcast a Python object, agree on a flag). With one process every method is the
identity, so the single-process run and the K-process run are the same code.

``init_distributed`` joins the process group that ``torchrun`` describes in the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), with NCCL on CUDA and
gloo on the CPU. Without those variables it does nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Distributed", "close_distributed", "init_distributed", "launched_ranks"]


def launched_ranks() -> int:
    """How many processes ``torchrun`` started for this run (1 without ``torchrun``)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be a whole number, got {os.environ['WORLD_SIZE']!r}") from None


@dataclass(frozen=True)
class Distributed:
    """This process's place among the run's processes (rank 0 of 1 without ``torchrun``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    """Where the collectives' tensors must be: the rank's GPU with NCCL, the CPU with gloo."""

    @classmethod
    def current(cls) -> Distributed:
        """The process group this process has joined, or a single process when it has joined none."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        return cls(rank, world, local, device)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (sizes differ by at most one, rank order = list order)."""
        return slice(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. writing files the others then read), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of a 2-D tensor, concatenated in rank order, on every rank (on
        ``local``'s device). The ranks may hold different numbers of rows: an uneven shard, or
        none (a 0 x 0 tensor)."""
        if not self.enabled:
            return local
        if local.dim() != 2:
            raise ValueError(f"gather_rows takes a 2-D tensor, got shape {tuple(local.shape)}")
        shape = torch.tensor(list(local.shape), device=self.device)
        shapes = [torch.zeros_like(shape) for _ in range(self.world_size)]
        dist.all_gather(shapes, shape)
        sizes = [int(s[0]) for s in shapes]
        width = max(int(s[1]) for s in shapes)
        padded = torch.zeros(max(sizes), width, dtype=local.dtype, device=self.device)
        padded[: local.shape[0], : local.shape[1]] = local.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(local.device)

    def gather_equal(self, local: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``local`` (all the same shape), in rank order, on every rank."""
        if not self.enabled:
            return [local]
        sent = local.to(self.device)
        parts = [torch.empty_like(sent) for _ in range(self.world_size)]
        dist.all_gather(parts, sent.contiguous())
        return [p.to(local.device) for p in parts]

    def average_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks, in place (one collective for all of them)."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).to(self.device, torch.float64) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    def mean(self, values: torch.Tensor) -> list[float]:
        """The mean over the ranks of each entry of a 1-D tensor (one collective, one device sync)."""
        if not self.enabled:
            return values.detach().double().tolist()
        t = values.detach().to(self.device, torch.float64)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def max_int(self, value: int) -> int:
        """The largest ``value`` over the ranks (e.g. a signal one of them received)."""
        if not self.enabled:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def run_on_main(self, compute: Callable[[], Any], what: str) -> Any:
        """``compute()`` on rank 0 only, its result on every rank; an error on rank 0 is raised on
        every rank (the others would otherwise wait for it until the timeout)."""
        if not self.enabled:
            return compute()
        if self.is_main:
            try:
                result = compute()
            except BaseException as exc:
                self.broadcast_object(("error", f"{type(exc).__name__}: {exc}"))
                raise
            self.broadcast_object(("ok", result))
            return result
        status, value = self.broadcast_object()
        if status == "error":
            raise RuntimeError(f"rank 0 failed while {what}: {value}")
        return value

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled: for results and labels, not for weights)."""
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.device)
        return box[0]


def init_distributed(device: torch.device, backend: str = "auto", timeout_minutes: float = 60.0) -> Distributed:
    """Join the process group ``torchrun`` set up (NCCL for CUDA devices, gloo otherwise).

    ``timeout_minutes`` bounds how long a rank waits for the others: rank 0 alone computes the
    pseudo labels and the evaluation, which takes minutes on large targets, so the default is long.
    """
    world = launched_ranks()
    if world == 1 or (dist.is_available() and dist.is_initialized()):
        return Distributed.current()
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed: run one process (without torchrun)")
    chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if chosen == "nccl" and device.type != "cuda":
        raise ValueError(f"the nccl backend needs CUDA devices, but the run is on {device}: use --runtime.backend gloo")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {local} has no GPU: this node has {torch.cuda.device_count()}; start at most that many "
                "processes per node (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local)
    dist.init_process_group(chosen, timeout=datetime.timedelta(minutes=timeout_minutes))
    return Distributed.current()


def close_distributed() -> None:
    """Leave the process group (at the end of a run started by ``torchrun``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
