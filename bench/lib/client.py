"""A lean HTTP/1.1 GET load client: one process, one epoll loop, one reused receive buffer.

Why not curl or wrk: on 2 cores the client shares the CPU with the server under test, so it must
spend as little CPU per byte as possible and the same amount for every server. curl reads in
16 KiB pieces (about 130k read calls per second at 2 GB/s) and wrk parses every body byte; this
client does one ``recv_into`` of up to 1 MiB per readiness event into a buffer it never
reallocates, so its cost is the one unavoidable copy out of the socket plus a few microseconds
per call, whatever the server. Bodies are counted, not kept; ``--verify`` hashes them instead.

Run: ``python -m bench.lib.client --addr HOST:PORT --path /v2/... [--path ...] --concurrency N``
prints one JSON object (per-stream and aggregate results, the client's own CPU time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import select
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

BUF_SIZE = 1 << 20
HEADER_LIMIT = 64 << 10


@dataclass
class Stream:
    path: str
    sock: socket.socket | None = None
    status: int = 0
    length: int = -1
    received: int = 0  # body bytes
    header: bytearray = field(default_factory=bytearray)
    started: float = 0.0
    finished: float = 0.0
    hasher: hashlib._Hash | None = None
    digest: str = ""
    error: str = ""


def _request(host: str, path: str) -> bytes:
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: spegel-bench\r\nConnection: close\r\n\r\n"
    return head.encode()


def _parse_header(s: Stream) -> bytes | None:
    """Return body bytes that came with the header once it is complete, else None."""
    end = s.header.find(b"\r\n\r\n")
    if end < 0:
        if len(s.header) > HEADER_LIMIT:
            raise ValueError("response header too large")
        return None
    head = bytes(s.header[:end]).decode("latin-1").split("\r\n")
    s.status = int(head[0].split()[1])
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            s.length = int(value.strip())
    if s.length < 0:
        raise ValueError("no Content-Length in response")
    body = bytes(s.header[end + 4 :])
    s.header = bytearray()
    return body


def fetch(
    addr: str,
    paths: list[str],
    *,
    concurrency: int,
    verify: bool = False,
    discard: bool = False,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """GET every path, at most ``concurrency`` at once; return per-stream and total results.

    ``discard``: receive bodies with ``MSG_TRUNC``, which TCP honours by dropping the bytes
    without copying them, so the client costs almost nothing and the server's own limit shows.
    """
    body_flags = socket.MSG_TRUNC if discard and not verify else 0
    host, _, port = addr.rpartition(":")
    buf = bytearray(BUF_SIZE)
    view = memoryview(buf)
    pending = [Stream(p) for p in paths]
    streams: list[Stream] = []
    active: dict[int, Stream] = {}
    ep = select.epoll()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    deadline = t0 + timeout

    def start(s: Stream) -> None:
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.setblocking(False)
        s.sock = sock
        s.hasher = hashlib.sha256() if verify else None
        s.started = time.perf_counter()
        sock.sendall(_request(addr, s.path))  # tiny: fits the empty send buffer at once
        active[sock.fileno()] = s
        ep.register(sock.fileno(), select.EPOLLIN)
        streams.append(s)

    def finish(s: Stream, error: str = "") -> None:
        s.finished = time.perf_counter()
        s.error = error
        assert s.sock is not None
        ep.unregister(s.sock.fileno())
        del active[s.sock.fileno()]
        s.sock.close()
        if s.hasher is not None:
            s.digest = "sha256:" + s.hasher.hexdigest()

    # Open the first wave before sending anything else so the streams really run at once.
    while pending and len(active) < concurrency:
        start(pending.pop(0))
    try:
        while active:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{len(active)} streams still running after {timeout}s")
            for fd, _ev in ep.poll(1.0):
                s = active[fd]
                assert s.sock is not None
                try:
                    n = s.sock.recv_into(buf, BUF_SIZE, body_flags if s.length >= 0 else 0)
                except BlockingIOError:
                    continue
                if n == 0:
                    finish(s, "" if s.length == s.received else "connection closed early")
                    continue
                if s.length < 0:
                    s.header += view[:n]
                    body = _parse_header(s)
                    if body is None:
                        continue
                    s.received += len(body)
                    if s.hasher is not None:
                        s.hasher.update(body)
                else:
                    s.received += n
                    if s.hasher is not None:
                        s.hasher.update(view[:n])
                if s.received >= s.length:
                    finish(s, "" if s.received == s.length else "more body than Content-Length")
                    if pending:
                        start(pending.pop(0))
    finally:
        for s in list(active.values()):
            finish(s, "aborted")
        ep.close()
    t1 = time.perf_counter()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    total = sum(s.received for s in streams)
    return {
        "streams": [
            {
                "path": s.path,
                "status": s.status,
                "bytes": s.received,
                "seconds": s.finished - s.started,
                "digest": s.digest,
                "error": s.error,
            }
            for s in streams
        ],
        "bytes": total,
        "seconds": t1 - t0,
        "bytes_per_second": total / (t1 - t0),
        "client_cpu_seconds": (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime),
        "errors": [s.error or f"status {s.status}" for s in streams if s.error or s.status != 200],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", required=True, help="HOST:PORT")
    ap.add_argument("--path", action="append", required=True, help="URL path; repeat for more streams")
    ap.add_argument("--repeat", type=int, default=1, help="request the path list this many times")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--verify", action="store_true", help="sha256 every body (slower)")
    ap.add_argument("--discard", action="store_true", help="drop bodies in the kernel (MSG_TRUNC)")
    ap.add_argument("--timeout", type=float, default=300.0)
    a = ap.parse_args(argv)
    result = fetch(
        a.addr,
        a.path * a.repeat,
        concurrency=a.concurrency,
        verify=a.verify,
        discard=a.discard,
        timeout=a.timeout,
    )
    json.dump(result, sys.stdout)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
