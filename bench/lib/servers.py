"""The servers under test, each started in the foreground by us, in its own memory cgroup,
and stopped by its pid.

Both serve ``/v2/<repo>/blobs/sha256:<hex>`` from the same files: nginx maps the URL onto
``<layout>/blobs/sha256/<hex>`` with a regex ``alias``, so the client sends identical requests.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from bench.lib import proc
from bench.lib.cgroup import MemoryCgroup


def free_port(host: str) -> int:
    """A port that was free on ``host`` a moment ago (the server binds it right after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pin(argv: list[str], cpus: str) -> list[str]:
    """``argv`` confined to ``cpus`` (inherited by its threads and children); as is if empty."""
    return ["taskset", "-c", cpus, *argv] if cpus else argv


class Server:
    """A foreground server process in its own memory cgroup."""

    name = "server"

    def __init__(self, label: str, host: str, *, cpus: str = "") -> None:
        """``cpus``: a taskset CPU list every thread of the server is confined to ("" = any)."""
        self.label = label
        self.cpus = cpus
        self.host = host
        self.port = free_port(host)
        self.cgroup = MemoryCgroup(f"bench-{label}-{os.getpid()}")
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{label}-")
        self.popen: subprocess.Popen[bytes] | None = None
        self._log = open(os.path.join(self.tmp, "stderr.log"), "wb")  # closed in stop()

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready_path(self) -> str:
        return "/v2/"

    def start(self, *, timeout: float = 60.0) -> None:
        self.popen = subprocess.Popen(
            self.cgroup.wrap(pin(self.argv(), self.cpus)),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.popen.returncode}: {self.log_tail()}")
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
                conn.request("GET", self.ready_path())
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.label} not ready after {timeout}s: {self.log_tail()}")
            time.sleep(0.05)  # polling a condition with a deadline, not synchronising on a sleep

    def pids(self) -> list[int]:
        return proc.tree(self.pid)

    def cpu_seconds(self) -> float:
        return proc.cpu_seconds(self.pid)

    def log_tail(self, n: int = 2000) -> str:
        self._log.flush()
        with open(os.path.join(self.tmp, "stderr.log"), "rb") as f:
            return f.read()[-n:].decode(errors="replace")

    def stop(self, *, timeout: float = 10.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self._log.close()
        self.cgroup.remove()
        shutil.rmtree(self.tmp, ignore_errors=True)


NGINX_CONF = """\
# Written by bench/lib/servers.py: nginx's fast path for static files, as a reference.
daemon off;
master_process on;
worker_processes {workers};
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    aio off;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {host}:{port};
        location = /v2/ {{ return 200 "{{}}"; }}
        location ~ "^/v2/.+/blobs/sha256:([0-9a-f]{{64}})$" {{
            alias {blobs}/$1;
        }}
        location / {{ return 404; }}
    }}
}}
"""


class Nginx(Server):
    name = "nginx"

    def __init__(self, label: str, host: str, *, blobs_dir: str, workers: str = "1", cpus: str = "") -> None:
        super().__init__(label, host, cpus=cpus)
        self.workers = workers
        self.conf = os.path.join(self.tmp, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(
                NGINX_CONF.format(workers=workers, tmp=self.tmp, host=host, port=self.port, blobs=blobs_dir)
            )

    def argv(self) -> list[str]:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-p", self.tmp, "-c", self.conf, "-e", os.path.join(self.tmp, "error.log")]

    def start(self, *, timeout: float = 60.0) -> None:
        super().start(timeout=timeout)
        want = os.cpu_count() if self.workers == "auto" else int(self.workers)
        deadline = time.monotonic() + timeout
        while len(self.pids()) < 1 + (want or 1):  # workers are forked after the master listens
            if time.monotonic() > deadline:
                raise TimeoutError("nginx workers did not start")
            time.sleep(0.02)

    def stop(self, *, timeout: float = 10.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGQUIT)  # graceful: workers finish and exit first
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        super().stop(timeout=timeout)


class Spegel(Server):
    name = "spegel-py"

    def __init__(
        self, label: str, host: str, *, command: list[str], layout: str, extra: list[str], cpus: str = ""
    ) -> None:
        super().__init__(label, host, cpus=cpus)
        """``command``: how to invoke spegel-py (its console script, or an experiment wrapper)."""
        self.command, self.layout, self.extra = command, layout, extra
        self.metrics_port = free_port(host)

    def argv(self) -> list[str]:
        return [
            *self.command,
            "registry",
            "--content-store",
            "oci-layout",
            "--oci-layout-path",
            self.layout,
            "--registry-addr",
            self.addr,
            "--metrics-addr",
            f"{self.host}:{self.metrics_port}",
            *self.extra,
        ]


class AiohttpFileResponse(Server):
    """A 20-line aiohttp ``FileResponse`` server: a floor for any aiohttp-based blob server."""

    name = "aiohttp-fileresponse"

    def __init__(self, label: str, host: str, *, python: str, blobs_dir: str, cpus: str = "") -> None:
        super().__init__(label, host, cpus=cpus)
        self.python, self.blobs_dir = python, blobs_dir

    def argv(self) -> list[str]:
        return [self.python, "-m", "bench.lib.fileresponse", self.host, str(self.port), self.blobs_dir]
