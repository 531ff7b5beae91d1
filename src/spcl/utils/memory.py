"""Memory the big stages may have, and errors that say which setting makes them fit.

A stage whose size is known in advance (re-ranking's query x gallery matrix, the features of a
large target) checks it against what the device has left before allocating; any stage that still
runs out turns the allocator's error into one that names the setting to lower.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["OutOfMemory", "available_memory", "check_memory", "memory_advice"]

_GIB = 2**30


class OutOfMemory(MemoryError):
    """A stage needs more memory than the device has; the message names the setting that reduces it."""


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            usage_file = "memory.current" if path.endswith("memory.max") else "memory.usage_in_bytes"
            try:
                usage = int((Path(path).parent / usage_file).read_text().strip())
            except (OSError, ValueError):
                usage = 0
            return max(0, int(text) - usage)
    return None


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes a new allocation can still get on ``device`` (None when it cannot be told)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except OSError:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            available = None
    limit = _cgroup_limit()
    if limit is not None:
        available = limit if available is None else min(available, limit)
    return available


def check_memory(needed: int, device: torch.device | str, what: str, remedy: str) -> None:
    """Raise ``OutOfMemory`` before ``what`` allocates ``needed`` bytes that ``device`` does not have."""
    available = available_memory(device)
    if available is not None and needed > 0.9 * available:
        raise OutOfMemory(
            f"{what} needs about {needed / _GIB:.1f} GiB, but {torch.device(device)} has "
            f"{available / _GIB:.1f} GiB free: {remedy}"
        )


@contextlib.contextmanager
def memory_advice(what: str, remedy: str) -> Iterator[None]:
    """Turn an allocator's out-of-memory error inside the block into one that names ``remedy``."""
    try:
        yield
    except OutOfMemory:
        raise
    except (torch.OutOfMemoryError, MemoryError) as exc:
        detail = str(exc).split("\n")[0].split(". ")[0] or "out of memory"
        raise OutOfMemory(f"{what} ran out of memory ({detail}): {remedy}") from exc
