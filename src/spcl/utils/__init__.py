"""Run-time helpers every layer may use: devices, the processes of a run, precision, explicit seeds, progress output that suits a log
file, memory checks with errors that name the setting to lower, and the named fault points of
the resume tests."""

from __future__ import annotations

from spcl.utils.devices import resolve_device, resolve_workers
from spcl.utils.distributed import Distributed, close_distributed, init_distributed, launched_ranks
from spcl.utils.faults import fault_point
from spcl.utils.files import write_csv
from spcl.utils.memory import OutOfMemory, available_memory, check_memory, memory_advice
from spcl.utils.precision import resolve_amp, resolve_channels_last, set_deterministic
from spcl.utils.progress import progress
from spcl.utils.seeding import RngStream, derive_seed

__all__ = [
    "Distributed",
    "OutOfMemory",
    "RngStream",
    "available_memory",
    "check_memory",
    "close_distributed",
    "derive_seed",
    "fault_point",
    "init_distributed",
    "launched_ranks",
    "memory_advice",
    "progress",
    "resolve_amp",
    "resolve_channels_last",
    "resolve_device",
    "resolve_workers",
    "set_deterministic",
    "write_csv",
]
