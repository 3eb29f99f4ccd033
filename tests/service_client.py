"""Helpers for the service tests: run the app on a free loopback port in a thread, call it."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any


@contextmanager
def running(predictor, options=None, log_level: str = "warning"):
    """The service for ``predictor`` on 127.0.0.1:<free port>; yields (base URL, app)."""
    import uvicorn

    from finetunekit.use.serving.app import bind, create_app

    app = create_app(predictor, options)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("service did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def call(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         chunked: bool = False) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request on its own connection."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        if chunked:
            conn.request(method, path, body=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
                         headers=headers or {}, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        kind = response.getheader("content-type", "")
        return response.status, json.loads(data) if "json" in kind else data.decode("utf-8", "replace")
    finally:
        conn.close()


def post_json(url: str, payload: Any, path: str = "/predict") -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return call(url, "POST", path, body, {"content-type": "application/json"})


def multipart(fields: list[tuple[str, str | tuple[str, bytes, str]]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request: ``(name, value)`` or ``(name, (filename, bytes, type))``."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        if isinstance(value, tuple):
            filename, data, kind = value
            head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    f"Content-Type: {kind}\r\n\r\n").encode()
            parts.append(head + data + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_form(url: str, fields, path: str = "/predict") -> tuple[int, Any]:
    body, kind = multipart(fields)
    return call(url, "POST", path, body, {"content-type": kind})
