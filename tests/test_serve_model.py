"""`yolov1 serve-model`: the body-size middleware on a tiny ASGI app (fast, no model), the command's refusals,
then the real command serving the session's tiny champion over HTTP (slow: tests/pipeline_fixtures.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys

import pytest

from pipelines.serve_model import BodyLimit, main, stored_limit
from tests.pipeline_fixtures import Workspace, sample_image, shared_workspace
from tests.server_process import free_port, running_server

LIMIT = 2500
CHUNK = 1000


class Wire:
    """The server side of one request: hands out body chunks and records what was read and what was sent."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.read = 0  # body bytes handed to the middleware
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if not self.chunks:
            return {"type": "http.disconnect"}
        body = self.chunks.pop(0)
        self.read += len(body)
        return {"type": "http.request", "body": body, "more_body": bool(self.chunks)}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def header(self, name: bytes) -> bytes | None:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return dict(start["headers"]).get(name)


class EchoApp:
    """Reads the whole body (until more_body is false or a disconnect) and answers 200 with it."""

    def __init__(self, raise_on_disconnect: bool = False) -> None:
        self.calls = 0
        self.raise_on_disconnect = raise_on_disconnect  # what Starlette's request.body() does

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if self.raise_on_disconnect:
                    raise ConnectionError("client disconnected")
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})


def _run(app, wire: Wire, headers: list[tuple[bytes, bytes]] | None = None, limit: int = LIMIT) -> None:
    scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": headers or []}
    asyncio.run(BodyLimit(app, limit)(scope, wire.receive, wire.send))


