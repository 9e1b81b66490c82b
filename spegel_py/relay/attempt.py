"""One request to one peer for what the mirror was asked, validated before it can win a race.

The hedger (:mod:`.hedging`) runs :meth:`PeerAttempt.run` against several providers; only an
answer that passed every check here can win. Manifests, HEADs and small blobs are read and
verified whole; a large blob's answer carries the open peer response, which the blob stream
(:mod:`.stream`) relays. A tag's bytes are verified against the ``Docker-Content-Digest`` the
peer reports, which must parse.
"""

from __future__ import annotations

from dataclasses import dataclass

from spegel_py.errors import InvalidDigestError, PeerCorruptError, PeerError, PeerMissError
from spegel_py.httpx.headers import DIGEST_HEADER, MIRRORED_HEADER
from spegel_py.oci.digest import Digest
from spegel_py.relay.peerclient import PeerClient, PeerResponse
from spegel_py.relay.request import MirrorRequest
from spegel_py.relay.settings import MirrorSettings
from spegel_py.routing.base import Peer


@dataclass(slots=True)
class Answer:
    """A peer's validated answer: the client's headers and the verified body or the open stream."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: PeerResponse | None = None

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

    async def run(self, peer: Peer) -> Answer:
        s = self._settings
        r = self._request
        resp: PeerResponse | None = await self._client.request(
            peer,
            r.method,
            r.target,
            {MIRRORED_HEADER: "true", "Accept": r.accept or "*/*"},
            dial_timeout=s.dial_timeout,
            first_byte_timeout=s.first_byte_timeout,
        )
        assert resp is not None
        try:
            if resp.status != 200:
                raise PeerMissError(f"peer answered {resp.status}")
            if resp.content_length is None:
                raise PeerError("peer answer has no Content-Length")
            digest = self._verified_header_digest(resp)
            headers = _client_headers(resp, digest)
            if r.method == "HEAD":
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


def _client_headers(resp: PeerResponse, digest: Digest) -> dict[str, str]:
    headers = {
        "Content-Type": resp.headers.get("content-type", "application/octet-stream"),
        "Content-Length": str(resp.content_length),
        DIGEST_HEADER: str(digest),
    }
    if "accept-ranges" in resp.headers:
        headers["Accept-Ranges"] = "bytes"
    return headers
