"""`make run`'s preflight: every way an archive can be had, the GPU rule and its --allow-cpu / ALLOW_CPU=1 route."""

from __future__ import annotations

import base64
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from pipelines import preflight
from yolov1.download import probe_source

ROOT = Path(__file__).resolve().parents[1]
SECRET, TOKEN = "S3cr3tPW", "T0kenValue"


class _Handler(BaseHTTPRequestHandler):
    """/ok.tar answers HEAD; /nohead.tar answers only GET (405 to HEAD); /private.tar wants alice's Basic auth."""

    def log_message(self, *args):
        pass

    def _answer(self, head: bool) -> None:
        path = self.path.partition("?")[0]
        self.server.seen.append((self.command, path))
        auth = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
        if path == "/nohead.tar" and head or path not in ("/ok.tar", "/nohead.tar", "/private.tar"):
            self.send_error(405 if path == "/nohead.tar" else 404)
            return
        if path == "/private.tar" and self.headers.get("Authorization") != auth:
            self.send_error(401)
            return
        self.send_response(200)
        self.send_header("Content-Length", "1")
        self.end_headers()
        if not head:
            self.wfile.write(b"x")

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)


@pytest.fixture
def base_url(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.seen
    httpd.shutdown()
    httpd.server_close()


def _write_params(tmp_path: Path, repo_params_dict: dict, archives: list[dict]) -> Path:
    raw = dict(repo_params_dict)
    raw["data"] = {**raw["data"], "root": str(tmp_path / "data"), "archives": archives}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _entry(name: str, mirrors: list[str], local: str | None = None, size: int | None = None) -> dict:
    return {"name": name, "filename": f"{name}.tar", "md5": "0" * 32, "size": size, "local": local, "mirrors": mirrors}


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        preflight.main(["--help"])
    assert exit_info.value.code == 0 and "--allow-cpu" in capsys.readouterr().out


def test_every_way_an_archive_can_be_had(tmp_path, base_url, repo_params_dict, monkeypatch, capsys):
    url, seen = base_url
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "mine.tar").write_bytes(b"12345")
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "present.tar").write_bytes(b"")
    (tmp_path / "mirror.tar").write_bytes(b"")
    archives = [
        _entry("local", [f"{url}/missing.tar"], local=str(tmp_path / "mine.tar"), size=5),
        _entry("present", [f"{url}/missing.tar"]),
        _entry("head", [f"{url}/missing.tar", f"{url}/ok.tar"]),
        _entry("nohead", [f"{url}/nohead.tar"]),  # a server refusing HEAD is asked for byte 0 instead
        _entry("private", [f"http://alice:{SECRET}@127.0.0.1:{url.rsplit(':', 1)[1]}/private.tar?token={TOKEN}"]),
        _entry("path", [str(tmp_path / "nowhere.tar"), str(tmp_path / "mirror.tar")]),
        _entry("fileurl", [(tmp_path / "mirror.tar").as_uri()]),
    ]
    assert preflight.main(["--params", str(_write_params(tmp_path, repo_params_dict, archives)), "--allow-cpu"]) == 0
    assert "every archive is available (CPU only: --allow-cpu)" in capsys.readouterr().out
    # local and present needed no request; the first dead mirror of "head" was tried before the good one.
    assert seen == [("HEAD", "/missing.tar"), ("HEAD", "/ok.tar"), ("HEAD", "/nohead.tar"), ("GET", "/nohead.tar"),
                    ("HEAD", "/private.tar")]


def test_unavailable_archives_and_no_gpu_are_listed_with_secrets_masked(tmp_path, base_url, repo_params_dict,
                                                                          monkeypatch, capsys):
    url, _ = base_url
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "short.tar").write_bytes(b"123")
    port = url.rsplit(":", 1)[1]
    archives = [
        _entry("a", [f"http://bob:{SECRET}@127.0.0.1:{port}/private.tar?token={TOKEN}", f"{url}/gone.tar"],
               local=str(tmp_path / "short.tar"), size=5),
        _entry("b", [], local=None),
        _entry("c", [f"htp://carol:{SECRET}@[::1/x?token={TOKEN}", f"ftp://127.0.0.1:{port}/x.tar"]),
    ]
    assert preflight.main(["--params", str(_write_params(tmp_path, repo_params_dict, archives))]) == 2
    err = capsys.readouterr().err
    assert SECRET not in err and TOKEN not in err
    assert f"local {tmp_path / 'short.tar'}: size is 3 bytes, expected 5" in err
    assert f"http://bob:***@127.0.0.1:{port}/private.tar?token=***: HTTP 401" in err
    assert f"{url}/gone.tar: HTTP 404" in err
    assert "b.tar cannot be had:\n    the entry lists no local file and no mirrors" in err
    assert "malformed URL" in err and "unsupported URL scheme 'ftp'" in err
    assert "data.archives[2].local: /path/to/c.tar" in err
    assert "no CUDA GPU" in err and "make run ALLOW_CPU=1" in err and "Traceback" not in err


