"""Output files of every command: checked before any work starts, written so that a failure never
leaves half a file under its name, nor a temporary file behind.

- :func:`check_output` / :func:`check_output_folder`: the one guard of an output path, run when a
  command starts (an extraction or an export may take hours; a bad ``--out`` must not be found at
  its end): not one of the command's inputs, not a directory (or not a file, for a folder), its
  folder creatable and writable, and the free space enough where the size is known.
- :func:`atomic_output`: the one way to write a file: into a temporary file in the same folder,
  renamed over the target when complete, removed on any failure; a failed write raises an
  ``OutputError`` naming the file (and, for a full disk, saying so).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["OutputError", "atomic_output", "check_output", "check_output_folder", "write_csv", "write_text"]

# Room left on a disk beyond a file's known size (file-system metadata, logs written meanwhile).
_SPARE_BYTES = 64 * 2**20


class OutputError(OSError):
    """An output that cannot be written where asked; the message names the file and why."""

    def __str__(self) -> str:
        return self.strerror or (str(self.args[0]) if self.args else "")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _existing_parent(path: Path) -> Path:
    """The nearest folder above ``path`` that exists (where its missing folders would be created)."""
    folder = path.resolve().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_writable_folder(folder: Path, what: str, target: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {target}: {folder} is a file, not a folder")
    existing = folder if folder.exists() else _existing_parent(folder / "x")
    if not existing.is_dir():
        raise OutputError(f"{what} {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {target}: the folder {existing} is not writable")


def check_output(
    path: str | Path,
    *,
    inputs: Iterable[str | Path | None] = (),
    size: int | None = None,
    what: str = "output",
) -> Path:
    """Check an output file before the work that produces it starts (see the module docstring).

    ``inputs``: the files the same command reads (an output equal to one would replace it);
    ``size``: the bytes it will take, when known (checked against the free space, with some room).
    Returns the path; raises ``OutputError`` saying what is wrong.
    """
    raw = os.fspath(path)
    path = Path(path)
    if not path.name or path.is_dir() or raw.endswith(("/", os.sep)):
        raise OutputError(f"{what} {path} is a folder: give the file to write, e.g. {path / '<name>'}")
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise OutputError(
                f"{what} {path} is also an input of this command ({source}): writing it would replace the input; "
                "choose another file"
            )
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} exists and is not writable")
    _check_writable_folder(path.parent if str(path.parent) else Path("."), what, path)
    if size is not None:
        check_space(path, size, what)
    return path


def check_output_folder(path: str | Path, *, what: str = "output folder") -> Path:
    """Check a folder a command writes into: not a file, creatable and writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file: give a folder")
    _check_writable_folder(path, what, path)
    return path


def check_space(path: str | Path, size: int, what: str = "output") -> None:
    """Refuse an output of ``size`` bytes where the disk holding ``path`` has less free space."""
    path = Path(path)
    folder = _existing_parent(path)
    free = shutil.disk_usage(folder).free  # an earlier file of that name stays until the new one is complete
    if size + _SPARE_BYTES > free:
        raise OutputError(
            errno.ENOSPC,
            f"no space left on device for {what} {path}: it needs about {_size(size)}, the disk of {folder} has "
            f"{_size(free)} free",
            str(path),
        )


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _reason(exc: OSError) -> str:
    return "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


@contextlib.contextmanager
def atomic_output(path: str | Path, *, what: str = "output") -> Iterator[Path]:
    """``with atomic_output(out) as tmp: write(tmp)``: the content appears under ``out`` only when
    complete (an earlier file stays as it was until then); on any failure the temporary file is
    removed, and an OSError becomes an ``OutputError`` that names ``out``."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: an output is as readable as any file
        yield tmp
        os.replace(tmp, path)
        tmp = None
    except OutputError:
        raise
    except OSError as exc:
        kept = f"; the earlier {path.name} is left as it was" if path.exists() else ""
        raise OutputError(exc.errno, f"cannot write {what} {path}: {_reason(exc)}{kept}", str(path)) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str, *, what: str = "output") -> Path:
    """A text file written atomically (see :func:`atomic_output`)."""
    with atomic_output(path, what=what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV file written atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)
