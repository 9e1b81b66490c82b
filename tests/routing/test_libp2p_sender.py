"""ProvideSender's bounds with a fake stream (issue 10, item 3: a peer that stops reading;
against real hosts in test_libp2p_trust.py)."""

from __future__ import annotations

from typing import Any

import trio

from spegel_py.routing.libp2p.limits import SendLimits
from spegel_py.routing.libp2p.streams import FAILURES_BEFORE_DISCONNECT, ProvideSender


class Stream:
    def __init__(self, host: Host) -> None:
        self.host = host

    async def write(self, data: bytes) -> None:
        if self.host.fail:
            raise RuntimeError("window full for 5 s")
        await self.host.reading.wait()
        self.host.received += len(data)

    async def reset(self) -> None:
        pass


class Host:
    def __init__(self) -> None:
        self.reading = trio.Event()
        self.received = 0
        self.fail = False
        self.streams = 0
        self.disconnected: list[Any] = []

    async def new_stream(self, peer: Any, protocols: Any) -> Stream:
        self.streams += 1
        return Stream(self)

    async def disconnect(self, peer: Any) -> None:
        self.disconnected.append(peer)


def run(test: Any) -> None:
    trio.run(test)


def test_past_max_pending_the_queue_is_dropped_and_everything_queued_again_once_the_peer_reads() -> None:
    async def main() -> None:
        host = Host()
        losses: list[int] = []
        sender = ProvideSender(
            host,  # type: ignore[arg-type]  # the fake has what the sender uses
            "peer",  # type: ignore[arg-type]
            "/p",  # type: ignore[arg-type]
            on_loss=lambda: losses.append(1),
            limits=SendLimits(max_pending=1000, stall_timeout=60),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            sender.enqueue(b"a" * 600)
            await trio.sleep(0.1)  # the writer took the 600 bytes and waits for the peer
            for _ in range(5):
                sender.enqueue(b"b" * 400)
            assert sender.pending() <= 1000 and sender.dropped_bytes > 0 and not losses
            host.reading.set()  # the peer reads again: all of it is queued again
            await trio.sleep(0.1)
            assert losses == [1] and host.disconnected == []
            sender.close()

    run(main)


def test_a_write_with_no_progress_or_failing_streams_disconnect_the_peer() -> None:
    async def stalled() -> None:
        host = Host()
        sender = ProvideSender(host, "peer", "/p", on_loss=lambda: None, limits=SendLimits(stall_timeout=0.2))  # type: ignore[arg-type]
        sender.enqueue(b"x" * 100)
        with trio.fail_after(5):
            await sender.run()
        assert host.disconnected == ["peer"] and sender.stalled and sender.pending() == 0

    async def failing() -> None:
        host = Host()
        host.fail = True
        sender = ProvideSender(host, "peer", "/p", on_loss=lambda: sender.enqueue(b"y"), limits=SendLimits())  # type: ignore[arg-type]
        sender.enqueue(b"x" * 100)
        with trio.fail_after(10):
            await sender.run()
        assert host.disconnected == ["peer"] and host.streams == FAILURES_BEFORE_DISCONNECT

    run(stalled)
    run(failing)
