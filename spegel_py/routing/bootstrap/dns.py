"""DNS bootstrap: the A and AAAA records of a Kubernetes headless service.

A headless service's name resolves to the IPs of its ready pods. Like Spegel, at most ``limit``
addresses per family are taken, in sorted order, so that every node starts from the same few
peers (they become the rendezvous points of the DHT); the port is this node's router port
(Spegel assumes equal ports across the DaemonSet), and peer ids are learned on dial.

The system resolver (``getaddrinfo``: ``/etc/hosts``, then ``/etc/resolv.conf``, which points at
the cluster DNS in a pod) is the default; tests inject their own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

from spegel_py.errors import RoutingError
from spegel_py.routing.bootstrap._addr import tcp_multiaddr

Resolver = Callable[[str], Awaitable[list[str]]]


async def system_resolver(host: str) -> list[str]:
    """Every IP address ``host`` resolves to through the system resolver."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RoutingError(f"cannot resolve bootstrap domain {host!r}: {exc}") from exc
    return [str(info[4][0]) for info in infos]


class DNSBootstrapper:
    """Resolves ``domain`` on every call; ``port`` is the router port peers listen on."""

    def __init__(
        self, domain: str, *, port: int, limit: int = 3, resolver: Resolver = system_resolver
    ) -> None:
        self._domain = domain
        self._port = port
        self._limit = limit
        self._resolve = resolver

    async def peers(self) -> list[str]:
        ips = {ipaddress.ip_address(ip.split("%", 1)[0]) for ip in await self._resolve(self._domain)}
        v4 = sorted(ip for ip in ips if ip.version == 4)
        v6 = sorted(ip for ip in ips if ip.version == 6)
        chosen = v4[: self._limit] + v6[: self._limit]
        return [tcp_multiaddr(str(ip), self._port) for ip in chosen]
