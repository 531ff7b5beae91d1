"""Run-time helpers every layer may use: devices, explicit seeds, progress output that suits a log file."""

from __future__ import annotations

from spcl.utils.devices import resolve_device
from spcl.utils.progress import progress
from spcl.utils.seeding import RngStream, derive_seed

__all__ = ["RngStream", "derive_seed", "progress", "resolve_device"]
