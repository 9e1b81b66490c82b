"""One way to wait for a condition in a test: poll it until true, fail at a deadline.

Why one module: tests wait on observable conditions, never on sleeps as synchronisation. The
short pause between polls here is pacing, not synchronisation; the deadline only bounds a
failure, so it can be generous without slowing a passing test.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_WITHIN = 10.0  # seconds; conditions in this suite are met in milliseconds when all is well


class ConditionTimeout(AssertionError):
    """A polled condition was not met in time (an ``AssertionError``, so pytest reports a failure)."""


def _describe(check: object, what: str) -> str:
    return what or getattr(check, "__name__", repr(check))


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    within: float = DEFAULT_WITHIN,
    interval: float = 0.01,
    what: str = "",
) -> T:
    """Poll ``check`` (sync or async) until it returns something truthy, and return that value.

    Raises :class:`ConditionTimeout` naming ``what`` after ``within`` seconds. Exceptions from
    ``check`` propagate at once: a check that may fail until something is up must catch its own.
    """
    deadline = time.monotonic() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]  # truthy T, awaited if it was awaitable
        if time.monotonic() >= deadline:
            raise ConditionTimeout(f"condition not met within {within}s: {_describe(check, what)}")
        await asyncio.sleep(interval)


def wait_until(
    check: Callable[[], T],
    *,
    within: float = DEFAULT_WITHIN,
    interval: float = 0.05,
    what: str = "",
    diagnose: Callable[[], str] | None = None,
) -> T:
    """The blocking form of :func:`eventually` for synchronous tests and harness code.

    Exceptions from ``check`` count as "not yet" (a daemon refuses connections until it is up);
    the last one is named in the failure, with ``diagnose()`` (for example a log tail).
    """
    deadline = time.monotonic() + within
    last_exc: BaseException | None = None
    while True:
        try:
            value = check()
        except Exception as exc:
            value, last_exc = None, exc  # type: ignore[assignment]  # "not yet"
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc is not None else ""
            extra = f"\n{diagnose()}" if diagnose is not None else ""
            raise ConditionTimeout(
                f"condition not met within {within}s: {_describe(check, what)}{detail}{extra}"
            )
        time.sleep(interval)