def _chunks(total: int) -> list[bytes]:
    data = bytes(range(256)) * (total // 256 + 1)
    return [data[i : min(i + CHUNK, total)] for i in range(0, total, CHUNK)] or [b""]


def test_declared_length_over_the_limit_is_refused_before_the_app_reads_anything():
    app, wire = EchoApp(), Wire(_chunks(LIMIT + 1))
    _run(app, wire, [(b"content-length", str(LIMIT + 1).encode())])
    assert wire.status == 413 and app.calls == 0 and wire.read == 0
    assert json.loads(wire.body) == {"error_code": "REQUEST_TOO_LARGE", "message": "request body of 2,501 bytes is "
                                     "over the limit of 2,500 bytes (serve.max_request_bytes)"}
    assert wire.header(b"connection") == b"close"  # the server drops the unread body with the connection


@pytest.mark.parametrize("raise_on_disconnect", [False, True])
def test_streamed_body_over_the_limit_is_cut_after_one_chunk_past_it(raise_on_disconnect):
    app, wire = EchoApp(raise_on_disconnect), Wire(_chunks(10 * CHUNK))  # chunked: no Content-Length
    _run(app, wire)
    # Chunks of 1000 against a limit of 2500: the third chunk crosses it (3000 read), the other 7 are never read.
    assert wire.read == 3 * CHUNK <= LIMIT + CHUNK and len(wire.chunks) == 7
    assert wire.status == 413 and json.loads(wire.body)["error_code"] == "REQUEST_TOO_LARGE"
    assert [m["type"] for m in wire.sent] == ["http.response.start", "http.response.body"]  # the app's 200 dropped


def test_a_body_that_outgrows_its_declared_length_is_still_counted():
    app, wire = EchoApp(), Wire(_chunks(4 * CHUNK))
    _run(app, wire, [(b"content-length", b"10")])
    assert wire.status == 413 and wire.read == 3 * CHUNK


@pytest.mark.parametrize("total", [0, 1, LIMIT - 1, LIMIT])
@pytest.mark.parametrize("declared", [True, False])
def test_bodies_up_to_the_limit_pass_through_intact(total, declared):
    chunks = _chunks(total)
    app, wire = EchoApp(), Wire(chunks)
    _run(app, wire, [(b"content-length", str(total).encode())] if declared else None)
    assert wire.status == 200 and wire.body == b"".join(chunks) and app.calls == 1


@pytest.mark.parametrize("value", [b"abc", b"-1", b"1e9", b"", b"0x10", "\u0661".encode()])
def test_a_malformed_content_length_is_a_400(value):
    app, wire = EchoApp(), Wire([b"x"])
    _run(app, wire, [(b"content-length", value)])
    assert wire.status == 400 and app.calls == 0 and wire.read == 0
    assert json.loads(wire.body)["message"] == "Content-Length: expected a non-negative integer"


def test_non_http_scopes_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(BodyLimit(app, 1)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


@pytest.mark.parametrize("bad", [0, -5, True, 1.5, "100"])
def test_the_limit_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="max_bytes"):
        BodyLimit(EchoApp(), bad)


def test_a_starlette_app_reading_request_body_gets_a_413_not_its_500():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        return Response(str(len(await request.body())))

    app = Starlette(routes=[Route("/invocations", endpoint, methods=["POST"])])
    over, under = Wire(_chunks(10 * CHUNK)), Wire(_chunks(LIMIT))
    _run(app, over)
    _run(app, under)
    assert over.status == 413 and over.read == 3 * CHUNK
    assert under.status == 200 and under.body == str(LIMIT).encode()


def test_stored_limit_reads_the_pyfunc_and_ignores_other_models():
    import types

    from pipelines.pyfunc import YoloV1Pyfunc

    ours = YoloV1Pyfunc(score_threshold=0.3, nms_iou_threshold=0.5, max_detections=10, max_image_pixels=100,
                        max_rows=4, max_request_bytes=12345)
    assert stored_limit(types.SimpleNamespace(unwrap_python_model=lambda: ours)) == 12345
    assert stored_limit(types.SimpleNamespace(unwrap_python_model=lambda: object())) is None

    def not_python_model():
        raise AttributeError("not a python_model flavour")

    assert stored_limit(types.SimpleNamespace(unwrap_python_model=not_python_model)) is None


def test_command_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nowhere"), "--max-request-bytes", "0"]) == 2
    assert main(["--model", str(tmp_path / "nowhere"), "--port", "70000"]) == 2
    assert main(["--model", str(tmp_path / "nowhere")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "yolov1 serve-model: error: --max-request-bytes: must be >= 1"
    assert lines[1] == "yolov1 serve-model: error: --port: 70000 is not a port number"
    assert lines[2].startswith(f"yolov1 serve-model: error: {tmp_path / 'nowhere'}: cannot load the model")
    assert len(lines) == 3  # no traceback
    with pytest.raises(SystemExit) as out:
        main(["--help"])
    assert out.value.code == 0 and "--max-request-bytes" in capsys.readouterr().out


# -- the real command over HTTP (slow) --------------------------------------------------------------------------

SERVE_DEADLINE_S = 180  # mlflow + torch import and model load on 2 busy cores; only bounds a hung server


@pytest.fixture(scope="session")
def ws(tmp_path_factory) -> Workspace:
    return shared_workspace(tmp_path_factory)


def _http(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send a request (possibly only the start of its body) on a raw socket; read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            headers, _, rest = answer.partition(b"\r\n\r\n")
            length = [int(h.split(b":")[1]) for h in headers.split(b"\r\n") if h.lower().startswith(b"content-length")]
            if length and len(rest) >= length[0]:
                break
    status = int(headers.split(b" ", 2)[1])
    return status, json.loads(rest)


def _post_head(port: int, length: int) -> bytes:
    return (f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


@pytest.mark.slow
@pytest.mark.e2e
def test_serve_model_answers_and_refuses_an_oversized_body_unread(ws):
    import yaml

    limit = yaml.safe_load((ws.path / "params.yaml").read_text())["serve"]["max_request_bytes"]
    path, width, height = sample_image(ws)
    port = free_port()
    cmd = [sys.executable, "-m", "pipelines.serve_model", "--model", f"models:/{ws.model_name}@champion",
           "--host", "127.0.0.1", "--port", str(port)]
    with running_server(cmd, cwd=ws.path, env=ws.env, ready=["Uvicorn running on"],
                        deadline_s=SERVE_DEADLINE_S) as seen:
        assert any(f"request bodies up to {limit:,} bytes" in line for line in seen), seen  # the model's own limit
        b64 = base64.b64encode(path.read_bytes()).decode("ascii")
        payload = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b64]]},
                              "params": {"score_threshold": 0.0}}).encode()
        status, body = _http(port, _post_head(port, len(payload)), payload)
        assert status == 200 and body["predictions"], body
        for det in body["predictions"]:
            assert 0 <= det["xmin"] <= det["xmax"] <= width and 0 <= det["ymin"] <= det["ymax"] <= height
        # limit + 1 bytes declared, only the first 64 KiB sent: the answer comes before the body could be read.
        status, body = _http(port, _post_head(port, limit + 1), b"{" + b" " * 65535)
        assert status == 413, body
        assert body == {"error_code": "REQUEST_TOO_LARGE", "message": f"request body of {limit + 1:,} bytes is over "
                        f"the limit of {limit:,} bytes (serve.max_request_bytes)"}
        assert _http(port, _post_head(port, len(payload)), payload)[0] == 200  # still serving
