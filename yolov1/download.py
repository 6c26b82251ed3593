"""Fetch the PASCAL VOC archives: mirrors tried in order, resumable downloads, md5 checks, Basic auth from URLs.

A file appears under its final name only once its size and md5 verified (it grows as ``<name>.part`` and is
``os.replace``d into place). Mirror URLs are redacted (`yolov1.redact`) wherever shown. Unpacking lives in
`yolov1.extract`; its public names are re-exported here.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from yolov1.config import ArchiveConfig
from yolov1.extract import (
    MAX_BYTES,
    MAX_MEMBERS,
    ArchiveError,
    UnsafeArchiveError,
    is_extracted,
    md5sum,
    safe_extract,
)
from yolov1.redact import redact, redact_url

__all__ = [
    "ArchiveError", "DownloadError", "UnsafeArchiveError", "FetchResult", "MAX_MEMBERS", "MAX_BYTES",
    "fetch_archive", "fetch_archive_result", "safe_extract", "is_extracted", "md5sum", "probe_source",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]  # (bytes on disk, total bytes or None when unknown)
_CHUNK = 1 << 20  # bytes read at a time from a source or the .part file


class DownloadError(ArchiveError):
    """Every source of an archive failed; the message lists each source tried, why, and how to supply a copy.

    `transient` is True when every mirror failed for a network reason (refused, timeout, dropped, HTTP 5xx/408/429):
    a later try may succeed. A 404, md5 mismatch or missing file will not fix itself, so it is False.
    """

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class FetchResult:
    path: Path  # the verified archive
    md5: str
    bytes: int
    source: str  # the `local` path, the file already in raw_dir, or the mirror URL it was downloaded from
    action: str  # "local", "present" (already in raw_dir) or "downloaded"


def fetch_archive(archive: ArchiveConfig, raw_dir: Path, *, progress: Progress | None = None,
                  timeout: float = 30.0, retries_per_mirror: int = 5) -> Path:
    """Path of a verified copy of `archive`; see `fetch_archive_result`."""
    return fetch_archive_result(archive, raw_dir, progress=progress, timeout=timeout,
                                retries_per_mirror=retries_per_mirror).path


def fetch_archive_result(archive: ArchiveConfig, raw_dir: Path, *, progress: Progress | None = None,
                         timeout: float = 30.0, retries_per_mirror: int = 5) -> FetchResult:
    """Find or download `archive` and verify its size (when known) and md5.

    `raw_dir` is created in every case (it is the download stage's declared output). Order: ``archive.local``
    (used in place, never copied or modified; a relative path is relative to the working directory), then ``raw_dir/filename`` (skipped when it verifies), then each mirror in turn. A mirror is an
    http(s):// or file:// URL or a plain path. Downloads grow ``raw_dir/filename.part``, resume with HTTP Range
    requests, and retry the same mirror up to `retries_per_mirror` times while a dropped connection still made
    progress. `progress(bytes_on_disk, total_or_None)` is called as bytes arrive; `timeout` (seconds) applies
    to connecting and to each read. A file already at the final name that fails verification was not put
    there by this function: it is renamed to ``<filename>.invalid``, never deleted.
    Raises `DownloadError` listing every source tried and why.
    """
    raw_dir = Path(raw_dir)
    expected = archive.md5.lower()
    failures: list[str] = []
    raw_dir.mkdir(parents=True, exist_ok=True)  # even when `local` is used: raw_dir is the stage's declared output
    found = _find_existing(archive, raw_dir, failures)
    if found is not None:
        return found
    final = raw_dir / archive.filename
    part = _Part(final.with_name(final.name + ".part"))
    if archive.size is not None and part.size >= archive.size:  # left complete (or overlong) by an earlier run
        if part.size == archive.size and part.hexdigest() == expected:
            os.replace(part.path, final)
            return FetchResult(final, expected, archive.size, str(part.path), "downloaded")
        part.delete()
    transient = bool(archive.mirrors) and not failures  # a bad `local` file is not a network failure
    for url in archive.mirrors:
        log.info("%s: trying %s", archive.name, _shown(url))
        try:
            _fetch_from(url, part, archive, progress, timeout, retries_per_mirror)
        except _SourceFailed as err:
            transient = transient and err.transient
            failures.append(redact(f"{_shown(url)}: {err}"))  # a reason may quote a URL (a redirect's)
            log.warning("%s: %s", archive.name, failures[-1])
            continue
        os.replace(part.path, final)  # only now does the file look complete
        return FetchResult(final, expected, final.stat().st_size, _shown(url), "downloaded")
    raise DownloadError(_failure_message(archive, raw_dir, failures, part), transient=transient)


def probe_source(url: str, *, timeout: float = 10.0) -> str | None:
    """None when mirror `url` (any form `fetch_archive` takes) looks able to serve a file, else the reason, with
    the URL as it may be shown (credentials masked). http(s): a HEAD request (a GET of byte 0 when the server
    refuses HEAD), with credentials in the URL sent as Basic auth; file:// or a path: the file exists. Reads no
    body; it cannot tell whether the bytes will verify."""
    try:
        scheme = urlparse(url).scheme.lower()
    except ValueError:
        return f"{_shown(url)}: malformed URL"
    if scheme not in ("http", "https"):
        try:
            stream, _, _ = _open_source(url, 0, timeout)
        except _SourceFailed as err:
            return redact(f"{_shown(url)}: {err}")
        stream.close()
        return None
    for method, extra in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        try:
            request = _request_with_auth(url, {"User-Agent": "yolov1-download/1", **extra}, method=method)
            with urllib.request.urlopen(request, timeout=timeout):
                return None
        except urllib.error.HTTPError as err:
            err.close()
            if err.code in (405, 501) and method == "HEAD":
                continue
            return f"{_shown(url)}: HTTP {err.code} {err.reason}"
        except ValueError as err:
            return redact(f"{_shown(url)}: not a usable URL ({err})")
        except (urllib.error.URLError, OSError) as err:
            return redact(f"{_shown(url)}: {_describe(err, timeout)}")
    return f"{_shown(url)}: refuses HEAD and GET"


class _SourceFailed(Exception):
    """This source cannot provide the archive; the message is the reason shown to the user."""

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.transient = transient  # a network failure that a later try may not meet


class _Dropped(Exception):
    """The stream ended before all bytes arrived; `progressed` says whether this attempt added any."""

    def __init__(self, reason: str, progressed: bool):
        super().__init__(reason)
        self.progressed = progressed


class _RangeNotSatisfiable(Exception):
    """HTTP 416: the server has no bytes after the ones already in the .part file."""


class _Part:
    """The .part file and a running md5 of its bytes, so resuming never re-reads what was already hashed."""

    def __init__(self, path: Path):
        self.path, self.size = path, -1  # -1: nothing hashed yet, so sync() reads whatever is on disk
        self.sync()

    def sync(self) -> None:
        """Re-hash from disk unless the hash already covers exactly the bytes there."""
        on_disk = self.path.stat().st_size if self.path.exists() else 0
        if self.size == on_disk:
            return
        self._md5, self.size = hashlib.md5(), 0
        if on_disk:
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    self._md5.update(chunk)
                    self.size += len(chunk)

    def truncate(self) -> None:
        self.path.write_bytes(b"")
        self._md5, self.size = hashlib.md5(), 0

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
        self._md5, self.size = hashlib.md5(), 0

    def append(self, chunks: Iterator[bytes], progress: Progress | None, total: int | None) -> None:
        with open(self.path, "ab") as f:
            for chunk in chunks:
                f.write(chunk)
                self._md5.update(chunk)
                self.size += len(chunk)
                if progress is not None:
                    progress(self.size, total)

    def hexdigest(self) -> str:
        return self._md5.hexdigest()


def _find_existing(archive: ArchiveConfig, raw_dir: Path, failures: list[str]) -> FetchResult | None:
    """The verified `local` copy or raw_dir/filename, else None; appends why each candidate was rejected."""
    candidates = []
    if archive.local:
        candidates.append(("local", Path(archive.local).expanduser()))
    candidates.append(("present", raw_dir / archive.filename))
    for action, path in candidates:
        if not path.is_file() and action == "present":
            continue
        why = _verify(path, archive) if path.is_file() else "file not found"
        if why is None:
            log.info("%s: using %s (%s, verified)", archive.name, path, action)
            return FetchResult(path, archive.md5.lower(), path.stat().st_size, str(path), action)
        if action == "local":
            failures.append(f"local {path}: {why}")  # never touch the user's own copy
        else:  # not put there by us (we only rename verified files into place): keep it, but out of the way
            invalid = path.with_name(path.name + ".invalid")
            os.replace(path, invalid)
            failures.append(f"{path}: {why} (moved to {invalid.name})")
        log.warning("%s: %s", archive.name, failures[-1])
    return None


def _verify(path: Path, archive: ArchiveConfig) -> str | None:
    """None when `path` has the archive's size (checked first: cheap) and md5, else the reason it does not."""
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        return f"size is {size} bytes, expected {archive.size}"
    got = md5sum(path)
    return None if got == archive.md5.lower() else f"md5 mismatch: expected {archive.md5.lower()} got {got}"


def _fetch_from(url: str, part: _Part, archive: ArchiveConfig, progress: Progress | None,
                timeout: float, retries: int) -> None:
    """Grow `part` from `url` until it is complete and its md5 verifies; raises `_SourceFailed` otherwise."""
    expected, attempt = archive.md5.lower(), 0
    while True:
        attempt += 1
        part.sync()
        try:
            _transfer(url, part, archive.size, progress, timeout)
        except _Dropped as err:
            if err.progressed and attempt <= retries:
                log.info("%s: %s; resuming from byte %d", _shown(url), err, part.size)
                continue
            raise _SourceFailed(f"{err} (attempt {attempt}, giving up on this mirror)", transient=True) from None
        except _RangeNotSatisfiable:
            if part.hexdigest() != expected:  # the .part is bogus: start this mirror again from byte 0
                part.delete()
                if attempt <= retries:
                    continue
                raise _SourceFailed("HTTP 416 Range Not Satisfiable, even from byte 0") from None
        got = part.hexdigest()
        if got != expected:
            part.delete()  # these bytes can never verify
            raise _SourceFailed(f"md5 mismatch: expected {expected} got {got}")
        return


def _transfer(url: str, part: _Part, size: int | None, progress: Progress | None, timeout: float) -> None:
    """Append the bytes of `url` after the ones in `part` (restarting at 0 if the source cannot seek)."""
    offset = part.size
    stream, start, total = _open_source(url, offset, timeout)
    with stream:
        if total is not None and size is not None and total != size:  # before discarding anything
            raise _SourceFailed(f"source has {total} bytes, expected {size}")
        if start != offset:
            log.info("%s: source restarts at byte %d, discarding %d resumed bytes", _shown(url), start, offset)
            part.truncate()
        end = total if total is not None else size
        before = part.size

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    chunk = stream.read(_CHUNK)
                except (OSError, http.client.HTTPException) as err:  # reset, timeout or short chunk mid-body
                    raise _Dropped(f"connection lost after {part.size} of {end or '?'} bytes "
                                   f"({_describe(err, timeout)})", part.size > before) from None
                if not chunk:
                    return
                if end is not None and part.size + len(chunk) > end:
                    raise _SourceFailed(f"source sent more than the expected {end} bytes")
                yield chunk

        if progress is not None:
            progress(part.size, end)
        try:
            part.append(chunks(), progress, end)
        except _SourceFailed:
            part.delete()  # an overlong body can never verify
            raise
    if end is not None and part.size < end:  # http.client returns b"" on a short body instead of raising
        raise _Dropped(f"connection closed after {part.size} of {end} bytes", part.size > before)


def _open_source(url: str, offset: int, timeout: float) -> tuple[BinaryIO, int, int | None]:
    """Open `url` at byte `offset`: (stream, byte the stream starts at (offset or 0), total size or None)."""
    try:
        scheme = urlparse(url).scheme.lower()
    except ValueError as err:  # e.g. an unclosed IPv6 bracket
        raise _SourceFailed(f"malformed URL ({err})") from None
    if scheme in ("http", "https"):
        return _open_http(url, offset, timeout)
    if scheme == "file" or len(scheme) <= 1:  # "" for a plain path, "c" for a Windows drive letter
        path = Path(urllib.request.url2pathname(urlparse(url).path)) if scheme == "file" else Path(url)
        if not path.is_file():
            raise _SourceFailed("file not found")
        total = path.stat().st_size
        start = offset if offset <= total else 0
        try:
            f = open(path, "rb")  # closed by the caller's `with`
        except OSError as err:
            raise _SourceFailed(f"cannot read: {err.strerror}") from None
        f.seek(start)
        return f, start, total
    raise _SourceFailed(f"unsupported URL scheme {scheme!r} (use http, https, file or a path)")


def _open_http(url: str, offset: int, timeout: float) -> tuple[BinaryIO, int, int | None]:
    headers = {"User-Agent": "yolov1-download/1"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = _request_with_auth(url, headers)
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            raise _RangeNotSatisfiable() from None
        transient = err.code >= 500 or err.code in (408, 429)  # the server may recover; a 404 will not
        raise _SourceFailed(f"HTTP {err.code} {err.reason}", transient=transient) from None
    except ValueError as err:  # urllib's "unknown url type", a bad port or IPv6 literal: may quote the URL
        raise _SourceFailed(f"not a usable URL ({redact(err)})") from None
    except (urllib.error.URLError, OSError) as err:
        raise _SourceFailed(_describe(err, timeout), transient=True) from None
    length = resp.headers.get("Content-Length")
    if resp.status == 206:
        unit_range, _, total_text = resp.headers.get("Content-Range", "").partition("/")
        first = unit_range.removeprefix("bytes ").partition("-")[0]
        if first.strip() != str(offset):
            resp.close()
            raise _SourceFailed(f"asked for bytes {offset}- but got Content-Range {unit_range!r}")
        return resp, offset, int(total_text) if total_text.strip().isdigit() else None
    return resp, 0, int(length) if length and length.isdigit() else None  # 200: the whole file


def _shown(url: str) -> str:
    """`url` as it may be logged or stored: credentials masked; a URL too malformed to parse is not shown at all."""
    try:
        urlsplit(url)
    except ValueError:
        return f"<malformed URL, not shown ({len(url)} characters)>"
    return redact_url(url)


def _request_with_auth(url: str, headers: dict[str, str], method: str | None = None) -> urllib.request.Request:
    """A request for `url`; credentials in it (``https://user:password@host/...``) become HTTP Basic auth.

    urllib would otherwise take ``user:password@host`` for the host name. The header is "unredirected", so a
    redirect to another host never receives it.
    """
    parts = urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url, headers=headers, method=method)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=netloc)), headers=headers, method=method)
    userpass = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(userpass).decode("ascii"))
    return request


def _describe(err: BaseException, timeout: float) -> str:
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return f"host not found ({reason.strerror})"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error ({reason})"
    return str(reason) or type(reason).__name__


def _failure_message(archive: ArchiveConfig, raw_dir: Path, failures: list[str], part: _Part) -> str:
    lines = [f"could not fetch {archive.filename} (data.archives entry {archive.name!r}); tried:"]
    lines += [f"  - {f}" for f in failures] or ["  - nothing: the entry lists no local file and no mirrors"]
    if part.path.exists() and part.path.stat().st_size:
        lines.append(f"The partial download {part.path} ({part.path.stat().st_size} bytes) is kept; "
                     "the next run resumes it.")
    lines.append(f"To use a copy you already have, set `local: /path/to/{archive.filename}` on the "
                 f"data.archives entry {archive.name!r} in params.yaml, or put the file at {raw_dir / archive.filename}.")
    return "\n".join(lines)
