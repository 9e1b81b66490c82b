"""The upstream registry of the local cluster: Debian's ``docker-registry`` (distribution 2.8).

It plays the role of docker.io or any real registry: node 1 pulls from it, then it is stopped to
prove that later pulls never need it. Every request it receives is counted from its access log
(one Apache-style line per request), so a test can assert "0 upstream requests" as a fact about
the upstream rather than about the client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from support.poll import wait_until

from .images import MT_INDEX, MT_MANIFEST, BuiltImage
from .net import free_port, http_status
from .netns import Netns
from .procs import HarnessError, ProcessGroup, log_tail, run_command

# 127.0.0.1 - - [23/Nov/2026:20:33:14 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_ACCESS = re.compile(
    r'^(\S+) - \S+ \[[^\]]+\] "([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3}) (\S+) "[^"]*" "([^"]*)"'
)

MANIFEST_TYPES = (
    MT_INDEX,
    MT_MANIFEST,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)

CONFIG = """\
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem: {{rootdirectory: {data}}}
  delete: {{enabled: true}}
  maintenance:
    uploadpurging: {{enabled: false}}
http:
  addr: {addr}
  secret: spegel-py-tests-not-a-secret
"""


@dataclass(frozen=True)
class Request:
    """One request the upstream answered (from its access log)."""

    method: str
    path: str
    status: int
    user_agent: str
    client: str = ""  # the client's address as the registry saw it
    size: int = 0  # response body bytes written (what a cut connection got, not what was asked)


class UpstreamRegistry:
    """A docker-registry process with its own config, data directory and log.

    ``start``/``stop`` can be called repeatedly; data survives a stop. The log is appended to
    across restarts, so :meth:`mark` / :meth:`requests` count across them too.
    """

    def __init__(
        self,
        workdir: Path,
        processes: ProcessGroup,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        name: str = "upstream",
        netns: Netns | None = None,
    ) -> None:
        self.workdir = workdir
        self.processes = processes
        self.netns = netns  # a "host" of its own: it listens on the namespace's address
        self.host = netns.ip if netns else host
        self.port = port or (5000 if netns else free_port(host))
        self.name = name
        self.data_dir = workdir / "data"
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"

    @property
    def addr(self) -> str:
        """``host:port``: also the registry part of image references (``127.0.0.1:PORT/test/small:v1``)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def ref(self, image: BuiltImage) -> str:
        """The reference a node pulls ``image`` by."""
        return f"{self.addr}/{image.repository()}:{image.tag}"

    def running(self) -> bool:
        return self.name in self.processes and self.processes.get(self.name).running()

    def start(self, *, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(CONFIG.format(data=self.data_dir, addr=self.addr))
        self.processes.start(
            self.name,
            ["docker-registry", "serve", str(self.config_path)],
            log_path=self.log_path,
            netns=self._netns_name,
        )
        wait_until(
            lambda: self._alive_and_answering(),
            within=timeout,
            what=f"upstream registry on {self.addr}",
            diagnose=lambda: log_tail(self.log_path),
        )

    @property
    def _netns_name(self) -> str | None:
        return self.netns.name if self.netns else None

    def _alive_and_answering(self) -> bool:
        self.processes.check_running(self.name)
        return http_status(f"{self.url}/v2/", netns=self._netns_name) == 200

    def stop(self) -> None:
        """Stop the process (by pid) and wait until the port refuses connections."""
        self.processes.stop(self.name)
        wait_until(
            lambda: http_status(f"{self.url}/v2/", timeout=0.5, netns=self._netns_name) == 0,
            within=10,
            what=f"{self.addr} to stop answering",
        )

    def push(self, image: BuiltImage, *, timeout: float = 300.0) -> str:
        """Push a layout (all platforms) with skopeo; return the pushed reference."""
        ref = self.ref(image)
        argv = [
            "skopeo",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            image.oci_ref,
            f"docker://{ref}",
        ]
        if self.netns is not None:
            argv = self.netns.argv(argv)
        result = run_command(argv, timeout=timeout)
        if result.returncode != 0:
            raise HarnessError(
                f"push of {image.kind} failed: {' '.join(argv)}\n{result.stderr}\n{log_tail(self.log_path)}"
            )
        return ref

    def has(self, image: BuiltImage) -> bool:
        """True if the upstream serves the image's tag (HEAD of its manifest)."""
        url = f"{self.url}/v2/{image.repository()}/manifests/{image.tag}"
        accept = {"Accept": ", ".join(MANIFEST_TYPES)}
        return http_status(url, method="HEAD", headers=accept, netns=self._netns_name) == 200

    # -- request accounting ------------------------------------------------------------------
    def mark(self) -> int:
        """A position in the access log; :meth:`requests` returns what came after it."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def requests(self, since: int = 0) -> list[Request]:
        """Requests logged after ``since`` (a :meth:`mark`).

        The registry writes an access line just after each response: stop it first when the
        count must be final (stopping waits for the process to exit, so its log is complete).
        """
        try:
            with self.log_path.open("rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            match = _ACCESS.match(line)
            if match:
                size = int(match[5]) if match[5].isdigit() else 0
                out.append(Request(match[2], match[3], int(match[4]), match[6], match[1], size))
        return out
