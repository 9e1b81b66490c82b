"""A slow link to the upstream registry for one node: a proxy that sends blob bodies at a set rate.

A pull that takes seconds per layer leaves its layers in containerd's ingest for that long, so
a test can have another node pull the same image meanwhile, with real pulls on both sides. The
proxy forwards ``GET`` and ``HEAD`` to the upstream and copies the answer; only ``/blobs/``
bodies are paced (manifests stay fast). It runs in a thread of the test process, on loopback.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPResponse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_FORWARDED = ("Accept", "Range")  # request headers a registry client's fetch depends on
_RETURNED = ("Content-Type", "Content-Length", "Content-Range", "Docker-Content-Digest",
             "Docker-Distribution-Api-Version", "Accept-Ranges", "Etag")  # fmt: skip
_CHUNK = 32 * 1024


class ThrottledProxy:
    """``http://<ip>:<port>`` in front of ``upstream_url``; blob bodies at ``rate`` bytes/s."""

    def __init__(self, upstream_url: str, *, rate: int, ip: str = "127.0.0.1") -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # http.server's naming
                proxy.forward(self, "GET")

            def do_HEAD(self) -> None:  # http.server's naming
                proxy.forward(self, "HEAD")

            def log_message(self, format: str, *args: object) -> None:
                return None  # the upstream logs every request already

        self.upstream_url = upstream_url.rstrip("/")
        self.rate = rate
        self.server = ThreadingHTTPServer((ip, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="throttled-proxy", daemon=True)

    @property
    def addr(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> ThrottledProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def forward(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        headers = {k: v for k in _FORWARDED if (v := handler.headers.get(k)) is not None}
        request = urllib.request.Request(self.upstream_url + handler.path, headers=headers, method=method)
        try:
            response: HTTPResponse = urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as exc:
            response = exc  # type: ignore[assignment]  # an HTTPError is a response too
        with response:
            handler.send_response(response.status)
            for name in _RETURNED:
                value = response.headers.get(name)
                if value is not None:
                    handler.send_header(name, value)
            handler.end_headers()
            if method == "HEAD":
                return
            paced = "/blobs/" in handler.path
            started, sent = time.monotonic(), 0
            try:
                while chunk := response.read(_CHUNK):
                    handler.wfile.write(chunk)
                    sent += len(chunk)
                    if paced:  # the pacing of a slow link, not a test's synchronisation
                        time.sleep(max(0.0, started + sent / self.rate - time.monotonic()))
            except (BrokenPipeError, ConnectionResetError):
                return
