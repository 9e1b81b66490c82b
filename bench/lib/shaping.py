"""A link-rate limit on one loopback source address, so a "peer" on 127.0.0.x behaves like a node
behind a NIC while every other loopback hop stays at memory speed.

Why: on loopback a peer's bytes arrive as fast as two shared cores can copy them, so a relay that
hashes every byte (sha256, ~0.7 s of CPU per GiB here) is measured against a wire that does not
exist in a cluster. Between nodes the wire is a NIC (10-25 Gbit/s); between containerd and its
node's spegel-py it is loopback. Shaping only the packets whose *source* is the peer's address
models exactly that: peer -> client and peer -> relay cross the "NIC", relay -> client does not.

How: an ``htb`` root qdisc on ``lo`` whose default class does not exist, so unclassified traffic
bypasses it (HTB's direct queue), one class at ``rate``, and a u32 filter sending ``src <peer>/32``
into it. (``prio``, ``netem`` and ``fq`` are not built into this machine's kernel; ``htb``, ``tbf``
and ``u32`` are.) Removed on exit (and at interpreter exit).
"""

from __future__ import annotations

import atexit
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


def _tc(*args: str, check: bool = True) -> None:
    out = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} failed: {out.stderr.strip()}")


def _remove() -> None:
    _tc("qdisc", "del", "dev", "lo", "root", check=False)


@contextmanager
def shaped_source(src_ip: str, rate: str, *, burst: str = "1mb") -> Iterator[None]:
    """Limit packets from ``src_ip`` on ``lo`` to ``rate`` (tc syntax: ``10gbit``) inside the block."""
    with shaped_sources([src_ip], rate, burst=burst):
        yield


@contextmanager
def shaped_sources(src_ips: list[str], rate: str, *, burst: str = "1mb") -> Iterator[None]:
    """Limit the packets from each of ``src_ips`` on ``lo`` to ``rate`` of its own (one NIC per
    address: several peers, each behind its own link) inside the block."""
    _tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "r2q", "1000")
    atexit.register(_remove)
    try:
        for i, src_ip in enumerate(src_ips, start=1):
            _tc("class", "add", "dev", "lo", "parent", "1:", "classid", f"1:{i}", "htb",
                "rate", rate, "burst", burst, "cburst", burst)
            _tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1",
                "u32", "match", "ip", "src", f"{src_ip}/32", "flowid", f"1:{i}")
        yield
    finally:
        _remove()
        atexit.unregister(_remove)


def cap_device(dev: str, rate: str, *, netns: str | None = None, burst: str = "256k") -> None:
    """Cap everything ``dev`` sends (its egress) at ``rate``: an ``htb`` root whose default class
    is the capped one. On a veth pair, capping both ends caps both directions of the "cable".

    The burst must cover one GSO super-packet (up to 64 KiB on a veth) or htb stalls on it.
    Removed with the device (a namespace's veth goes when the namespace is deleted).
    """
    pre = ["-n", netns] if netns else []
    _tc(*pre, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1")
    _tc(*pre, "class", "replace", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
        "rate", rate, "burst", burst, "cburst", burst)
