"""Helpers shared by the libp2p router tests (a plain module: test modules import it, never each other)."""

from __future__ import annotations

from collections.abc import Callable


class ScriptedBootstrap:
    """A bootstrapper whose every answer comes from ``answer(call number)``: a list of multiaddrs,
    or an exception to raise (how a failing bootstrap source looks to the router)."""

    def __init__(self, answer: Callable[[int], list[str] | BaseException]) -> None:
        self._answer = answer
        self.calls = 0

    async def peers(self) -> list[str]:
        self.calls += 1
        result = self._answer(self.calls)
        if isinstance(result, BaseException):
            raise result
        return result


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, exception groups (trio nurseries raise them) flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


class Clock:
    """A settable monotonic clock (``now`` seconds), for stores and books that take ``clock``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
