"""A deterministic OpenAI-compatible chat server on localhost for the judge tests.

``reply(body, count)`` decides each answer from the request body and the number of requests so far; it returns
``(status, text)``, optionally with ``headers`` and a ``delay`` in seconds: ``{"status": 429, "text": "",
"headers": {"Retry-After": "3"}}``. ``text`` of a 200 becomes the assistant message.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[dict[str, Any], int], dict[str, Any]]


@contextmanager
def fake_chat_server(reply: Reply) -> Iterator[Any]:
    """Yields an object with ``url`` (the API base), ``requests`` (the bodies received, in order) and
    ``authorizations`` (their ``Authorization`` headers)."""
    requests: list[dict[str, Any]] = []
    authorizations: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            authorizations.append(self.headers.get("Authorization"))
            answer = reply(body, len(requests))
            time.sleep(answer.get("delay", 0))
            status = answer.get("status", 200)
            payload = (json.dumps({"choices": [{"message": {"role": "assistant", "content": answer["text"]}}]})
                       if status == 200 else answer.get("text", "error"))
            try:
                self.send_response(status)
                for key, value in answer.get("headers", {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield type("FakeServer", (), {"url": f"http://127.0.0.1:{server.server_address[1]}/v1",
                                      "requests": requests, "authorizations": authorizations})()
    finally:
        server.shutdown()
        server.server_close()
