"""A small local Kubernetes API server: the part the official ``kubernetes`` client calls to list
nodes (``GET /api/v1/nodes`` -> a ``NodeList``), with bearer-token auth the way the API server
answers it (401 ``Status`` without a valid token, 403 for a user who may not list nodes).

Hostile switches: ``status`` (answer every request with this HTTP status), ``slow_s`` (sleep
before answering). ``kubeconfig(path)`` writes a kubeconfig that points the client here.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "k8s"
TOKEN = "fake-k8s-token-7d1c0e5a9b"  # the kubeconfig's secret: it must never be printed


def node_list(name: str) -> dict[str, Any]:
    """A recorded NodeList from tests/fixtures/k8s/<name>.json."""
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return doc


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class FakeK8s:
    nodes: dict[str, Any] = field(default_factory=lambda: {"kind": "NodeList", "items": []})
    status: int | None = None
    slow_s: float = 0.0
    requests: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(self, path: Path, token: str = TOKEN, context: str = "test") -> Path:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "u"}}],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                if fake.slow_s:
                    time.sleep(fake.slow_s)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._send(401, _status(401, "Unauthorized", "Unauthorized"))
                    return
                if fake.status is not None:
                    self._send(
                        fake.status,
                        _status(
                            fake.status,
                            "Forbidden",
                            'nodes is forbidden: User "u" cannot list resource "nodes"',
                        ),
                    )
                    return
                if self.path.split("?")[0] != "/api/v1/nodes":
                    self._send(404, _status(404, "NotFound", "not found"))
                    return
                self._send(200, fake.nodes)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False  # a slow answer still sleeping must not hold up stop()

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the client gave up (a timeout test): not an error of the fake

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeK8s:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
