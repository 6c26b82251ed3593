"""Download and extraction against a real HTTP server on 127.0.0.1 serving a tiny generated VOC-layout tarball."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import socket
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
    assert server.log == [] and not (tmp_path / "raw").exists()


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


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, None


@pytest.mark.parametrize("bad, reason", [
    (_file("VOCdevkit/../../evil.txt", b"x"), "'..' path component"),
    (_file("/tmp/yolov1-evil.txt", b"x"), "absolute path"),
    (_link("VOCdevkit/link", "../../evil", tarfile.SYMTYPE), "symlink to '../../evil' points outside"),
    (_link("VOCdevkit/abs", "/etc/passwd", tarfile.SYMTYPE), "symlink to '/etc/passwd' points outside"),
    (_link("VOCdevkit/hard", "../evil", tarfile.LNKTYPE), "hard link to '../evil' points outside"),
    (_device("VOCdevkit/null"), "device or FIFO file"),
])
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, bad, reason):
    tar_path = tmp_path / "bad.tar"
    tar_path.write_bytes(_tar_bytes([_file("VOCdevkit/ok.txt", b"fine"), bad]))
    dest = tmp_path / "out" / "extracted"
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(tar_path, dest)
    assert f"refusing member {bad[0].name!r}: {reason}" in str(err.value)
    assert not dest.exists() or list(dest.rglob("*")) == []  # the pre-scan runs before any extraction
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/yolov1-evil.txt").exists()


def test_symlink_inside_the_tree_is_allowed(tmp_path):
    tar_path = tmp_path / "ok.tar"
    tar_path.write_bytes(_tar_bytes([_file("a/b/f.txt", b"hi"), _link("a/c/link", "../b/f.txt", tarfile.SYMTYPE)]))
    safe_extract(tar_path, tmp_path / "out")
    assert (tmp_path / "out/a/c/link").read_bytes() == b"hi"


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
