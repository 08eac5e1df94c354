"""Writing run files so that a crash, a full disk or a planted link never leaves a half file or touches
another file, and reading them back without ever unpickling.

:func:`atomic_write` writes to a fresh temporary file in the same folder (a random
name created with ``O_EXCL``, so a symlink or file planted at a predictable name is
never followed or overwritten, mode 0600), flushes and fsyncs it, renames it over
the target (atomic on POSIX) and fsyncs the folder so the rename survives a power
cut. A failed write removes its temporary file and leaves the old target as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes | str) -> int:
    """Replace ``path`` with ``data`` atomically and durably; returns the bytes written."""
    payload = data.encode() if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)
    return len(payload)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
