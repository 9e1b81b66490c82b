"""Process supervision: named background tasks, signals, and the one exception -> exit status map.

Every subcommand that runs until stopped goes through :func:`run`: its body gets a ``stop``
event that the first SIGTERM/SIGINT sets (drain and exit 0); a second signal cancels the body
(exit 130). Background tasks run under a :class:`Supervisor`: the first one to fail unexpectedly
sets ``stop`` as well, and the daemon exits 1. :func:`exit_status` is the single place where an
exception becomes an exit status and its one log line; ``run`` and the one-shot
``configuration`` subcommand (``spegel_py/app.py``) both use it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from spegel_py.errors import ConfigurationError, SpegelError, TaskFailedError

log = logging.getLogger(__name__)

# Exit statuses: 0 clean shutdown, 1 runtime failure, 2 bad configuration, 130 forced by a 2nd signal.
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_FORCED = 0, 1, 2, 130

Body = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class Supervisor:
    """Named background tasks; the first one to fail unexpectedly stops the daemon.

    A task that ends with an exception (not a cancellation) becomes :attr:`failure`, a
    :class:`TaskFailedError` naming it, and ``stop`` is set; later failures are ignored (they are
    usually consequences of the first). A task that returns normally just leaves.
    """

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failure: TaskFailedError | None = None

    @property
    def healthy(self) -> bool:
        """False from the moment a task failed (before the daemon has begun to shut down)."""
        return self.failure is None

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as the task ``name`` (the name is what a failure reports)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.failure is None:
            self.failure = TaskFailedError(task.get_name(), exc)
            self._stop.set()

    async def close(self, grace: float) -> None:
        """Cancel what is still running and wait up to ``grace`` seconds for it to finish."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)


def exit_status(exc: BaseException) -> int:
    """The exit status for ``exc``, after logging it as one JSON line (with a traceback for a bug)."""
    if isinstance(exc, ConfigurationError):
        log.error("configuration error", extra={"error": str(exc)})
        return EXIT_CONFIG
    extra: dict[str, str] = {}
    cause: BaseException | None = exc
    if isinstance(exc, TaskFailedError):
        extra["task"] = exc.task
        cause = exc.__cause__
    if isinstance(cause, SpegelError):
        log.error("stopped on error", extra={**extra, "error": str(exc)})
    else:  # a bug: its traceback goes into the line's "error"
        log.error("crashed", extra=extra, exc_info=cause)
    return EXIT_FAILURE


async def until_signalled(body: Body) -> int:
    """Run ``body(stop)``: the first SIGTERM/SIGINT sets ``stop``, a second cancels ``body``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.info("signal received, draining", extra={"signal": signal.Signals(signum).name})
            stop.set()
        elif main is not None:
            log.warning("second signal, forcing exit", extra={"signal": signal.Signals(signum).name})
            main.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await body(stop)
    except asyncio.CancelledError:
        return EXIT_FORCED
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return EXIT_OK


def run(body: Body) -> int:
    """Run a daemon body to completion on a new event loop; returns the process exit status."""
    try:
        return asyncio.run(until_signalled(body))
    except Exception as exc:
        return exit_status(exc)
