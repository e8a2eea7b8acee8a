"""Crash-safe small files: write to a temp file, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (it may write less at once)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(
    path: Path, data: bytes, *, mode: int = 0o600, keep_previous: bool = False
) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content.

    With ``keep_previous`` the content being replaced stays readable as
    ``<path>.bak`` (a hard link, so no copy is made and no window exists in
    which neither file is complete).
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a full disk must not also keep the partial copy
        raise
    os.close(fd)
    try:
        if keep_previous and path.exists():
            backup = path.with_name(path.name + ".bak")
            backup_tmp = directory / f".{backup.name}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                backup_tmp.unlink()
            os.link(path, backup_tmp)
            os.replace(backup_tmp, backup)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(directory)


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Exclusive advisory lock between processes sharing a state directory."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
