"""The output folder of a run: held by one process at a time, never mixed with another run.

A lock file (``.lock``, created exclusively, holding the holder's PID, host and start time) keeps a
second training out of a folder in use; a lock left by a process that no longer exists on this
host is stale and taken over. Starting over in a folder that holds a run (``--no-resume``) moves
that run aside to a sibling folder instead of mixing its files with the new run's.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["RunFolder", "RunFolderError"]

LOCK_NAME = ".lock"
_STALE_EMPTY_LOCK_SECONDS = 30.0
_RUN_FILES = ("last.pth", "last.previous.pth", "best.pth", "metrics.csv", "config.yaml", "tensorboard")


class RunFolderError(RuntimeError):
    """The run folder is in use by another process, or cannot be prepared; the message says which."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunFolder:
    """``acquire()`` before writing anything into ``path``, ``release()`` when done."""

    def __init__(self, path: str | Path, log: Callable[[str], None] = print) -> None:
        self.path = Path(path)
        self.lock = self.path / LOCK_NAME
        self.log = log
        self.held = False

    def acquire(self) -> None:
        """Take the folder for this process, or raise ``RunFolderError`` naming its holder."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"cannot create the run folder {self.path}: {exc.strerror or exc}") from exc
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale_lock()
                continue
            except OSError as exc:
                raise RunFolderError(f"cannot write into the run folder {self.path}: {exc.strerror or exc}") from exc
            with os.fdopen(fd, "w") as fh:
                json.dump(holder, fh)
            self.held = True
            return
        raise RunFolderError(f"could not take the lock {self.lock}")

    def _clear_stale_lock(self) -> None:
        try:
            text = self.lock.read_text()
            holder = json.loads(text)
            pid, host, started = int(holder["pid"]), str(holder["host"]), holder.get("started", "?")
        except FileNotFoundError:
            return  # released in the meantime
        except (OSError, ValueError, KeyError, TypeError):
            age = time.time() - self.lock.stat().st_mtime
            if age < _STALE_EMPTY_LOCK_SECONDS:  # its holder may be writing it right now
                raise RunFolderError(f"{self.path} is being taken by another process (lock {self.lock})") from None
            self.log(f"removing an unreadable lock file {self.lock} left by an interrupted start")
            self.lock.unlink(missing_ok=True)
            return
        if host == socket.gethostname() and not _alive(pid):
            self.log(f"removing the stale lock of process {pid} (started {started}), which no longer runs")
            self.lock.unlink(missing_ok=True)
            return
        where = "this machine" if host == socket.gethostname() else f"host {host}"
        raise RunFolderError(
            f"{self.path} is in use by process {pid} on {where} (started {started}): two runs must not "
            f"write into one folder. Use another --output, or, if that process is gone, delete {self.lock}."
        )

    def release(self) -> None:
        if self.held:
            self.lock.unlink(missing_ok=True)
            self.held = False

    def has_run(self) -> bool:
        """Whether the folder holds files of an earlier run."""
        return any((self.path / name).exists() for name in _RUN_FILES)

    def move_aside(self) -> Path | None:
        """Move an earlier run's files into a sibling ``<name>.replaced-<time>`` folder (the lock
        stays); returns that folder, or None when there was nothing to move."""
        if not self.has_run():
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.replaced-{stamp}")
        suffix = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.replaced-{stamp}-{suffix}")
            suffix += 1
        target.mkdir()
        for entry in self.path.iterdir():
            if entry.name != LOCK_NAME:
                entry.rename(target / entry.name)
        return target
