"""One large blob relayed from several providers at once, delivered to the client in order.

Why: a single provider's link caps a pull at that link's rate, while during a rollout several
nodes hold (or are fetching) the same layer (issue 12, item 3). For a blob of at least
``MirrorSettings.multi_peer_min_size`` whose answer is the whole blob, the mirror hands this
stream the race winner's open answer; when a second provider is known within
``multi_peer_wait``, the blob is cut into pieces (:mod:`.pieces`) fetched in parallel by one
:class:`~spegel_py.relay.rangeworker.RangeWorker` per provider (up to
``multi_peer_providers``), and the client gets the bytes in blob order, one relay buffer at a
time, as soon as the head piece has them. Otherwise (no second provider, or the relay pool
cannot spare the buffers) it is the single-provider stream of :mod:`.stream`, unchanged.

What still holds, as for one provider:
- memory: the pieces fetched ahead of the client wait in buffers of the relay pool
  (:mod:`.bufferpool`), at most ``multi_peer_buffers`` per fetch, taken without waiting and
  only while a quarter of the pool stays free; they all go back when the response ends;
- verification: every byte is hashed in blob order (:mod:`.hashing`) and the last buffer's
  bytes are held back until the whole blob's digest matches; on a mismatch the client
  connection is cut, so no client receives a complete wrong body; a digest cannot say which
  piece was wrong, so no provider is blamed (unless only one sent bytes) and the blob is then
  fetched one provider at a time for a while, where a mismatch names its sender
  (:meth:`~spegel_py.relay.peerhealth.PeerReporter.corrupted_together`);
- floors (:mod:`.floor`): each provider's reads must stay above the throughput floor and the
  stall bound (else its piece goes to another provider), and the whole response must end by
  the deadline derived from the size;
- a provider that fails hands its piece on; when no provider is left and none is found within
  ``resume_deadline``, the client connection is cut (it retries, or goes upstream).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from spegel_py.errors import IntegrityError, ResumeFailedError, StreamDeadlineError
from spegel_py.httpx.answers import BodyHead
from spegel_py.relay.clientwrite import Write, client_writer, forward
from spegel_py.relay.floor import StreamFloor
from spegel_py.relay.hedging import Providers
from spegel_py.relay.pieces import Plan
from spegel_py.relay.rangeworker import Fetch, RangeWorker
from spegel_py.relay.sockio import ResponseSink
from spegel_py.relay.stream import BlobStream, StreamContext, StreamStart
from spegel_py.routing.base import Peer

_RECRUIT_RECHECK = 0.1  # seconds between looks for providers while the lookup is quiet


def wants_multi(context: StreamContext, key: str, size: int) -> bool:
    """True when a whole blob of ``size`` bytes should be offered to several providers (not
    while ``key`` is fetched one provider at a time after a mismatch, see :mod:`.peerhealth`)."""
    settings = context.settings
    if not settings.multi_peer_fetch or settings.multi_peer_providers < 2:
        return False
    return size >= settings.multi_peer_min_size and not context.reporter.one_at_a_time(key)


class MultiStream:
    """A large blob whose first answer came from ``start.peer``; :meth:`respond` relays it from
    several providers when it can, else as a :class:`~spegel_py.relay.stream.BlobStream`."""

    def __init__(self, context: StreamContext, start: StreamStart) -> None:
        assert start.response.content_length is not None  # checked by the attempt that won
        self._context = context
        self._start: StreamStart | None = start
        self._total = start.response.content_length
        self._buffers: list[memoryview] = []
        self._workers: dict[asyncio.Task[None], RangeWorker] = {}

    async def aclose(self) -> None:
        """Release the first answer, every buffer and the lookup. Idempotent."""
        start, self._start = self._start, None
        if start is not None:
            start.response.release()
            self._buffers.append(start.buffer)
            await start.providers.aclose()
        buffers, self._buffers = self._buffers, []
        for buf in buffers:
            self._context.pool.release(buf)

    async def respond(self, request: web.BaseRequest, head: BodyHead) -> web.StreamResponse:
        """Relay bytes ``[head.start, head.end)`` of the blob in a response with ``head``."""
        start = self._start
        assert start is not None
        context = self._context
        try:
            plan = await self._plan(start)
            if plan is None:
                self._start = None  # the single-provider stream owns the answer, buffer and lookup now
                return await BlobStream(context, start).respond(request, head)
            fetch = Fetch(plan, context.client, context.settings, context.reporter, context.stats,
                          start.target, start.digest, start.providers.key)  # fmt: skip
            response = head.response()
            await response.prepare(request)
            sink = ResponseSink(request, response)
            floor = StreamFloor(context.settings, self._total)
            recruiter = asyncio.create_task(self._recruit(fetch, start), name=f"recruit {start.digest}")
            try:
                async with client_writer(sink, floor, context.settings.stall_timeout) as write:
                    await self._deliver(plan, floor, head, write)
                    context.stats.multi_fetch("complete")
            except (IntegrityError, ResumeFailedError, StreamDeadlineError, ConnectionError) as exc:
                # The client connection is gone or was cut on purpose: it sees a short body.
                if isinstance(exc, StreamDeadlineError):
                    context.stats.deadline_cut()
                elif isinstance(exc, ResumeFailedError):
                    context.stats.resume_failed()
                context.stats.multi_fetch("failed")
                sink.abort()
                return response
            except BaseException:
                context.stats.multi_fetch("failed")
                sink.abort()
                raise
            finally:
                context.stats.relayed(sink.sent)  # before anything yields: the client may be done
                recruiter.cancel()
                await asyncio.wait({recruiter})
                await self._stop_workers()
            await response.write_eof()
            return response
        finally:
            await self.aclose()

    async def _plan(self, start: StreamStart) -> Plan | None:
        """The plan over the buffers this fetch may take, or ``None`` for one provider: no
        second provider known within ``multi_peer_wait``, or too few buffers to spare."""
        settings, pool = self._context.settings, self._context.pool
        piece_buffers = max(1, -(-settings.multi_peer_range_size // len(start.buffer)))
        providers = start.providers
        providers.rewind(exclude=set())
        second = _other(providers, start.peer)
        if second is None and not providers.done:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.multi_peer_wait):
                    await providers.wait()
            second = _other(providers, start.peer)
        # Offered again from the first: to the recruiter, or to the single stream's resumes.
        providers.rewind(exclude=set())
        if second is None:
            return None
        want = min(settings.multi_peer_buffers, (settings.multi_peer_providers + 1) * piece_buffers)
        self._buffers = pool.take_spare(want - 1, keep_free=pool.capacity // 4)
        if len(self._buffers) + 1 < 2 * piece_buffers:  # not even two pieces in flight
            for buf in self._buffers:
                pool.release(buf)
            self._buffers = []
            return None
        return Plan(self._total, [start.buffer, *self._buffers], piece_buffers)

    async def _recruit(self, fetch: Fetch, start: StreamStart) -> None:
        """Start a worker for the winner, then for each further provider (up to
        ``multi_peer_providers``) as the lookup finds them; fail the plan when no worker is left
        and no provider turns up within ``resume_deadline``."""
        settings, plan, providers = fetch.settings, fetch.plan, start.providers
        loop = asyncio.get_running_loop()
        self._spawn(RangeWorker(fetch, start.peer, start.response))
        used: set[Peer] = {start.peer}
        idle_since: float | None = None
        while not plan.all_fetched:
            alive = sum(1 for task in self._workers if not task.done())
            if alive < settings.multi_peer_providers:
                peer = providers.take()
                if peer is not None:
                    if peer not in used:
                        used.add(peer)
                        self._spawn(RangeWorker(fetch, peer))
                    continue
            if alive:
                idle_since = None
            else:
                idle_since = loop.time() if idle_since is None else idle_since
                if loop.time() - idle_since >= settings.resume_deadline:
                    plan.fail(ResumeFailedError(f"no provider left to fetch {start.digest}"))
                    return
            wanted = alive < settings.multi_peer_providers and not providers.done
            await self._wait_for_news(plan, providers.wait() if wanted else None)

    async def _wait_for_news(self, plan: Plan, provider: Coroutine[Any, Any, None] | None) -> None:
        """Until the plan changes, the lookup yields a provider, or a short recheck interval."""
        waits: set[asyncio.Task[None]] = {asyncio.create_task(plan.changed())}
        if provider is not None:
            waits.add(asyncio.create_task(provider))
        try:
            await asyncio.wait(waits, timeout=_RECRUIT_RECHECK, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.wait(waits)

    def _spawn(self, worker: RangeWorker) -> None:
        task = asyncio.create_task(worker.run(), name=f"range worker {worker.peer.host}:{worker.peer.port}")
        self._workers[task] = worker

    async def _stop_workers(self) -> None:
        """Cancel the workers and wait until none can write into a buffer any more."""
        for task in self._workers:
            task.cancel()
        if self._workers:
            await asyncio.wait(self._workers)

    async def _deliver(self, plan: Plan, floor: StreamFloor, head: BodyHead, write: Write) -> None:
        """Hash every byte in order and write ``[head.start, head.end)`` of it, the last bytes
        only once the digest matched."""
        assert self._start is not None
        digest = self._start.digest
        hasher = self._context.hashing.hasher(digest)
        pos, held, start, end = 0, b"", head.start, head.end
        hashing: memoryview | None = None  # the buffer the hashing thread may still read
        try:
            async with asyncio.timeout_at(floor.deadline):
                while pos < self._total:
                    chunk, buf = await plan.next_chunk()
                    await hasher.update(chunk)
                    if hashing is not None:
                        plan.release(hashing)  # its hash finished when update() returned
                    hashing = buf
                    held = await forward(write, chunk, pos, start, end) or held
                    pos += len(chunk)
                ok = await hasher.hexdigest() == digest.hex
        except TimeoutError as exc:
            raise StreamDeadlineError("relayed body exceeded its deadline") from exc
        if hashing is not None:
            plan.release(hashing)
        if not ok:
            self._context.stats.stream_corrupt()
            senders = [w.peer for w in self._workers.values() if w.contributed]
            self._context.reporter.corrupted_together(self._start.providers.key, senders)
            raise IntegrityError(f"relayed bytes do not match {digest}")
        await write(memoryview(held))


def _other(providers: Providers, peer: Peer) -> Peer | None:
    """The next usable provider found so far that is not ``peer``."""
    while (other := providers.take()) is not None:
        if other != peer:
            return other
    return None
