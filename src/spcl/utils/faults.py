"""Named fault points, so tests can stop a run at an exact place and check that nothing is lost.

``SPCL_FAULT=<point>`` in the environment makes the process kill itself with SIGKILL when it
reaches that point; ``TERM@<point>`` (or ``INT@``) sends it SIGTERM (SIGINT) instead, as a
scheduler pre-empting the job or a user pressing Ctrl-C would; ``<point>#<n>`` fires at the n-th
time the point is reached; several faults are separated by commas. Points are named by the code
that reaches them: ``init_memory``, ``labels:<epoch>``, ``step:<epoch>:<iteration>``,
``eval:<epoch>``, ``checkpoint:<file name>`` (the file written, before it replaces the old one).
Unset, a point costs one dictionary look-up.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["fault_point"]

_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}
_reached: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """Deliver the signal ``SPCL_FAULT`` asks for when it names this point (nothing otherwise)."""
    wanted = os.environ.get("SPCL_FAULT")
    if not wanted:
        return
    _reached[name] += 1
    for fault in wanted.split(","):
        kind, _, point = fault.strip().rpartition("@")
        point, _, count = point.partition("#")
        if point == name and _reached[name] == int(count or 1):
            os.kill(os.getpid(), _SIGNALS[kind or "KILL"])
