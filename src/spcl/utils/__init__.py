"""Run-time helpers every layer may use: devices, explicit seeds, progress output that suits a log
file, and the named fault points of the resume tests."""

from __future__ import annotations

from spcl.utils.devices import resolve_device
from spcl.utils.faults import fault_point
from spcl.utils.progress import progress
from spcl.utils.seeding import RngStream, derive_seed

__all__ = ["RngStream", "derive_seed", "fault_point", "progress", "resolve_device"]
