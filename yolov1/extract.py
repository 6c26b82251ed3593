"""Unpack a verified tarball safely: only plain files and folders, checked whole before anything is written.

Members are unpacked into a staging folder that is then moved (or merged) into place; a marker file, written last,
names the archive's md5, so a finished extraction is skipped and a killed one is redone.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import logging
import lzma
import os
import secrets
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

__all__ = ["ArchiveError", "UnsafeArchiveError", "MAX_MEMBERS", "MAX_BYTES", "safe_extract", "is_extracted", "md5sum"]

log = logging.getLogger(__name__)
MAX_MEMBERS = 250_000  # members per archive; VOC2012 trainval, the largest, has about 40,000
MAX_BYTES = 16 << 30  # bytes of file contents per archive; VOC2012 trainval unpacks to about 2 GB
_CHUNK = 1 << 20  # bytes read at a time when hashing
_FILTER_ERRORS: tuple[type[Exception], ...] = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


class ArchiveError(Exception):
    """An archive problem the user can fix (unreachable mirrors, corrupt or hostile tarball)."""


class UnsafeArchiveError(ArchiveError):
    """An archive refused before anything was written: a member that is not a plain file or folder (names it), a
    path outside the destination, or more members or bytes than the caps allow."""


def md5sum(path: str | Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safe_extract(tar_path: Path, dest_dir: Path, *, md5: str | None = None, max_members: int = MAX_MEMBERS,
                 max_bytes: int = MAX_BYTES) -> list[str]:
    """Extract a tarball (any compression `tarfile` reads) into `dest_dir`; returns its member names in order.

    Only regular files and folders are accepted, which is all the VOC archives hold. Before anything is written,
    every member is checked: a symlink, hard link, device, FIFO, sparse or other special member, an absolute path
    or a ``..`` component raises `UnsafeArchiveError` naming the member, as do more than `max_members` members
    or more than `max_bytes` bytes of contents (a tar bomb); too little free disk space raises `ArchiveError`.
    The archive is then unpacked into a new staging folder beside `dest_dir` (``.<name>.staging-<pid>-<random>``)
    and moved into place: renamed as a whole when `dest_dir` does not exist, else merged in (folders new to
    `dest_dir` renamed in whole, files replacing same-named files), so archives that share a tree (the three VOC
    archives all hold ``VOCdevkit/``) combine as they do when untarred by hand; conflicts (a file where a folder
    is, a symlink in `dest_dir`) are found before anything moves. On any failure or interrupt the staging folder
    is removed; staging folders of dead processes are removed on the next call. The marker
    ``dest_dir/.<tar name>.extracted`` (the archive's md5 and member names) is written last, so a killed
    extraction is redone and a matching marker skips the work. `md5` is the archive's verified md5 (computed
    when None).
    """
    tar_path, dest_dir = Path(tar_path), Path(dest_dir)
    digest = (md5 or md5sum(tar_path)).lower()
    marker = _marker_path(tar_path, dest_dir)
    names = _read_marker(marker, digest)
    if names is not None:
        log.info("%s: already extracted into %s", tar_path.name, dest_dir)
        return names
    marker.unlink(missing_ok=True)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(dest_dir)
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members = _checked_members(tar, tar_path, max_members, max_bytes)
            _check_free_space(tar_path, dest_dir.parent, sum(m.size for m in members))
            staging = dest_dir.with_name(f".{dest_dir.name}.staging-{os.getpid()}-{secrets.token_hex(4)}")
            staging.mkdir()  # mode from the umask, unlike mkdtemp's 0700: it may become dest_dir itself
            try:
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, members=members, **extra)  # only files and folders get this far
                _move_into_place(staging, dest_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except _FILTER_ERRORS as err:
        raise UnsafeArchiveError(f"{tar_path}: refusing member {err.tarinfo.name!r}: {err}") from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as err:
        raise ArchiveError(f"{tar_path}: not a readable tar archive ({err})") from None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ArchiveError(f"no space left on device while extracting {tar_path} beside {dest_dir}") from None
        where = f" ({err.filename})" if err.filename else ""
        raise ArchiveError(f"cannot extract {tar_path} into {dest_dir}: {err.strerror or err}{where}") from None
    names = [m.name for m in members]
    tmp = marker.with_name(f"{marker.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps({"archive": tar_path.name, "md5": digest, "members": names}))
    os.replace(tmp, marker)
    log.info("%s: extracted %d members into %s", tar_path.name, len(names), dest_dir)
    return names


def is_extracted(tar_path: Path, dest_dir: Path, md5: str) -> bool:
    """True when `safe_extract(tar_path, dest_dir)` finished for an archive with this md5 (its marker matches)."""
    return _read_marker(_marker_path(Path(tar_path), Path(dest_dir)), md5.lower()) is not None


def _marker_path(tar_path: Path, dest_dir: Path) -> Path:
    return dest_dir / f".{tar_path.name}.extracted"


def _read_marker(marker: Path, md5: str) -> list[str] | None:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return list(data["members"]) if isinstance(data, dict) and data.get("md5") == md5 else None


def _checked_members(tar: tarfile.TarFile, tar_path: Path, max_members: int,
                     max_bytes: int) -> list[tarfile.TarInfo]:
    """Every member of `tar`, read to the end once; raises `UnsafeArchiveError` at the first one refused, or when
    a path is a file twice or both a file and a folder (extraction would then fail halfway or silently overwrite)."""
    members, total, files, folders = [], 0, set(), set()
    for member in tar:
        if len(members) == max_members:
            raise UnsafeArchiveError(f"{tar_path}: more than {max_members} members (max_members): refusing a "
                                     "possible tar bomb; no VOC archive has that many")
        why = _unsafe_reason(member)
        if why:
            raise UnsafeArchiveError(f"{tar_path}: refusing member {member.name!r}: {why}")
        total += member.size if member.isfile() else 0
        if total > max_bytes:
            raise UnsafeArchiveError(f"{tar_path}: members hold more than {max_bytes} bytes (max_bytes), reached "
                                     f"at {member.name!r}: refusing a possible tar bomb")
        path = PurePosixPath(member.name)
        folders.update(str(parent) for parent in path.parents if str(parent) != ".")
        if member.isfile() and str(path) in files:
            raise UnsafeArchiveError(f"{tar_path}: refusing member {member.name!r}: the archive holds this file twice")
        (files if member.isfile() else folders).add(str(path))
        members.append(member)
    if files & folders:
        raise UnsafeArchiveError(f"{tar_path}: refusing member {min(files & folders)!r}: it is both a file and a "
                                 "folder in the archive")
    return members


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why `member` is refused, else None: only plain files and folders at relative, non-climbing paths pass."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith("\\"):
        return "absolute path"
    if ".." in path.parts or ".." in member.name.split("\\"):
        return "'..' path component"
    if member.issym():
        return f"symlink (to {member.linkname!r}); archives may hold only files and folders"
    if member.islnk():
        return f"hard link (to {member.linkname!r}); archives may hold only files and folders"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device or FIFO file; archives may hold only files and folders"
    if member.issparse():
        return "sparse file; archives may hold only plain files and folders"
    if not (member.isfile() or member.isdir()):
        return f"unsupported member type {member.type!r}; archives may hold only files and folders"
    return None


def _check_free_space(tar_path: Path, where: Path, needed: int) -> None:
    free = shutil.disk_usage(where).free
    if needed > free:
        raise ArchiveError(f"no space left on device: {tar_path} unpacks to {needed} bytes but {where} has "
                           f"{free} bytes free")


def _remove_dead_staging(dest_dir: Path) -> None:
    """Remove staging folders of `dest_dir` left by killed processes (the pid in their name no longer runs)."""
    for stale in dest_dir.parent.glob(f".{dest_dir.name}.staging-*"):
        pid = stale.name.rsplit(".staging-", 1)[1].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            log.info("removing %s, left by a killed extraction", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _move_into_place(staging: Path, dest_dir: Path) -> None:
    """Rename `staging` to `dest_dir`, or merge it into an existing `dest_dir` (all conflicts checked first)."""
    if not dest_dir.exists() and not dest_dir.is_symlink():
        os.rename(staging, dest_dir)
        return
    moves = _merge_plan(staging, dest_dir)
    for source, target in moves:
        os.replace(source, target)


def _merge_plan(source: Path, target: Path) -> list[tuple[Path, Path]]:
    """(from, to) renames that merge folder `source` into folder `target`; raises `ArchiveError` on a conflict."""
    if target.is_symlink() or not target.is_dir():
        raise ArchiveError(f"cannot extract into {target}: it is {'a symlink' if target.is_symlink() else 'a file'}, "
                           "not a folder; move it away and run again")
    moves = []
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        dest = target / entry.name
        if entry.is_dir(follow_symlinks=False):
            if dest.exists() or dest.is_symlink():
                moves += _merge_plan(Path(entry.path), dest)
            else:
                moves.append((Path(entry.path), dest))  # a whole new folder: one rename
        elif dest.is_symlink() or dest.is_dir():
            raise ArchiveError(f"cannot extract {entry.name!r} to {dest}: a {'symlink' if dest.is_symlink() else 'folder'} "
                               "is in the way; move it away and run again")
        else:
            moves.append((Path(entry.path), dest))
    return moves
