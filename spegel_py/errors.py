"""The project's exception hierarchy.

Foreign exceptions (grpc, OSError, aiohttp, libp2p) are translated into these types once, at the
boundary where they occur (``raise X(...) from exc``), so the rest of the code matches failures by
type and never by message. This module imports nothing from the project or third parties.
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


class StoreUnavailableError(SpegelError):
    """The content store backend cannot be reached right now (for example containerd restarting)."""


class RoutingError(SpegelError):
    """The peer-to-peer router failed in a way the caller can report."""


class ConfigurationError(SpegelError):
    """Operator configuration (flags, environment, files) that cannot work."""


class TaskFailedError(SpegelError):
    """A supervised background task ended with an exception, so the daemon stops (exit status 1).

    ``task`` is the task's name; its exception is the ``__cause__``.
    """

    def __init__(self, task: str, cause: BaseException) -> None:
        detail = str(cause) if isinstance(cause, SpegelError) else repr(cause)
        super().__init__(f"task {task} failed: {detail}")
        self.task = task
        self.__cause__ = cause
