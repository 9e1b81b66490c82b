"""One request to one peer for what the mirror was asked, validated before it can win a race.

The hedger (:mod:`.hedging`) runs :meth:`PeerAttempt.run` against several providers; only an
answer that passed every check here can win. Manifests and small blobs are read and verified
whole; so is a manifest asked with HEAD (asked of the peer as a GET: the client takes a HEAD's
size as the manifest's); a blob HEAD's head is checked, its size cannot be. A large blob's
answer carries the open peer response, which the blob stream (:mod:`.stream`) relays. A tag's
bytes are verified against the ``Docker-Content-Digest`` the peer reports, which must parse.

A client's range of a blob is asked of the peer as that range (:attr:`MirrorRequest.peer_range`):
a 206 is accepted only with the ``Content-Range`` the range selects of the size the peer states
and a matching ``Content-Length``; a 416 only with ``bytes */size`` of a size the range cannot
select; a 200 (a peer that ignores ranges) is the whole blob, verified as without a range. The
bytes of a 206 cannot be checked against the blob's digest (docs/operations.md says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spegel_py.errors import (
    InvalidDigestError,
    PeerCorruptError,
    PeerError,
    PeerMissError,
    PeerProtocolError,
    RangeNotSatisfiableError,
)
from spegel_py.httpx.headers import DIGEST_HEADER, MIRRORED_HEADER
from spegel_py.httpx.ranges import RangeSpec, parse_content_range
from spegel_py.oci.digest import Digest
from spegel_py.relay.peerclient import PeerClient, PeerResponse
from spegel_py.relay.request import MirrorRequest
from spegel_py.relay.settings import MirrorSettings
from spegel_py.routing.base import Peer

_UNSATISFIED = re.compile(r"bytes \*/([0-9]{1,19})")


@dataclass(slots=True)
class Answer:
    """A peer's validated answer: the client's headers and the verified body or the open stream.

    ``status`` is 200, 206 (the client's range: ``headers`` carry its ``Content-Range`` and
    ``Content-Length``) or 416 (``size`` is the blob's size; no body).
    """

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: PeerResponse | None = None
    size: int | None = None

    @staticmethod
    def discard(answer: Answer) -> None:
        """Release an answer that lost the race."""
        if answer.stream is not None:
            answer.stream.release()


class PeerAttempt:
    """One request to one peer, validated; raises a :class:`PeerError` for anything unusable.

    ``digest`` is the digest asked for, or ``None`` for a tag (then the peer's reported digest
    is the one the bytes must match).
    """

    def __init__(
        self, client: PeerClient, settings: MirrorSettings, request: MirrorRequest, digest: Digest | None
    ) -> None:
        self._client = client
        self._settings = settings
        self._request = request
        self._digest = digest
        self._range = request.peer_range

    async def run(self, peer: Peer) -> Answer:
        s = self._settings
        r = self._request
        headers = {MIRRORED_HEADER: "true", "Accept": r.accept or "*/*"}
        if self._range is not None:
            headers["Range"] = self._range.header()
        # A manifest HEAD is asked as a GET and verified: the client takes the size (and digest)
        # of a HEAD as the manifest's descriptor, and a peer's unverified Content-Length would
        # make the whole pull fail with no fallback (bench/reliability, hostile "lying-length").
        method = "GET" if r.kind == "manifests" else r.method
        resp: PeerResponse | None = await self._client.request(
            peer,
            method,
            r.target,
            headers,
            dial_timeout=s.dial_timeout,
            first_byte_timeout=s.first_byte_timeout,
        )
        assert resp is not None
        try:
            if self._range is not None and resp.status == 416:
                return Answer(416, {}, size=_unsatisfiable_size(resp, self._range))
            if self._range is not None and resp.status == 206:
                answer = await self._ranged(resp, self._range)
                if answer.stream is not None:
                    resp = None  # ownership passes to the answer
                return answer
            if resp.status != 200:
                raise PeerMissError(f"peer answered {resp.status}")
            if resp.content_length is None:
                raise PeerError("peer answer has no Content-Length")
            digest = self._verified_header_digest(resp)
            headers = _client_headers(resp, digest)
            if method == "HEAD":
                return Answer(200, headers)
            size = resp.content_length
            if r.kind == "manifests" or size <= s.small_blob:
                if size > s.max_buffered:
                    raise PeerMissError(f"manifest of {size} bytes is too large")
                body = await resp.read_all(limit=s.max_buffered, stall_timeout=s.first_byte_timeout)
                if Digest.of(body, digest.algorithm) != digest:
                    raise PeerCorruptError(f"peer bytes do not match {digest}")
                return Answer(200, headers, body=body)
            stream, resp = resp, None  # ownership passes to the answer
            return Answer(200, headers, stream=stream)
        finally:
            if resp is not None:
                resp.release()

    async def _ranged(self, resp: PeerResponse, spec: RangeSpec) -> Answer:
        """A 206 for ``spec``: the head checked; the body read (small) or left open."""
        got = parse_content_range(resp.headers.get("content-range"))
        if got is None:
            raise PeerProtocolError("peer answered 206 without a valid Content-Range")
        try:
            wanted = spec.resolve(got.size)
        except RangeNotSatisfiableError as exc:
            raise PeerProtocolError(f"peer answered 206 to a range it cannot satisfy: {got}") from exc
        if got != wanted or resp.content_length != got.length:
            raise PeerProtocolError(
                f"peer sent {got.content_range()} ({resp.content_length} bytes) for {spec.header()}"
            )
        headers = _client_headers(resp, self._verified_header_digest(resp))
        headers["Content-Range"] = got.content_range()
        headers["Accept-Ranges"] = "bytes"
        s = self._settings
        if got.length <= s.small_blob:
            body = await resp.read_all(limit=s.small_blob, stall_timeout=s.first_byte_timeout)
            return Answer(206, headers, body=body)
        return Answer(206, headers, stream=resp)

    def _verified_header_digest(self, resp: PeerResponse) -> Digest:
        reported = resp.headers.get(DIGEST_HEADER.lower())
        parsed: Digest | None = None
        if reported is not None:
            try:
                parsed = Digest.parse(reported)
            except InvalidDigestError as exc:
                raise PeerCorruptError(f"peer reported an invalid digest {reported[:80]!r}") from exc
        if self._digest is not None:
            if parsed is not None and parsed != self._digest:
                raise PeerCorruptError(f"peer reported {parsed} for {self._digest}")
            return self._digest
        if parsed is None:
            # A tag's bytes can only be verified against the digest the peer claims for them.
            raise PeerMissError("peer resolved a tag without Docker-Content-Digest")
        return parsed


def _unsatisfiable_size(resp: PeerResponse, spec: RangeSpec) -> int:
    """The blob size of a peer's 416, if it is one that ``spec`` indeed cannot select."""
    match = _UNSATISFIED.fullmatch(resp.headers.get("content-range", ""))
    if match is None:
        raise PeerProtocolError("peer answered 416 without Content-Range: bytes */size")
    size = int(match.group(1))
    try:
        spec.resolve(size)
    except RangeNotSatisfiableError:
        return size
    raise PeerProtocolError(f"peer answered 416 to {spec.header()} of a {size}-byte blob")


def _client_headers(resp: PeerResponse, digest: Digest) -> dict[str, str]:
    headers = {
        "Content-Type": resp.headers.get("content-type", "application/octet-stream"),
        "Content-Length": str(resp.content_length),
        DIGEST_HEADER: str(digest),
    }
    if "accept-ranges" in resp.headers:
        headers["Accept-Ranges"] = "bytes"
    return headers