def test_bad_params_and_bad_timeout(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [")
    assert preflight.main(["--params", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        preflight.main(["--timeout", "nan"])
    assert exit_info.value.code == 2


def test_probe_source_on_a_closed_port_is_a_reason_not_an_exception():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert probe_source(f"http://127.0.0.1:{port}/x.tar", timeout=5) == f"http://127.0.0.1:{port}/x.tar: connection refused"


def test_make_run_passes_allow_cpu_only_when_asked():
    def preflight_line(*args: str) -> str:
        out = subprocess.run(["make", "-n", "run", *args], cwd=ROOT, capture_output=True, text=True, check=True)
        return next(line for line in out.stdout.splitlines() if "pipelines.preflight" in line)

    assert preflight_line().split()[-1] == "pipelines.preflight"
    assert preflight_line("ALLOW_CPU=1").endswith("pipelines.preflight --allow-cpu")
    assert "--allow-cpu" not in preflight_line("ALLOW_CPU=0")


def _pretrained_params(tmp_path: Path, repo_params_dict: dict, **model) -> Path:
    """The repo's params with one local archive that is there, a small Darknet (width 0.125) and `model` changes."""
    (tmp_path / "a.tar").write_bytes(b"x")
    path = _write_params(tmp_path, repo_params_dict, [_entry("a", [], local=str(tmp_path / "a.tar"), size=1)])
    raw = yaml.safe_load(path.read_text())
    raw["model"].update(width_multiplier=0.125, **model)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_pretrained_weights_are_checked_before_anything_is_downloaded(tmp_path, repo_params_dict, monkeypatch, capsys):
    """A fitting backbone file passes; a missing one and one of another width fail with the key and the file; the
    check builds the backbone on the meta device, so the paper-sized net costs no memory."""
    from yolov1.config import model_config_from_dict
    from yolov1.model import build_backbone

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    small = model_config_from_dict({**repo_params_dict["model"], "width_multiplier": 0.125})
    fits, other = tmp_path / "fits.pt", tmp_path / "other.pt"
    torch.save(build_backbone(small)[0].state_dict(), fits)
    wider = model_config_from_dict({**repo_params_dict["model"], "width_multiplier": 0.25})
    torch.save(build_backbone(wider)[0].state_dict(), other)

    ok = _pretrained_params(tmp_path, repo_params_dict, pretrained=str(fits))
    assert preflight.main(["--params", str(ok), "--allow-cpu"]) == 0
    n = len(torch.load(fits, weights_only=True))  # 20 convs x (weight + BatchNorm's five) = 120
    assert f"model.pretrained: {fits}: {n} backbone tensors fit" in capsys.readouterr().out

    for source, words in [(tmp_path / "nowhere.pt", "no such file"), (other, "with another shape")]:
        bad = _pretrained_params(tmp_path, repo_params_dict, pretrained=str(source))
        assert preflight.main(["--params", str(bad), "--allow-cpu"]) == 2
        err = capsys.readouterr().err
        assert f"model.pretrained: {source}" in err and words in err and "Traceback" not in err


def test_imagenet_weights_need_the_file_or_a_reachable_url(tmp_path, repo_params_dict, monkeypatch, capsys):
    """No network in tests: the probe is replaced. Offline with an empty TORCH_HOME names the folder to fill;
    a reachable URL passes (training downloads it); a file already in TORCH_HOME is read and matched."""
    import torchvision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    params = _pretrained_params(tmp_path, repo_params_dict, backbone="resnet18", pretrained="imagenet", head="conv")
    monkeypatch.setattr(preflight, "probe_source", lambda url, timeout: f"{url}: offline (test)")
    assert preflight.main(["--params", str(params), "--allow-cpu"]) == 2
    err = capsys.readouterr().err
    assert "model.pretrained: imagenet" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err

    monkeypatch.setattr(preflight, "probe_source", lambda url, timeout: None)
    assert preflight.main(["--params", str(params), "--allow-cpu"]) == 0
    assert "answers (training downloads it to" in capsys.readouterr().out

    from yolov1.backbones import imagenet_file

    path = imagenet_file("resnet18")[1]
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), path)  # random weights with the official layout
    monkeypatch.setattr(preflight, "probe_source", lambda url, timeout: pytest.fail("the file is there: no probe"))
    assert preflight.main(["--params", str(params), "--allow-cpu"]) == 0
    assert f"model.pretrained: imagenet ({path}): " in capsys.readouterr().out
