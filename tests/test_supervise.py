"""Supervision: the first failed task stops the daemon, signals drain or force, and every
exception becomes its exit status in one place (:func:`spegel_py.supervise.exit_status`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest
from support.poll import eventually

from spegel_py.errors import ConfigurationError, RoutingError, StoreUnavailableError, TaskFailedError
from spegel_py.supervise import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_FORCED,
    EXIT_OK,
    Supervisor,
    exit_status,
    run,
)


@pytest.mark.parametrize(
    ("exc", "status", "message", "task"),
    [
        (ConfigurationError("cannot listen on :5000"), EXIT_CONFIG, "configuration error", None),
        (StoreUnavailableError("containerd down"), EXIT_FAILURE, "stopped on error", None),
        (TaskFailedError("router", RoutingError("stopped")), EXIT_FAILURE, "stopped on error", "router"),
        (ValueError("a bug"), EXIT_FAILURE, "crashed", None),
        (TaskFailedError("advertiser", KeyError("a bug")), EXIT_FAILURE, "crashed", "advertiser"),
    ],
    ids=["configuration", "spegel-error", "task-failed", "bug", "task-bug"],
)
def test_exit_status_logs_one_line(
    caplog: pytest.LogCaptureFixture, exc: BaseException, status: int, message: str, task: str | None
) -> None:
    with caplog.at_level(logging.INFO, logger="spegel_py.supervise"):
        assert exit_status(exc) == status
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.getMessage() == message
    assert getattr(record, "task", None) == task
    if message == "crashed":
        assert record.exc_info is not None  # the bug's traceback goes with the line
    else:
        assert record.error == str(exc)  # type: ignore[attr-defined]  # an extra= field


def test_task_failed_error_names_the_task_and_keeps_the_cause() -> None:
    cause = RoutingError("router stopped: RuntimeError('x')")
    error = TaskFailedError("router", cause)
    assert str(error) == "task router failed: router stopped: RuntimeError('x')"
    assert error.task == "router" and error.__cause__ is cause
    assert str(TaskFailedError("advertiser", KeyError("k"))) == "task advertiser failed: KeyError('k')"


async def test_the_first_failure_stops_and_later_ones_are_ignored() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop)
    first, second = asyncio.Event(), asyncio.Event()

    async def fail(after: asyncio.Event, exc: Exception) -> None:
        await after.wait()
        raise exc

    supervisor.spawn("one", fail(first, RoutingError("first")))
    supervisor.spawn("two", fail(second, RuntimeError("second")))
    assert supervisor.healthy
    first.set()
    await eventually(stop.is_set, what="stop set by the failure")
    assert not supervisor.healthy
    second.set()
    await supervisor.close(grace=5)
    assert supervisor.failure is not None and supervisor.failure.task == "one"
    assert isinstance(supervisor.failure.__cause__, RoutingError)


async def test_returning_or_cancelled_tasks_are_not_failures() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop)
    done = supervisor.spawn("done", asyncio.sleep(0))
    forever = supervisor.spawn("forever", asyncio.Event().wait())
    await done
    await supervisor.close(grace=5)
    assert forever.cancelled()
    assert supervisor.failure is None and not stop.is_set() and supervisor.healthy


def test_run_maps_a_body_that_raises() -> None:
    async def body(stop: asyncio.Event) -> None:
        raise ConfigurationError("cannot listen")

    assert run(body) == EXIT_CONFIG


def test_first_signal_sets_stop_and_the_body_ends_cleanly() -> None:
    async def body(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await stop.wait()

    assert run(body) == EXIT_OK


def test_second_signal_cancels_the_body() -> None:
    async def body(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await stop.wait()
        os.kill(os.getpid(), signal.SIGINT)  # the body keeps draining: the second one forces
        await asyncio.Event().wait()

    assert run(body) == EXIT_FORCED
