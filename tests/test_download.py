"""Download and extraction against a real HTTP server on 127.0.0.1 serving a tiny generated VOC-layout tarball."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipelines import download as stage
from yolov1.config import ArchiveConfig, params_from_dict
from yolov1.download import (
    ArchiveError,
    DownloadError,
    UnsafeArchiveError,
    fetch_archive,
    fetch_archive_result,
    is_extracted,
    md5sum,
    safe_extract,
)

FILENAME = "VOCdemo_2007.tar"

# ---------------------------------------------------------------------------------------------------- fixtures


def _tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


@pytest.fixture(scope="module")
def voc_tar() -> bytes:
    """A VOC-layout tarball: VOCdevkit/VOC2007/{Annotations,JPEGImages,ImageSets/Main} with one image."""
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(jpeg, "JPEG")
    xml = (b"<annotation><filename>000001.jpg</filename><size><width>16</width><height>12</height>"
           b"<depth>3</depth></size><object><name>dog</name><difficult>0</difficult><bndbox><xmin>2</xmin>"
           b"<ymin>2</ymin><xmax>10</xmax><ymax>9</ymax></bndbox></object></annotation>")
    data = _tar_bytes([
        _file("VOCdevkit/VOC2007/Annotations/000001.xml", xml),
        _file("VOCdevkit/VOC2007/JPEGImages/000001.jpg", jpeg.getvalue()),
        _file("VOCdevkit/VOC2007/ImageSets/Main/trainval.txt", b"000001\n"),
    ])
    assert len(data) > 8192  # the drop tests cut it at 3000 bytes
    return data


@dataclasses.dataclass
class Route:
    data: bytes
    status: int = 200  # 404 to refuse
    drop_after: int | None = None  # send only this many body bytes, then close the connection
    drop_always: bool = False  # drop on every request, not only the first
    honour_range: bool = True
    auth: str | None = None  # the Authorization header required (401 otherwise)
    requests: int = 0


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server = self.server
        server.log.append((self.path, self.headers.get("Range")))
        route = server.routes.get(self.path)
        if route is None or route.status != 200:
            self.send_error(404 if route is None else route.status)
            return
        if route.auth is not None and self.headers.get("Authorization") != route.auth:
            self.send_error(401)
            return
        route.requests += 1
        data, start = route.data, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and route.honour_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if route.drop_after is not None and (route.drop_always or route.requests == 1):
            self.wfile.write(body[: route.drop_after])
            self.wfile.flush()
            self.close_connection = True  # the client sees EOF before Content-Length bytes
            return
        self.wfile.write(body)


class Server:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes, self.httpd.log = {}, []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def route(self, path: str, route: Route) -> str:
        self.httpd.routes[path] = route
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    @property
    def log(self) -> list[tuple[str, str | None]]:
        return self.httpd.log


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join()


@pytest.fixture
def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connecting is refused
    return f"http://127.0.0.1:{port}/{FILENAME}"


def _archive(data: bytes, *mirrors: str, local: str | None = None, size: int | None | bool = True) -> ArchiveConfig:
    return ArchiveConfig(name="voc2007-demo", filename=FILENAME, md5=hashlib.md5(data).hexdigest(),
                         size=len(data) if size is True else size, local=local, mirrors=tuple(mirrors))


# ---------------------------------------------------------------------------------------------------- fetching


def test_md5sum_known_values(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "abc").write_bytes(b"abc")
    assert md5sum(tmp_path / "empty") == "d41d8cd98f00b204e9800998ecf8427e"  # RFC 1321 test suite
    assert md5sum(tmp_path / "abc") == "900150983cd24fb0d6963f7d28e17f72"


def test_dead_mirrors_fall_through_to_a_good_one(tmp_path, server, voc_tar, closed_port_url):
    missing = server.route("/gone.tar", Route(b"", status=404))
    good = server.route("/good.tar", Route(voc_tar))
    result = fetch_archive_result(_archive(voc_tar, missing, closed_port_url, good), tmp_path / "raw")
    assert (result.source, result.action, result.bytes) == (good, "downloaded", len(voc_tar))
    assert result.path == tmp_path / "raw" / FILENAME
    assert result.path.read_bytes() == voc_tar
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [FILENAME]  # no .part left behind
    assert server.log == [("/gone.tar", None), ("/good.tar", None)]


def test_dropped_connection_resumes_with_range(tmp_path, server, voc_tar):
    url = server.route("/voc.tar", Route(voc_tar, drop_after=3000))
    seen = []
    path = fetch_archive(_archive(voc_tar, url), tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == voc_tar
    # First request: 3000 bytes then EOF; second asks for the rest.
    assert server.log == [("/voc.tar", None), ("/voc.tar", "bytes=3000-")]
    assert seen[-1] == (len(voc_tar), len(voc_tar))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # bytes on disk never go backwards here
    assert (3000, len(voc_tar)) in seen  # the resumed attempt starts from the bytes already on disk


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, voc_tar):
    url = server.route("/voc.tar", Route(voc_tar, drop_after=3000, honour_range=False))
    path = fetch_archive(_archive(voc_tar, url), tmp_path)
    assert path.read_bytes() == voc_tar  # a 200 to a Range request was written from byte 0, not appended
    assert server.log[1] == ("/voc.tar", "bytes=3000-")


def test_flaky_mirror_is_retried_a_bounded_number_of_times_then_the_next_resumes(tmp_path, server, voc_tar):
    flaky = server.route("/flaky.tar", Route(voc_tar, drop_after=1000, drop_always=True))
    good = server.route("/good.tar", Route(voc_tar))
    result = fetch_archive_result(_archive(voc_tar, flaky, good), tmp_path, retries_per_mirror=2)
    assert result.path.read_bytes() == voc_tar and result.source == good
    # 1 attempt + 2 retries on the flaky mirror, 1000 bytes each; the next mirror resumes at 3 x 1000.
    assert server.log == [("/flaky.tar", None), ("/flaky.tar", "bytes=1000-"), ("/flaky.tar", "bytes=2000-"),
                          ("/good.tar", "bytes=3000-")]


def test_wrong_bytes_fail_md5_and_leave_nothing(tmp_path, server, voc_tar):
    wrong = bytes(b ^ 0xFF for b in voc_tar)  # same length, so only the md5 can tell
    url = server.route("/voc.tar", Route(wrong))
    with pytest.raises(DownloadError) as err:
        fetch_archive(_archive(voc_tar, url), tmp_path)
    expected, got = hashlib.md5(voc_tar).hexdigest(), hashlib.md5(wrong).hexdigest()
    assert f"{url}: md5 mismatch: expected {expected} got {got}" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a .part that can never verify


def test_all_sources_failing_is_one_error_listing_each(tmp_path, server, voc_tar, closed_port_url):
    missing = server.route("/gone.tar", Route(b"", status=404))
    short = server.route("/short.tar", Route(voc_tar[:-512]))
    wrong = server.route("/wrong.tar", Route(voc_tar[::-1]))
    archive = _archive(voc_tar, missing, closed_port_url, short, wrong, local=str(tmp_path / "nowhere.tar"))
    with pytest.raises(DownloadError) as err:
        fetch_archive(archive, tmp_path / "raw")
    msg = str(err.value)
    assert f"local {tmp_path / 'nowhere.tar'}: file not found" in msg
    assert f"{missing}: HTTP 404" in msg
    assert f"{closed_port_url}: connection refused" in msg
    assert f"{short}: source has {len(voc_tar) - 512} bytes, expected {len(voc_tar)}" in msg
    assert f"{wrong}: md5 mismatch" in msg
    assert f"local: /path/to/{FILENAME}" in msg and str(tmp_path / "raw" / FILENAME) in msg
    assert not (tmp_path / "raw" / FILENAME).exists()


def test_verified_file_in_raw_dir_is_used_without_any_request(tmp_path, server, voc_tar):
    (tmp_path / FILENAME).write_bytes(voc_tar)
    url = server.route("/voc.tar", Route(voc_tar))
    result = fetch_archive_result(_archive(voc_tar, url), tmp_path)
    assert (result.action, result.path) == ("present", tmp_path / FILENAME)
    assert server.log == []


def test_invalid_file_in_raw_dir_is_moved_aside_not_trusted(tmp_path, server, voc_tar):
    (tmp_path / FILENAME).write_bytes(b"not a tarball")
    url = server.route("/voc.tar", Route(voc_tar))
    result = fetch_archive_result(_archive(voc_tar, url), tmp_path)
    assert result.action == "downloaded" and result.path.read_bytes() == voc_tar
    assert (tmp_path / f"{FILENAME}.invalid").read_bytes() == b"not a tarball"  # the user's file is kept


def test_local_copy_is_used_in_place(tmp_path, server, voc_tar):
    local = tmp_path / "mine" / FILENAME
    local.parent.mkdir()
    local.write_bytes(voc_tar)
    url = server.route("/voc.tar", Route(voc_tar))
    result = fetch_archive_result(_archive(voc_tar, url, local=str(local)), tmp_path / "raw")
    assert (result.action, result.path, result.source) == ("local", local, str(local))
    assert server.log == [] and local.read_bytes() == voc_tar
    # raw_dir is the download stage's declared DVC output: it must exist even when nothing was downloaded into it.
    assert (tmp_path / "raw").is_dir() and list((tmp_path / "raw").iterdir()) == []


def test_bad_local_copy_is_reported_untouched_and_mirrors_used(tmp_path, server, voc_tar):
    local = tmp_path / "mine.tar"
    local.write_bytes(voc_tar[:100])
    url = server.route("/voc.tar", Route(voc_tar))
    result = fetch_archive_result(_archive(voc_tar, url, local=str(local)), tmp_path / "raw")
    assert (result.action, result.source) == ("downloaded", url)
    assert local.read_bytes() == voc_tar[:100]


def test_partial_download_is_kept_only_as_part_when_everything_fails(tmp_path, server, voc_tar):
    url = server.route("/voc.tar", Route(voc_tar, drop_after=1000, drop_always=True))
    with pytest.raises(DownloadError) as err:
        fetch_archive(_archive(voc_tar, url), tmp_path, retries_per_mirror=0)
    assert f"connection closed after 1000 of {len(voc_tar)} bytes" in str(err.value)
    assert "(1000 bytes) is kept; the next run resumes it" in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == [f"{FILENAME}.part"]  # never the final name


def test_file_url_and_plain_path_mirrors(tmp_path, voc_tar):
    src = tmp_path / "src.tar"
    src.write_bytes(voc_tar)
    for i, mirror in enumerate([src.as_uri(), str(src)]):
        path = fetch_archive(_archive(voc_tar, str(tmp_path / "missing.tar"), mirror), tmp_path / f"raw{i}")
        assert path.read_bytes() == voc_tar


def test_complete_part_with_unknown_size_is_finished_by_http_416(tmp_path, server, voc_tar):
    (tmp_path / f"{FILENAME}.part").write_bytes(voc_tar)  # an earlier run got every byte, then died
    url = server.route("/voc.tar", Route(voc_tar))
    path = fetch_archive(_archive(voc_tar, url, size=None), tmp_path)
    assert path.read_bytes() == voc_tar
    assert server.log == [("/voc.tar", f"bytes={len(voc_tar)}-")]  # answered 416, no body re-sent


def test_no_mirrors_at_all(tmp_path, voc_tar):
    with pytest.raises(DownloadError, match="lists no local file and no mirrors"):
        fetch_archive(_archive(voc_tar), tmp_path)


# ---------------------------------------------------------------------------------------------------- extraction


def test_safe_extract_writes_tree_and_marker_then_skips(tmp_path, voc_tar):
    tar_path = tmp_path / FILENAME
    tar_path.write_bytes(voc_tar)
    dest = tmp_path / "extracted"
    names = safe_extract(tar_path, dest)
    assert names == ["VOCdevkit/VOC2007/Annotations/000001.xml", "VOCdevkit/VOC2007/JPEGImages/000001.jpg",
                     "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt"]
    jpg = dest / "VOCdevkit/VOC2007/JPEGImages/000001.jpg"
    assert Image.open(jpg).size == (16, 12)
    assert is_extracted(tar_path, dest, md5sum(tar_path)) and not is_extracted(tar_path, dest, "0" * 32)
    jpg.unlink()
    assert safe_extract(tar_path, dest) == names and not jpg.exists()  # marker matched: nothing redone
    (dest / f".{FILENAME}.extracted").unlink()  # as after a killed extraction: the marker is written last
    safe_extract(tar_path, dest)
    assert jpg.exists()


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = kind, 1, 3
    return info, None


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (symlinks not followed) with its bytes, None for folders and links."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


def _cve_2025_4517_shape(dest: Path) -> list:
    """The public CVE-2025-4517 shape, for extraction into `dest`: 16 nested long folders, each reached through a
    one-letter symlink, so a link's *string* path stays short while its resolved path overflows PATH_MAX, where
    `os.path.realpath` (which the data filter relies on) stops resolving. A final link then climbs 16 levels back
    up, "escape" points one level above `dest`, and a hard link through it overwrites ``dest/../flag``; a new
    file is created there too."""
    steps = "abcdefghijklmnop"
    path_max = os.pathconf(dest.parent, "PC_PATH_MAX")
    component = "d" * ((path_max - len(str(dest)) - 1) // (len(steps) + 1))
    entries, path = [], ""
    for step in steps:
        entries.append(_dir(path + component))
        entries.append(_link(path + step, component, tarfile.SYMTYPE))
        path += component + "/"
    long_link = "/".join(steps) + "/" + "l" * 254
    entries.append(_link(long_link, "/".join([".."] * len(steps)), tarfile.SYMTYPE))
    entries.append(_link("escape", long_link + "/..", tarfile.SYMTYPE))
    entries.append(_link("flaglink", "escape/flag", tarfile.LNKTYPE))
    entries.append(_file("flaglink", b"overwritten"))
    entries.append(_file("escape/newfile", b"new"))
    return entries


HOSTILE = {
    "dotdot": ([_file("VOCdevkit/../../evil.txt", b"x")], "VOCdevkit/../../evil.txt", "'..' path component"),
    "absolute": ([_file("/tmp/yolov1-evil.txt", b"x")], "/tmp/yolov1-evil.txt", "absolute path"),
    "symlink out": ([_link("VOCdevkit/link", "../../evil", tarfile.SYMTYPE)], "VOCdevkit/link", "symlink"),
    "symlink abs": ([_link("VOCdevkit/abs", "/etc/passwd", tarfile.SYMTYPE)], "VOCdevkit/abs", "symlink"),
    "symlink in": ([_link("VOCdevkit/in", "ok.txt", tarfile.SYMTYPE)], "VOCdevkit/in", "symlink"),
    # Two links: each target string stays inside, but a/b resolves to a, and a/b/../.. then climbs out.
    "two-link chain": ([_link("VOCdevkit/a", ".", tarfile.SYMTYPE), _link("VOCdevkit/a/b", "../..", tarfile.SYMTYPE),
                        _file("VOCdevkit/a/b/evil.txt", b"x")], "VOCdevkit/a", "symlink"),
    "hardlink": ([_link("VOCdevkit/hard", "VOCdevkit/ok.txt", tarfile.LNKTYPE)], "VOCdevkit/hard", "hard link"),
    "hardlink out": ([_link("VOCdevkit/hard", "../evil", tarfile.LNKTYPE)], "VOCdevkit/hard", "hard link"),
    "char device": ([_special("VOCdevkit/null", tarfile.CHRTYPE)], "VOCdevkit/null", "device or FIFO"),
    "block device": ([_special("VOCdevkit/sda", tarfile.BLKTYPE)], "VOCdevkit/sda", "device or FIFO"),
    "fifo": ([_special("VOCdevkit/pipe", tarfile.FIFOTYPE)], "VOCdevkit/pipe", "device or FIFO"),
    "file twice": ([_file("VOCdevkit/./ok.txt", b"again")], "VOCdevkit/./ok.txt", "the archive holds this file twice"),
    "file and folder": ([_file("VOCdevkit/ok.txt/inner", b"x")], "VOCdevkit/ok.txt", "it is both a file and a folder"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_before_anything_is_written(tmp_path, case):
    members, name, reason = HOSTILE[case]
    tar_path = tmp_path / "bad.tar"
    tar_path.write_bytes(_tar_bytes([_file("VOCdevkit/ok.txt", b"fine"), *members, _file("VOCdevkit/z.txt", b"z")]))
    (tmp_path / "evil.txt").write_bytes(b"original")
    before = _snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(tar_path, tmp_path / "out" / "extracted")
    assert f"refusing member {name!r}: {reason}" in str(err.value)
    assert _snapshot(tmp_path) == {**before, "out": None}  # only the parent folder; not even a staging folder
    assert not Path("/tmp/yolov1-evil.txt").exists()


def test_cve_2025_4517_shaped_archive_is_refused_and_writes_nothing(tmp_path):
    (tmp_path / "flag").write_bytes(b"original")  # one level above the destination: what the attack reaches
    dest = tmp_path / "extracted"
    tar_path = tmp_path / "cve.tar"
    tar_path.write_bytes(_tar_bytes(_cve_2025_4517_shape(dest)))
    before = _snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=r"refusing member 'a': symlink"):
        safe_extract(tar_path, dest)
    assert _snapshot(tmp_path) == before and (tmp_path / "flag").read_bytes() == b"original"


def test_the_cve_shape_really_escapes_tarfiles_own_data_filter_here(tmp_path):
    """Keeps the test above honest: on an unpatched Python its archive overwrites a file through the data filter."""
    box = tmp_path / "box"
    dest = box / "extracted"
    dest.mkdir(parents=True)
    (box / "flag").write_bytes(b"original")
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(_cve_2025_4517_shape(dest)))) as tar:
        try:
            tar.extractall(dest, filter="data")
        except (tarfile.FilterError, OSError, KeyError):
            pytest.skip(f"this Python ({sys.version.split()[0]}) has the CVE-2025-4517 fix in tarfile")
    assert (box / "flag").read_bytes() == b"overwritten" and (box / "newfile").read_bytes() == b"new"


def test_member_count_and_size_bombs_are_refused_with_the_cap_named(tmp_path):
    many = tmp_path / "many.tar"
    many.write_bytes(_tar_bytes([_file(f"VOCdevkit/{i}.txt", b"") for i in range(11)]))
    with pytest.raises(UnsafeArchiveError, match=r"more than 10 members \(max_members\)"):
        safe_extract(many, tmp_path / "a", max_members=10)
    assert len(safe_extract(many, tmp_path / "b", max_members=11)) == 11  # exactly at the cap is fine
    # A gzip bomb: 5 MB of zeros compress to ~5 KB; the cap is on the unpacked bytes, checked before writing.
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        for i in range(5):
            info = tarfile.TarInfo(f"VOCdevkit/{i}.bin")
            info.size = 1_000_000
            tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 50_000
    with pytest.raises(UnsafeArchiveError, match=r"more than 3000000 bytes \(max_bytes\), reached at 'VOCdevkit/3.bin'"):
        safe_extract(bomb, tmp_path / "c", max_bytes=3_000_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "bomb.tar.gz", "many.tar"]


def test_sparse_member_is_refused(tmp_path):
    info = tarfile.TarInfo("VOCdevkit/sparse.bin")
    info.type = tarfile.GNUTYPE_SPARSE
    tar_path = tmp_path / "sparse.tar"
    tar_path.write_bytes(_tar_bytes([(info, b"")]))
    with pytest.raises(UnsafeArchiveError, match="sparse file"):
        safe_extract(tar_path, tmp_path / "out")


def test_too_little_disk_space_is_refused_before_writing(tmp_path, monkeypatch, voc_tar):
    tar_path = tmp_path / FILENAME
    tar_path.write_bytes(voc_tar)
    monkeypatch.setattr("yolov1.extract.shutil.disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9, 100))
    with pytest.raises(ArchiveError, match=r"no space left on device: .* unpacks to \d+ bytes but .* has 100 bytes free"):
        safe_extract(tar_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _archive_file(tmp_path: Path, name: str, entries) -> Path:
    path = tmp_path / name
    path.write_bytes(_tar_bytes(entries))
    return path


def test_archives_sharing_a_tree_merge_like_untarring_by_hand(tmp_path):
    first = _archive_file(tmp_path, "trainval.tar", [
        _file("VOCdevkit/VOC2007/JPEGImages/000001.jpg", b"1"),
        _file("VOCdevkit/VOC2007/ImageSets/Main/trainval.txt", b"000001\n"),
        _file("VOCdevkit/VOC2007/shared.txt", b"old"),
    ])
    second = _archive_file(tmp_path, "test.tar", [
        _file("VOCdevkit/VOC2007/JPEGImages/000002.jpg", b"2"),
        _file("VOCdevkit/VOC2007/ImageSets/Main/test.txt", b"000002\n"),
        _file("VOCdevkit/VOC2007/shared.txt", b"new"),
    ])
    third = _archive_file(tmp_path, "2012.tar", [_file("VOCdevkit/VOC2012/JPEGImages/2008_000008.jpg", b"3")])
    dest = tmp_path / "extracted"
    for tar_path in (first, second, third):
        safe_extract(tar_path, dest)
    files = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()
             and not p.name.startswith(".")}
    assert files == {
        "VOCdevkit/VOC2007/JPEGImages/000001.jpg": b"1", "VOCdevkit/VOC2007/JPEGImages/000002.jpg": b"2",
        "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt": b"000001\n",
        "VOCdevkit/VOC2007/ImageSets/Main/test.txt": b"000002\n",
        "VOCdevkit/VOC2007/shared.txt": b"new",  # the later archive wins, as with tar -x
        "VOCdevkit/VOC2012/JPEGImages/2008_000008.jpg": b"3",
    }
    assert all(is_extracted(t, dest, md5sum(t)) for t in (first, second, third))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_merge_conflict_is_found_before_anything_moves(tmp_path):
    dest = tmp_path / "extracted"
    safe_extract(_archive_file(tmp_path, "a.tar", [_file("VOCdevkit/x", b"a file")]), dest)
    clash = _archive_file(tmp_path, "b.tar", [_file("VOCdevkit/aaa.txt", b"first"), _file("VOCdevkit/x/y", b"")])
    before = _snapshot(tmp_path)
    with pytest.raises(ArchiveError, match=r"cannot extract into .*VOCdevkit/x: it is a file"):
        safe_extract(clash, dest)
    assert _snapshot(tmp_path) == before  # aaa.txt was not moved in, no staging folder left


def test_symlink_planted_in_the_destination_is_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    dest = tmp_path / "extracted"
    dest.mkdir()
    (dest / "VOCdevkit").symlink_to(victim)
    with pytest.raises(ArchiveError, match="it is a symlink"):
        safe_extract(_archive_file(tmp_path, "a.tar", [_file("VOCdevkit/evil.txt", b"x")]), dest)
    assert list(victim.iterdir()) == []


def test_interrupted_extraction_leaves_no_trace_and_dead_staging_is_cleaned(tmp_path, monkeypatch, voc_tar):
    tar_path = tmp_path / FILENAME
    tar_path.write_bytes(voc_tar)
    dest = tmp_path / "extracted"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tarfile.TarFile, "extractall", interrupted)
        with pytest.raises(KeyboardInterrupt):
            safe_extract(tar_path, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]
    # A staging folder left by a killed process (its pid no longer runs) is removed on the next call.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".extracted.staging-{int(dead.stdout)}-0000"
    (stale / "VOCdevkit").mkdir(parents=True)
    alive = tmp_path / f".extracted.staging-{os.getppid()}-0000"  # a running process's: left alone
    alive.mkdir()
    safe_extract(tar_path, dest)
    assert not stale.exists() and alive.is_dir() and (dest / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").is_file()


def test_extracted_tree_follows_the_umask(tmp_path, voc_tar):
    tar_path = tmp_path / FILENAME
    tar_path.write_bytes(voc_tar)
    old = os.umask(0o022)
    try:
        safe_extract(tar_path, tmp_path / "extracted")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "extracted").stat().st_mode) == 0o755  # not mkdtemp's 0700


def test_a_missing_archive_is_an_archive_error_naming_it(tmp_path):
    with pytest.raises(ArchiveError, match=r"cannot extract .*gone.tar into .*: No such file or directory"):
        safe_extract(tmp_path / "gone.tar", tmp_path / "out", md5="0" * 32)


def test_corrupt_tarball_is_a_clear_error(tmp_path):
    tar_path = tmp_path / "junk.tar"
    tar_path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ArchiveError, match="junk.tar: not a readable tar archive"):
        safe_extract(tar_path, tmp_path / "out")


# ---------------------------------------------------------------------------------------------------- the stage


def _params(repo_params_dict, root: Path, archive: ArchiveConfig):
    raw = dict(repo_params_dict)
    raw["data"] = {**raw["data"], "root": str(root), "archives": [dataclasses.asdict(archive)]}
    raw["data"]["archives"][0]["mirrors"] = list(archive.mirrors)
    return raw


def test_stage_run_end_to_end_on_loopback(tmp_path, server, voc_tar, repo_params_dict):
    url = server.route("/voc.tar", Route(voc_tar, drop_after=5000))
    params = params_from_dict(_params(repo_params_dict, tmp_path / "data", _archive(voc_tar, url)))
    summary = stage.run(params)
    voc = tmp_path / "data" / "extracted" / "VOCdevkit" / "VOC2007"
    assert (voc / "ImageSets/Main/trainval.txt").read_text() == "000001\n"
    assert (voc / "Annotations/000001.xml").is_file() and (voc / "JPEGImages/000001.jpg").is_file()
    (entry,) = summary["archives"]
    assert entry == {"name": "voc2007-demo", "path": str(tmp_path / "data/raw" / FILENAME),
                     "md5": hashlib.md5(voc_tar).hexdigest(), "bytes": len(voc_tar), "source": url,
                     "action": "downloaded", "extracted": True, "members": 3}
    requests = len(server.log)
    again = stage.run(params)["archives"][0]
    assert (again["action"], again["extracted"], len(server.log)) == ("present", False, requests)


def test_main_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        stage.main(["--help"])
    assert exit_info.value.code == 0
    assert "--params" in capsys.readouterr().out


def test_main_reports_download_failure_and_exits_2(tmp_path, server, voc_tar, repo_params_dict, capsys):
    url = server.route("/gone.tar", Route(b"", status=404))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(_params(repo_params_dict, tmp_path / "data", _archive(voc_tar, url))))
    assert stage.main(["--params", str(params_file)]) == 2
    err = capsys.readouterr().err
    assert "error: could not fetch" in err and f"{url}: HTTP 404" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------- secrets, faults


SECRET, TOKEN = "S3cr3tPW", "T0kenValue"


def test_credentials_in_a_mirror_url_become_basic_auth_and_are_never_shown(tmp_path, server, voc_tar, caplog,
                                                                           capsys, repo_params_dict):
    import base64

    auth = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    port = server.httpd.server_address[1]
    server.route(f"/gone.tar?token={TOKEN}", Route(b"", status=404))
    server.route(f"/voc.tar?token={TOKEN}", Route(voc_tar, auth=auth))
    denied = f"http://127.0.0.1:{port}/voc.tar?token={TOKEN}"  # no credentials: 401
    gone = f"http://bob:{SECRET}@127.0.0.1:{port}/gone.tar?token={TOKEN}"
    good = f"http://alice:{SECRET}@127.0.0.1:{port}/voc.tar?token={TOKEN}"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(_params(repo_params_dict, tmp_path / "data", _archive(voc_tar, denied, gone, good))))
    caplog.set_level("DEBUG", logger="yolov1.download")
    assert stage.main(["--params", str(params_file)]) == 0
    out = capsys.readouterr()
    shown = out.out + out.err + caplog.text
    assert "HTTP 401" in caplog.text and "HTTP 404" in caplog.text  # the failures were logged...
    assert SECRET not in shown and TOKEN not in shown  # ...without the secrets
    assert "alice:***@127.0.0.1" in out.out and "token=***" in out.out
    assert (tmp_path / "data/raw" / FILENAME).read_bytes() == voc_tar  # and the credentials did work
    # Every source failing: the exception message is redacted too.
    with pytest.raises(DownloadError) as err:
        fetch_archive(_archive(voc_tar, gone, f"htp://carol:{SECRET}@[::1/x?token={TOKEN}"), tmp_path / "raw2")
    assert SECRET not in str(err.value) and TOKEN not in str(err.value) and "bob:***@" in str(err.value)


def test_ctrl_c_during_download_says_what_was_kept_and_exits_130(tmp_path, server, voc_tar, repo_params_dict,
                                                                capsys, monkeypatch):
    url = server.route("/voc.tar", Route(voc_tar))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(_params(repo_params_dict, tmp_path / "data", _archive(voc_tar, url))))
    real_append = stage.fetch_archive_result.__globals__["_Part"].append

    def append_then_interrupt(self, chunks, progress, total):  # the first bytes land, then the user presses Ctrl-C
        real_append(self, iter([next(chunks)[:4000]]), progress, total)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(stage.fetch_archive_result.__globals__["_Part"], "append", append_then_interrupt)
    # Python's own Ctrl-C handler, whatever this process inherited (a shell's background job ignores SIGINT).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert stage.main(["--params", str(params_file)]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    part = tmp_path / "data" / "raw" / f"{FILENAME}.part"
    assert part.read_bytes() == voc_tar[:4000]
    assert f"kept the partial download {part} (4000 bytes): the next run resumes it" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    monkeypatch.undo()
    assert stage.main(["--params", str(params_file)]) == 0  # and it does resume
    assert server.log[-1] == ("/voc.tar", "bytes=4000-")


def test_stage_with_a_local_archive_creates_raw_and_extracts(tmp_path, voc_tar, repo_params_dict):
    local = tmp_path / "mine" / FILENAME
    local.parent.mkdir()
    local.write_bytes(voc_tar)
    params = params_from_dict(_params(repo_params_dict, tmp_path / "data", _archive(voc_tar, local=str(local))))
    (entry,) = stage.run(params)["archives"]
    assert (entry["action"], entry["source"], entry["extracted"]) == ("local", str(local), True)
    assert (tmp_path / "data/raw").is_dir() and list((tmp_path / "data/raw").iterdir()) == []
    assert (tmp_path / "data/extracted/VOCdevkit/VOC2007/JPEGImages/000001.jpg").is_file()
    local.write_bytes(voc_tar[:-1] + b"!")  # the same size, another md5: refused, not extracted
    (tmp_path / "data/extracted" / f".{FILENAME}.extracted").unlink()
    with pytest.raises(DownloadError, match=r"local .*: md5 mismatch"):
        stage.run(params)


@pytest.mark.slow
def test_local_archive_under_dvc_repro_produces_the_declared_outputs(tmp_path, voc_tar, repo_params_dict):
    """Issue 8.1: `dvc repro download` with `local:` failed with "output 'data/raw' does not exist"."""
    from pipelines.workspace import create_workspace

    local = tmp_path / FILENAME
    local.write_bytes(voc_tar)
    params = _params(repo_params_dict, Path("data"), _archive(voc_tar, local=str(local)))
    params["data"]["root"] = "data"
    workspace = create_workspace(tmp_path / "ws", params)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    dvc = [sys.executable, "-m", "dvc"]
    repro = subprocess.run([*dvc, "repro", "download"], cwd=workspace, env=env, capture_output=True, text=True)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert (workspace / "data/raw").is_dir()
    assert (workspace / "data/extracted/VOCdevkit/VOC2007/Annotations/000001.xml").is_file()
    status = subprocess.run([*dvc, "status", "download"], cwd=workspace, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout.lower(), status.stdout + status.stderr


def test_the_three_official_name_standins_extract_into_the_layout_prepare_reads(tmp_path, repo_params_dict):
    """One archive by `local`, two from mirrors; all three merge into extracted/VOCdevkit, which prepare reads."""
    from pipelines.prepare import read_tables
    from yolov1.synth import write_voc_standins

    standins = write_voc_standins(tmp_path / "have", num_2007_trainval=3, num_2007_test=2, num_2012_trainval=2)
    raw = dict(repo_params_dict)
    raw["data"] = {**raw["data"], "root": str(tmp_path / "data"), "archives": [
        {"name": s.name, "filename": s.filename, "md5": s.md5, "size": s.size,
         "local": str(s.path) if i == 0 else None, "mirrors": [] if i == 0 else [s.path.as_uri()]}
        for i, s in enumerate(standins)]}
    params = params_from_dict(raw)
    summary = stage.run(params)
    assert [a["action"] for a in summary["archives"]] == ["local", "downloaded", "downloaded"]
    devkit = tmp_path / "data" / "extracted" / "VOCdevkit"
    assert sorted(p.name for p in devkit.iterdir()) == ["VOC2007", "VOC2012"]
    tables = read_tables(params.data, workers=1)
    by_split = tables.images.groupby("split")["image_id"].apply(list).to_dict()
    tv07, te07, tv12 = standins
    assert by_split["test"] == [f"2007_{i}" for i in te07.ids]
    assert by_split["train"] == [f"2007_{i}" for i in tv07.ids] + [f"2012_{i}" for i in tv12.ids]
    assert not [p for p in tmp_path.joinpath("data").iterdir() if ".staging-" in p.name]
