"""Serve a logged YOLOv1 pyfunc over HTTP with a request-body size limit that MLflow's scoring server lacks.

``python -m pipelines.serve_model --model models:/yolov1-voc@champion --port 5001`` (or ``yolov1 serve-model``)
loads the model with `mlflow.pyfunc.load_model`, builds MLflow's own scoring app
(`mlflow.pyfunc.scoring_server.init`: the same /invocations, /ping, /health and /version as
``mlflow models serve``) and runs it under uvicorn behind `BodyLimit`, a pure-ASGI middleware that answers
HTTP 413 before the body is read: at once when ``Content-Length`` is over the limit, and as soon as a chunked
(or mis-declared) body goes over it, without buffering the rest. The limit is the model's own
``serve.max_request_bytes`` (stored in the pyfunc when it was logged, pipelines/pyfunc.py); ``--max-request-bytes``
overrides it. ``mlflow models serve`` (MLflow 3.17) reads any body whole before the model sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ERROR_CODE = "REQUEST_TOO_LARGE"


class BodyLimit:
    """ASGI middleware: refuse an HTTP request whose body is over `max_bytes` with 413 and a short JSON error.

    A declared ``Content-Length`` over the limit is refused before the app runs (nothing is read). Otherwise
    the body is counted as the app receives it; the message that takes the total over the limit is not passed
    on, the app's own answer (if any) is dropped and a 413 is sent instead, so at most the limit plus one
    received chunk is ever read. Every 413 says ``Connection: close``: the server drops the rest of the body
    with the connection instead of reading it for the next request.
    """

    def __init__(self, app, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes: expected an integer >= 1, got {max_bytes!r}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan (and websockets, which this app has none of)
            return
        declared = [value for name, value in scope.get("headers", []) if name.lower() == b"content-length"]
        for value in declared:
            text = value.decode("latin-1").strip()
            if not text.isdigit():
                await _error(send, 400, "BAD_REQUEST", "Content-Length: expected a non-negative integer")
                return
            if int(text) > self.max_bytes:
                await _error(send, 413, ERROR_CODE, f"request body of {int(text):,} bytes is over the limit of "
                             f"{self.max_bytes:,} bytes (serve.max_request_bytes)")
                return
        state = {"received": 0, "over": False, "started": False}

        async def counted_receive():
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["over"] = True
                    return {"type": "http.disconnect"}  # the app stops reading; its answer is replaced below
            return message

        async def guarded_send(message):
            if state["over"]:
                return  # whatever the app says about the cut-off body (a 500, a parse error) is not sent
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await _error(send, 413, ERROR_CODE, f"request body is over the limit of {self.max_bytes:,} bytes "
                         "(serve.max_request_bytes)")


async def _error(send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error_code": code, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def stored_limit(pyfunc_model) -> int | None:
    """The ``max_request_bytes`` a YOLOv1 pyfunc was logged with (params ``serve``); None for other models."""
    try:
        inner = pyfunc_model.unwrap_python_model()
    except Exception:  # noqa: BLE001 - not a python_model flavour: it stores no limit
        return None
    value = getattr(inner, "max_request_bytes", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def build_app(pyfunc_model, max_request_bytes: int):
    """MLflow's scoring app (FastAPI) for `pyfunc_model`, behind `BodyLimit(max_request_bytes)`."""
    from mlflow.pyfunc import scoring_server

    return BodyLimit(scoring_server.init(pyfunc_model), max_request_bytes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yolov1 serve-model",
        description="Serve a logged YOLOv1 pyfunc (MLflow's scoring server: /invocations, /ping) with a body-size "
        "limit enforced before the body is read (HTTP 413). `mlflow models serve` has no such limit.")
    parser.add_argument("--model", required=True,
                        help="MLflow model URI (models:/yolov1-voc@champion, runs:/<id>/model) or a local model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5001, help="port to listen on (default: %(default)s)")
    parser.add_argument("--max-request-bytes", type=int, default=None,
                        help="body-size limit in bytes (default: the model's serve.max_request_bytes)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_request_bytes is not None and args.max_request_bytes < 1:
        return _fail("--max-request-bytes: must be >= 1")
    if not 1 <= args.port <= 65535:
        return _fail(f"--port: {args.port} is not a port number")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    model = _load(args.model)
    if isinstance(model, str):
        return _fail(model)
    limit = args.max_request_bytes or stored_limit(model)
    if limit is None:
        return _fail(f"{args.model}: the model stores no serve.max_request_bytes; pass --max-request-bytes")
    import uvicorn

    print(f"yolov1 serve-model: {args.model} on http://{args.host}:{args.port} (request bodies up to {limit:,} "
          "bytes)", file=sys.stderr, flush=True)
    uvicorn.run(build_app(model, limit), host=args.host, port=args.port, log_level="info")
    return 0


def _load(uri: str):
    """The loaded pyfunc, or a one-line error message (credentials redacted)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from yolov1.redact import redact

    if uri.startswith(("models:/", "runs:/")):
        tracking = mlflow.get_tracking_uri()
        if tracking.startswith(("http://", "https://")):  # MLflow's client retries a dead server for minutes
            from pipelines.tracking import TrackingUnavailable, check_reachable

            try:
                check_reachable(tracking)
            except TrackingUnavailable as err:
                return f"{uri}: {err}"
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:
        text = str(getattr(err, "message", err)).strip()
        return f"{redact(uri)}: cannot load the model ({redact(text.splitlines()[0][:200] if text else type(err).__name__)})"


def _fail(message: str) -> int:
    from yolov1.redact import redact

    print(f"yolov1 serve-model: error: {redact(message)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    from pipelines.cli import run_main  # Ctrl-C: a short message and exit 130, not a traceback

    raise SystemExit(run_main(main, prog="yolov1 serve-model"))
