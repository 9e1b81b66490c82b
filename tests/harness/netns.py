"""Network namespaces as separate "hosts" on a private bridge, for tests that need isolation.

Each namespace gets one veth interface with an address of a private 10.x subnet; the host ends
of the veths are enslaved to a bridge that has no address. So the subnet exists only inside the
namespaces created here: nothing in the host's namespace (nor anything outside the machine) can
be reached from them or reach them. Processes run inside with ``ip netns exec``; unix sockets
(containerd's gRPC socket) are files and still work across namespaces.

Names carry this process's pid and a counter so concurrent test runs never collide, and
everything is removed on :meth:`NetnsNetwork.destroy`, on context exit and at interpreter exit.
"""

from __future__ import annotations

import atexit
import itertools
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from support.poll import wait_until

from .procs import HarnessError, run_command

_counter = itertools.count()  # per-process uniqueness of interface names (not shared state of tests)


def _ip(*args: str) -> None:
    result = run_command(["ip", *args], timeout=30)
    if result.returncode != 0:
        raise HarnessError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def list_namespaces() -> set[str]:
    """Names of all network namespaces (``ip netns list``)."""
    out = run_command(["ip", "netns", "list"], timeout=30, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def link_exists(name: str) -> bool:
    return run_command(["ip", "link", "show", name], timeout=30).returncode == 0


@dataclass(frozen=True)
class Netns:
    """One namespace ("host"): its name and its address on the private subnet."""

    name: str
    ip: str
    host_veth: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a short command inside; output captured, never raises on exit status."""
        return run_command(self.argv(argv), timeout=timeout)


class NetnsNetwork:
    """A bridge plus namespaces attached to it with addresses ``<subnet>.<octet>/24``."""

    def __init__(self, *, subnet: str = "10.231.0") -> None:
        token = f"{os.getpid() % 100000}x{next(_counter)}"
        self.subnet = subnet
        self.bridge = f"spb{token}"
        self._prefix = token
        self.namespaces: list[Netns] = []
        self._created = False
        atexit.register(self.destroy)

    def __enter__(self) -> NetnsNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def add(self, octet: int) -> Netns:
        """Create namespace ``spn<token>-<octet>`` with address ``<subnet>.<octet>``."""
        if not self._created:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._created = True
            _ip("link", "set", self.bridge, "up")
        name = f"spn{self._prefix}-{octet}"
        host_veth = f"spv{self._prefix}{octet}"[:15]
        _ip("netns", "add", name)
        ns = Netns(name=name, ip=f"{self.subnet}.{octet}", host_veth=host_veth)
        self.namespaces.append(ns)
        _ip("link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("link", "set", host_veth, "master", self.bridge, "up")
        _ip("-n", name, "addr", "add", f"{ns.ip}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        return ns

    def destroy(self) -> None:
        """Remove every namespace (their veths go with them) and the bridge. Idempotent.

        Stop the processes running inside first: a namespace lives on while a process uses it.
        """
        existing = list_namespaces()
        veths = [ns.host_veth for ns in self.namespaces]
        for ns in self.namespaces:
            if ns.name in existing:
                _ip("netns", "del", ns.name)
        # deleting a namespace destroys its veth pair asynchronously; one still listed is removed
        # by hand, tolerating that the kernel got there first
        for veth in veths:
            if link_exists(veth):
                run_command(["ip", "link", "del", veth], timeout=30)
        wait_until(lambda: not any(link_exists(v) for v in veths), within=10, what=f"veths {veths} to go")
        self.namespaces.clear()
        if self._created and link_exists(self.bridge):
            _ip("link", "del", self.bridge)
        self._created = False
