"""Small network helpers: free ports on a loopback address, HTTP probes (also inside a netns)."""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping

from .procs import run_command


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now (the kernel picks it).

    There is a small window before the caller binds it; daemons that fail to bind show it in
    their log and the readiness wait names them.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_status(
    url: str,
    *,
    netns: str | None = None,
    timeout: float = 2.0,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> int:
    """HTTP status of ``url`` (0 when nothing answers), from inside ``netns`` if given.

    Inside a namespace the probe is curl run with ``ip netns exec``, since this process's
    sockets live in the host's namespace.
    """
    if netns is not None:
        argv = [
            "ip",
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            method,
            "--max-time",
            str(timeout),
            url,
        ]
        for key, value in (headers or {}).items():
            argv += ["-H", f"{key}: {value}"]
        if method == "HEAD":
            argv[argv.index("-X")] = "-I"
            argv.remove("HEAD")
        try:
            out = run_command(argv, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            return 0
        return int(out.stdout.strip() or 0)
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0
