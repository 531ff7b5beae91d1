"""Progress output that suits both a terminal and a log file.

On a terminal, a tqdm bar redrawn in place. When the stream is not a terminal (CI, ``nohup``,
``> log``), redrawing would write a frame per iteration into the file (megabytes of carriage
returns over a run); there a phase writes nothing unless it runs long, then one plain line every
``interval`` seconds with the count, the elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

__all__ = ["Progress", "progress", "stage"]

T = TypeVar("T")

LOG_INTERVAL = 120.0
"""Seconds between two lines of a long phase when the output is a file."""

STAGE_NOTE = 10.0
"""A single step (one library call, no loop to count) that lasts this long gets a line of its own."""


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress(Iterable[T]):
    """An iterable that reports its progress as plain lines, at most one every ``interval`` seconds.

    ``set_postfix(loss=...)`` values are appended to the next line, as tqdm shows them.
    """

    def __init__(
        self,
        iterable: Iterable[T],
        desc: str,
        total: int | None,
        stream: TextIO,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.iterable, self.desc, self.stream = iterable, desc, stream
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.interval, self.clock = interval, clock
        self.postfix = ""

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def __iter__(self) -> Iterator[T]:
        start = last = self.clock()
        for count, item in enumerate(self.iterable, 1):
            yield item
            now = self.clock()
            if now - last >= self.interval:
                last = now
                self.stream.write(self._line(count, now - start) + "\n")
                self.stream.flush()

    def _line(self, count: int, elapsed: float) -> str:
        parts = [f"{self.desc}: {count}"]
        if self.total:
            parts[0] += f"/{self.total} ({100 * count / self.total:.0f}%)"
        parts.append(f"{_duration(elapsed)} elapsed")
        if self.total and count < self.total:
            parts.append(f"about {_duration(elapsed / count * (self.total - count))} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)


def _is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` redraws a line in place (a bar), rather than keeping every write (a log)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class _Silent(Iterable[T]):
    def __init__(self, iterable: Iterable[T]) -> None:
        self.iterable = iterable

    def set_postfix(self, **values: Any) -> None:
        pass

    def __iter__(self) -> Iterator[T]:
        return iter(self.iterable)


def progress(
    iterable: Iterable[T],
    desc: str,
    *,
    total: int | None = None,
    enabled: bool = True,
    stream: TextIO | None = None,
) -> Iterable[T]:
    """``iterable`` with progress shown on ``stream`` (standard error by default).

    A terminal gets a tqdm bar that disappears when done; a file gets a line only every
    ``LOG_INTERVAL`` seconds of a long phase. The result supports ``set_postfix`` in all cases.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return _Silent(iterable)
    if _is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, leave=False, file=stream, dynamic_ncols=True)
    return Progress(iterable, desc, total, stream)


@contextmanager
def stage(
    desc: str,
    *,
    enabled: bool = True,
    stream: TextIO | None = None,
    note: float = STAGE_NOTE,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """A step that cannot count its own progress (one sparse product, one DBSCAN), told as it runs.

    A terminal sees ``desc ...`` while the step runs; a step that takes ``note`` seconds or more
    leaves one line with its duration (in a log file too), so a long run says where its time went
    and a short one writes nothing.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        yield
        return
    terminal = _is_terminal(stream)
    if terminal:
        stream.write(f"{desc} ...\r")
        stream.flush()
    start = clock()
    try:
        yield
    finally:
        elapsed = clock() - start
        if terminal:
            stream.write("\x1b[2K")  # clear the transient line
        if elapsed >= note:
            stream.write(f"{desc}: {_duration(elapsed)}\n")
        stream.flush()
