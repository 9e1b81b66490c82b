"""The gRPC channel to containerd and the one place grpc errors become spegel-py errors.

containerd restarts (upgrades, node maintenance) must never crash spegel-py or hang a request:
every unary call carries a deadline, the channel redials with a short, bounded backoff, and any
failure other than "not found" is reported as :class:`StoreUnavailableError`.
"""

from __future__ import annotations

import os
import re

import grpc

from spegel_py.errors import ConfigurationError, NotFoundError, SpegelError, StoreUnavailableError

NAMESPACE_KEY = "containerd-namespace"  # containerd reads the namespace from this gRPC metadata key
# containerd's own namespace grammar; checking it here also makes quoting it into filters safe
_NAMESPACE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")

# grpc's default reconnect backoff grows to 120 s; a restarted containerd must be found in ~1 s.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),  # retries would stretch a call past its deadline's intent
    # Images.List answers in one message; grpc's 4 MiB default is ~15k images with CRI's labels
    ("grpc.max_receive_message_length", 64 << 20),
]


def validate_namespace(namespace: str) -> str:
    if len(namespace) > 76 or not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(f"invalid containerd namespace {namespace!r}")
    return namespace


def open_channel(socket: str) -> grpc.aio.Channel:
    """An insecure channel to a unix socket (created inside the running event loop)."""
    return grpc.aio.insecure_channel(f"unix://{os.path.abspath(socket)}", options=_CHANNEL_OPTIONS)


def translate(exc: grpc.aio.AioRpcError, not_found: type[NotFoundError], what: str) -> SpegelError:
    """Map a failed call: ``NOT_FOUND`` -> ``not_found``; anything else -> unavailable."""
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return not_found(f"{what} not found")
    return StoreUnavailableError(f"containerd: {what}: {code.name}: {exc.details()}")
