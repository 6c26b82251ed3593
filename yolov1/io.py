"""Outputs that appear all at once and read like any other file: atomic writes and staging folders that respect
the umask (``tempfile.mkstemp``/``mkdtemp`` create 0600/0700, which other users and services cannot read).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "current_umask", "make_staging_dir", "remove_leftovers"]


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once (not atomic with respect to other threads)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a uniquely named temp file beside it and ``os.replace``.

    Readers see the old file or the new one, never a torn one; concurrent writers never share a temp file. The
    file is created with mode 0o666 less the umask, like ``open(path, "w")``. A failed write removes the temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # 48 random bits: practically never, but never touch another writer's file
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


def make_staging_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new, uniquely named folder ``parent/<prefix><pid>-<random>`` with mode 0o777 less the umask.

    Meant to be filled and then renamed into place; the pid in the name lets `remove_leftovers` tell a folder of
    a killed run from one that a live process is still filling.
    """
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    os.chmod(path, 0o777 & ~current_umask())
    return path


def remove_leftovers(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Delete ``parent/<prefix>*`` entries left by killed runs; returns what was removed.

    An entry whose name carries the pid of a live process (`make_staging_dir`'s names) is left alone; names
    without a pid (older runs) are removed.
    """
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.glob(f"{prefix}*")):
        pid_text = entry.name[len(prefix):].partition("-")[0]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except PermissionError:  # it exists, as another user's process
        return True
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or not a pid at all
        return False
    return True
