"""One provider's share of a multi-provider fetch: claim a piece, ask for its range, read it.

Why its own module: :mod:`.multistream` runs one :class:`RangeWorker` per provider and only
watches them; everything that concerns one provider lives here. A worker asks for exactly the
piece's bytes (``Range: bytes=a-b``, so the kept-alive connection is reused for the next piece),
except that the provider that won the race keeps reading its open whole-blob answer while the
next piece to claim starts where that answer stands. Reads are batched (about 128 KiB per
wake-up, see :meth:`~spegel_py.relay.peerclient.PeerResponse.readinto`). Each worker's reads are
held to the floor of :mod:`.floor` (stall bound, throughput window); a provider that fails,
stalls or falls below it is reported to peer health and leaves the fetch, and its piece, with
the bytes it has, goes to
another provider (:meth:`~spegel_py.relay.pieces.Plan.disown`). A provider that is merely slow
is taken off the head piece by an idle, faster one (:meth:`RangeWorker.try_steal`); it stays in
the fetch for other pieces.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from spegel_py.errors import PeerCorruptError, PeerError, PeerMissError, StreamDeadlineError
from spegel_py.httpx.headers import DIGEST_HEADER, MIRRORED_HEADER
from spegel_py.oci.digest import Digest
from spegel_py.relay.floor import StreamFloor
from spegel_py.relay.peerclient import PeerClient, PeerResponse
from spegel_py.relay.peerhealth import PeerReporter
from spegel_py.relay.pieces import Piece, Plan
from spegel_py.relay.settings import MirrorSettings
from spegel_py.relay.stats import RelayStats
from spegel_py.routing.base import Peer

# A worker is judged slow only after this long on its piece, and only against one at least
# twice as fast: equal providers never take pieces off each other.
_JUDGE_AFTER = 0.25  # seconds
_SLOWER_BY = 2.0
# A worker's reads come in batches of about this many bytes (peerclient.PeerResponse.readinto).
_BATCH = 128 << 10
# An idle worker looks again this often whether the head piece's worker has become slow.
_IDLE_RECHECK = 0.1  # seconds


@dataclass(frozen=True, slots=True)
class Fetch:
    """What the workers of one multi-provider fetch share."""

    plan: Plan
    client: PeerClient
    settings: MirrorSettings
    reporter: PeerReporter
    stats: RelayStats
    target: str  # the request target, asked with Range
    digest: Digest
    key: str  # the router key, for peer health


class RangeWorker:
    """Fetches pieces of ``fetch.plan`` from ``peer`` until the blob is fetched or it fails.

    ``response``: the provider's open whole-blob answer, not read yet (the race winner), or
    ``None``. After :meth:`run` returns, :attr:`error` says why the provider left (``None``:
    the work ran out).
    """

    def __init__(self, fetch: Fetch, peer: Peer, response: PeerResponse | None = None) -> None:
        self.peer = peer
        self._fetch = fetch
        self._resp = response
        self._resp_at = 0  # the blob offset ``_resp``'s next body byte belongs to
        self._floor = StreamFloor(fetch.settings, fetch.plan.total)
        self._loop = asyncio.get_running_loop()
        self.piece: Piece | None = None
        self._reading: asyncio.Task[None] | None = None
        self._taken_off = False
        self.error: BaseException | None = None
        self.contributed = 0  # bytes of the blob this provider sent
        self._busy = 0.0  # seconds spent on finished pieces
        self._busy_bytes = 0
        self._piece_since = 0.0  # loop time this worker started on its current piece
        self._piece_bytes = 0

    @property
    def rate(self) -> float | None:
        """Bytes per second over the pieces this worker finished (``None``: none yet)."""
        return self._busy_bytes / self._busy if self._busy > 0 and self._busy_bytes else None

    def current_rate(self) -> float | None:
        """Bytes per second on its current piece, once it has been at it long enough to judge."""
        elapsed = self._loop.time() - self._piece_since
        if self.piece is None or elapsed < _JUDGE_AFTER:
            return None
        return self._piece_bytes / elapsed

    async def run(self) -> None:
        """Claim and fetch pieces until every byte is fetched; returns (never raises a
        :class:`PeerError`) when the provider fails, with :attr:`error` set."""
        plan = self._fetch.plan
        try:
            while not plan.all_fetched and plan.failure is None:
                piece = plan.claim(self)
                if piece is None:
                    if not await self.try_steal():
                        await _wait_change(plan, _IDLE_RECHECK)
                    continue
                await self._work(piece)
        except (PeerError, StreamDeadlineError) as exc:
            self.error = exc
            if isinstance(exc, PeerError):
                self._fetch.reporter.failed(self.peer, self._fetch.key, exc)
        finally:
            self._release()

    async def _work(self, piece: Piece) -> None:
        """Fetch ``piece`` (which this worker claimed) until it is complete or taken off it."""
        self.piece, self._taken_off = piece, False
        if piece.claims > 1:  # another provider failed on it, or was too slow
            self._fetch.stats.multi_range("retried")
        self._piece_since, self._piece_bytes = self._loop.time(), 0
        name = f"range {self.peer.host}:{self.peer.port}"
        self._reading = asyncio.create_task(self._read(piece), name=name)
        try:
            await self._reading
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._taken_off or (task is not None and task.cancelling()):
                raise
            self._release()  # the response is mid-body: its connection cannot be reused
        except BaseException:
            if piece.owner is self:
                self._fetch.plan.disown(piece)
            raise
        finally:
            self._reading = None
            self.piece = None
            self._busy += self._loop.time() - self._piece_since
            self._busy_bytes += self._piece_bytes
        if piece.complete and piece.claims == 1:
            self._fetch.stats.multi_range("ok")

    async def _read(self, piece: Piece) -> None:
        plan = self._fetch.plan
        if self._resp is None or self._resp_at != piece.next_offset:
            self._release()
            self._resp = await self._request(piece.next_offset, piece.end)
            self._resp_at = piece.next_offset
        resp = self._resp
        while not piece.complete:
            n = await self._floor.read(resp, piece.space(), batch=_BATCH)
            self._resp_at += n
            self._piece_bytes += n
            self.contributed += n
            plan.fetched(piece, n)
        if resp.remaining == 0:
            self._release()

    async def try_steal(self) -> bool:
        """Take the head piece over from a worker at most half as fast as this one; True if so."""
        head = self._fetch.plan.head
        mine = self.rate
        if head is None or mine is None or head.complete:
            return False
        victim = head.owner
        if not isinstance(victim, RangeWorker) or victim is self:
            return False
        theirs = victim.current_rate()
        if theirs is None or theirs * _SLOWER_BY > mine:
            return False
        if head.length - head.filled < self._fetch.plan.buffer_size:
            return False
        await victim.take_off()
        if head.owner is not None or head.complete:  # it changed hands meanwhile
            return False
        self._fetch.plan.take_over(head, self)
        await self._work(head)
        return True

    async def take_off(self) -> None:
        """Stop reading into the current piece (it becomes an orphan; the worker stays)."""
        reading, piece = self._reading, self.piece
        if reading is None or piece is None:
            return
        self._taken_off = True
        reading.cancel()
        # After this no read of this worker's can land in the piece's buffers any more.
        await asyncio.wait({reading})
        if piece.owner is self:
            self._fetch.plan.disown(piece)

    async def _request(self, start: int, end: int) -> PeerResponse:
        """The provider's 206 for blob bytes ``[start, end)``, its head checked."""
        settings, total = self._fetch.settings, self._fetch.plan.total
        resp = await self._fetch.client.request(
            self.peer,
            "GET",
            self._fetch.target,
            {MIRRORED_HEADER: "true", "Range": f"bytes={start}-{end - 1}"},
            dial_timeout=settings.dial_timeout,
            first_byte_timeout=settings.first_byte_timeout,
        )
        try:
            reported = resp.headers.get(DIGEST_HEADER.lower())
            if reported is not None and reported != str(self._fetch.digest):
                raise PeerCorruptError(f"peer reported {reported[:80]!r} for {self._fetch.digest}")
            expected = f"bytes {start}-{end - 1}/{total}"
            if resp.status != 206 or resp.headers.get("content-range") != expected:
                raise PeerMissError(f"peer cannot serve {expected}: {resp.status}")
            if resp.content_length != end - start:
                raise PeerMissError(f"peer sent {resp.content_length} bytes for {expected}")
        except BaseException:
            resp.release()
            raise
        return resp

    def _release(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.release()


async def _wait_change(plan: Plan, within: float) -> None:
    try:
        async with asyncio.timeout(within):
            await plan.changed()
    except TimeoutError:
        pass
