"""The project's exception hierarchy.

Foreign exceptions (grpc, OSError, aiohttp, libp2p) are translated into these types once, at the
boundary where they occur (``raise X(...) from exc``), so the rest of the code matches failures by
type and never by message. The HTTP answer each type gets is chosen in one place,
``spegel_py/httpx/answers.py``. This module imports nothing from the project or third parties.
"""

from __future__ import annotations


class SpegelError(Exception):
    """Base of every error spegel-py raises on purpose."""


class InvalidInputError(SpegelError):
    """Input from a client or operator that is malformed; never a server fault."""


class InvalidDigestError(InvalidInputError):
    """A digest string that is not ``<algorithm>:<hex>`` of a supported algorithm and length."""


class InvalidNameError(InvalidInputError):
    """A repository name that does not match the OCI distribution grammar."""


class InvalidReferenceError(InvalidInputError):
    """A tag, digest or full image reference that cannot be parsed."""


class NotFoundError(SpegelError):
    """Something asked for does not exist (here, or any more)."""


class ContentNotFoundError(NotFoundError):
    """A blob or manifest digest that is not present in the content store."""


class ImageNotFoundError(NotFoundError):
    """A tag reference that the content store does not know."""


class ContentTooLargeError(SpegelError):
    """A blob was asked for in memory but is larger than the caller's limit."""


class IngestEndedError(ContentNotFoundError):
    """A blob that was being served while the store still wrote it can no longer be followed;
    the response is cut so the receiver resumes elsewhere (subclasses say why)."""


class IngestAbortedError(IngestEndedError):
    """The ingest was aborted (its file deleted) before it was committed."""


class IngestStalledError(IngestEndedError):
    """The ingest did not grow (nor commit) for longer than the stall bound."""


class IngestMismatchError(IngestEndedError):
    """The ingest ended as something other than the expected blob (committed under another
    digest, or at another size)."""


class StoreUnavailableError(SpegelError):
    """The content store backend cannot be reached right now (for example containerd restarting)."""


class RoutingError(SpegelError):
    """The peer-to-peer router failed in a way the caller can report."""


class ConfigurationError(SpegelError):
    """Operator configuration (flags, environment, files) that cannot work."""


class RangeNotSatisfiableError(SpegelError):
    """A client's well-formed ``Range`` selects no byte of a ``size``-byte representation (416)."""

    def __init__(self, header: str, *, size: int) -> None:
        super().__init__(f"range {header[:80]!r} selects nothing of {size} bytes")
        self.size = size


class BufferPoolExhaustedError(SpegelError):
    """No relay buffer became free within the caller's bound; the caller should refuse the request."""


class NoProviderError(NotFoundError):
    """No provider (left) could serve a key; the client should fall back to upstream."""


class PeerError(SpegelError):
    """A peer could not serve a request: refused, timed out, broke off, or spoke nonsense."""


class PeerUnreachableError(PeerError):
    """A peer refused the connection or did not accept it within the dial timeout (dead or gone)."""


class PeerDownError(PeerUnreachableError):
    """The peer's host refused or ignored the connection: the node (or its spegel-py) is gone,
    for every key, not just the one asked for."""


class PeerTimeoutError(PeerError):
    """A connected peer did not answer or keep sending within its bound (slow, maybe busy)."""


class PeerSlowError(PeerError):
    """A peer kept sending a body, but below the relay's throughput floor: the stream resumes
    elsewhere, and the peer is skipped for that key for a while, like a miss."""


class StreamDeadlineError(SpegelError):
    """A relayed body did not finish within its size-derived deadline (not one peer's fault: the
    client, or a chain of slow peers); the client response was aborted."""


class PeerMissError(PeerError):
    """The peer answered but does not hold the content (404 or an unusable answer)."""


class PeerProtocolError(PeerError):
    """The peer's response head breaks HTTP/1.1 or the relay's bounds (a malformed status line,
    non-ASCII digits, a bare CR or LF, too many or too long headers, conflicting lengths): a miss,
    so the client gets the 404 that sends it upstream, never a 500."""


class PeerCorruptError(PeerError):
    """The peer's bytes do not match their digest."""


class IntegrityError(PeerCorruptError):
    """Relayed bytes did not match the digest; the client response was aborted."""


class ResumeFailedError(PeerError):
    """No provider could continue a broken blob stream; the client response was aborted."""


class TaskFailedError(SpegelError):
    """A supervised background task ended with an exception, so the daemon stops (exit status 1).

    ``task`` is the task's name; its exception is the ``__cause__``.
    """

    def __init__(self, task: str, cause: BaseException) -> None:
        detail = str(cause) if isinstance(cause, SpegelError) else repr(cause)
        super().__init__(f"task {task} failed: {detail}")
        self.task = task
        self.__cause__ = cause
