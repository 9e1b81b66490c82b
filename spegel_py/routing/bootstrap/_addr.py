"""Multiaddr text for bootstrap addresses, without pulling a multiaddr library into this layer."""

from __future__ import annotations

import ipaddress

from spegel_py.errors import ConfigurationError


def tcp_multiaddr(ip: str, port: int) -> str:
    """``/ip4/<ip>/tcp/<port>`` or ``/ip6/<ip>/tcp/<port>``; the peer id is learned on dial."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])  # a zone (fe80::1%eth0) is not dialable here
    except ValueError as exc:
        raise ConfigurationError(f"not an IP address: {ip!r}") from exc
    family = "ip4" if addr.version == 4 else "ip6"
    return f"/{family}/{addr.compressed}/tcp/{port}"


def check_multiaddr(value: str) -> str:
    """Light validation of a multiaddr string: ``/proto/value`` pairs with a transport.

    The router parses it fully; this catches operator typos (a bare ``host:port``) at start-up.
    """
    parts = value.strip().split("/")
    if len(parts) < 5 or parts[0] != "" or parts[1] not in ("ip4", "ip6", "dns", "dns4", "dns6"):
        raise ConfigurationError(f"invalid multiaddr {value!r}: want /ip4/<ip>/tcp/<port>[/p2p/<id>]")
    if parts[3] != "tcp" or not parts[4].isdigit():
        raise ConfigurationError(f"invalid multiaddr {value!r}: only tcp transports are dialable")
    return value.strip()
