"""A small real HTTP/1.1 server on 127.0.0.1 for tests: routing, range requests, fault injection, a log."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    cut_at: int | None = None  # send only this many body bytes, then drop the connection


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})


def error_response(status: int, message: str) -> Response:
    return json_response({"message": message, "general": [{"message": message}]}, status)


def bytes_response(req: Request, data: bytes, content_type: str = "application/octet-stream") -> Response:
    """Serve ``data`` honouring a single ``Range: bytes=a-b`` header (206 / 416), like a storage bucket."""
    headers = {"Content-Type": content_type, "Accept-Ranges": "bytes"}
    rng = req.headers.get("range")
    if not rng:
        return Response(200, data, headers)
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return Response(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else len(data) - 1
    else:  # suffix range: the last N bytes
        start, end = max(len(data) - int(m.group(2)), 0), len(data) - 1
    if start >= len(data):
        return Response(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
    end = min(end, len(data) - 1)
    return Response(206, data[start:end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        return

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(
            method=self.command,
            path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        fake = self.server.fake
        try:
            resp = fake.dispatch(req)
        except Exception as exc:  # a bug in the fake: answer 599 so the test sees it
            resp = error_response(599, f"fake server error: {type(exc).__name__}: {exc}")
        self.send_response(resp.status)
        for key, value in resp.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(resp.body)))
        if resp.cut_at is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if resp.cut_at is not None:
            self.wfile.write(resp.body[: resp.cut_at])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(resp.body)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    fake: FakeServer


class FakeServer:
    """Base of the fake services: start on an ephemeral port, route, inject faults, log requests."""

    def __init__(self) -> None:
        self.log: list[Request] = []
        self._faults: list[tuple[str, str | None, list[int]]] = []
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0  # 0: an ephemeral port

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeServer:
        httpd = _Server(("127.0.0.1", self.port), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_until_interrupted(self, port: int, message: str) -> None:
        """Command-line use: serve on ``port``, print ``message`` (``{url}`` filled in) until Ctrl-C."""
        self.port = port
        self.start()
        print(message.replace("{url}", self.url))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # faults ---------------------------------------------------------------------------------
    def fail_next(self, path_prefix: str, *statuses: int, method: str | None = None) -> None:
        """Answer the next requests under ``path_prefix`` with these statuses, in order."""
        with self._lock:
            self._faults.append((path_prefix, method, list(statuses)))

    def _fault(self, req: Request) -> Response | None:
        with self._lock:
            for prefix, method, statuses in self._faults:
                if statuses and req.path.startswith(prefix) and (method is None or method == req.method):
                    status = statuses.pop(0)
                    headers = {"Retry-After": "0"} if status == 429 else {}
                    resp = error_response(status, f"injected HTTP {status}")
                    resp.headers.update(headers)
                    return resp
        return None

    def dispatch(self, req: Request) -> Response:
        with self._lock:
            self.log.append(req)
        return self._fault(req) or self.handle(req)

    def handle(self, req: Request) -> Response:
        raise NotImplementedError

    def requests(self, path_prefix: str = "", method: str | None = None) -> Iterator[Request]:
        with self._lock:
            logged = list(self.log)
        return (r for r in logged if r.path.startswith(path_prefix) and (method is None or r.method == method))
