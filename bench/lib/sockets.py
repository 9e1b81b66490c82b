"""Established TCP connections of a process on one port, read from /proc (no psutil needed).

A socket belongs to a process when ``/proc/<pid>/fd`` holds ``socket:[<inode>]``; the kernel's
``/proc/net/tcp`` and ``tcp6`` tables (of the network namespace we run in, which is the nodes'
one) give each inode's addresses and state. A connection counts as *inbound* when its local port
is the given port and as *outbound* when its remote port is, so the two ends of one node-to-node
connection are charged to their own processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_ESTABLISHED = "01"


@dataclass(frozen=True)
class Conns:
    inbound: int
    outbound: int
    remote_ips: int  # distinct remote IPs among them (only meaningful if dials bind the node's IP)

    @property
    def total(self) -> int:
        return self.inbound + self.outbound


def _socket_inodes(pid: int) -> set[str]:
    out: set[str] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _split(addr: str) -> tuple[str, int]:
    host, port = addr.split(":")
    return host, int(port, 16)


def _established() -> dict[str, tuple[tuple[str, int], tuple[str, int]]]:
    """inode -> (local, remote) of every established TCP connection (addresses as hex text)."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _ESTABLISHED:
                out[fields[9]] = (_split(fields[1]), _split(fields[2]))
    return out


def connections(pids: list[int], port: int) -> dict[int, Conns]:
    """Per pid: its established connections on ``port`` (accepted there, or dialled to it)."""
    table = _established()
    result = {}
    for pid in pids:
        inbound = outbound = 0
        remotes: set[str] = set()
        for inode in _socket_inodes(pid):
            ends = table.get(inode)
            if ends is None:
                continue
            (_, lport), (rhost, rport) = ends
            if lport == port:
                inbound += 1
                remotes.add(rhost)
            elif rport == port:
                outbound += 1
                remotes.add(rhost)
        result[pid] = Conns(inbound, outbound, len(remotes))
    return result
