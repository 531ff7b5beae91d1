"""Run-time helpers every layer may use: devices, explicit seeds, progress output that suits a log
file, memory checks with errors that name the setting to lower, and the named fault points of
the resume tests."""

from __future__ import annotations

from spcl.utils.devices import resolve_device
from spcl.utils.faults import fault_point
from spcl.utils.files import write_csv
from spcl.utils.memory import OutOfMemory, available_memory, check_memory, memory_advice
from spcl.utils.progress import progress
from spcl.utils.seeding import RngStream, derive_seed

__all__ = [
    "OutOfMemory",
    "RngStream",
    "available_memory",
    "check_memory",
    "derive_seed",
    "fault_point",
    "memory_advice",
    "progress",
    "resolve_device",
    "write_csv",
]
