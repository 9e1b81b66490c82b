"""The one mapping of error types to HTTP answers, and the one reading of Range for a body."""

from __future__ import annotations

import json

import pytest

from spegel_py.errors import (
    BufferPoolExhaustedError,
    ContentNotFoundError,
    ImageNotFoundError,
    InvalidDigestError,
    InvalidInputError,
    InvalidNameError,
    InvalidReferenceError,
    NoProviderError,
    RangeNotSatisfiableError,
    StoreUnavailableError,
)
from spegel_py.httpx.answers import BodyHead, answer_for, body_head
from spegel_py.oci.paths import Kind, UnknownPathError


@pytest.mark.parametrize(
    ("exc", "kind", "status", "code"),
    [
        (ContentNotFoundError("sha256:00 not here"), Kind.BLOBS, 404, "BLOB_UNKNOWN"),
        (ContentNotFoundError("sha256:00 not here"), Kind.MANIFESTS, 404, "MANIFEST_UNKNOWN"),
        (ImageNotFoundError("tags are not resolved by peers"), Kind.MANIFESTS, 404, "MANIFEST_UNKNOWN"),
        (NoProviderError("no peer could serve it"), Kind.BLOBS, 404, "BLOB_UNKNOWN"),
        (RangeNotSatisfiableError("bytes=99-", size=10), Kind.BLOBS, 416, "RANGE_INVALID"),
        (UnknownPathError("/v2/_catalog"), None, 404, "UNSUPPORTED"),
        (InvalidDigestError("sha256:xyz"), None, 400, "DIGEST_INVALID"),
        (InvalidReferenceError("-bad"), None, 404, "MANIFEST_UNKNOWN"),
        (InvalidNameError("UPPER"), None, 400, "NAME_INVALID"),
        (InvalidInputError("invalid ns parameter"), None, 400, "NAME_INVALID"),
        (StoreUnavailableError("containerd restarting"), None, 503, "UNAVAILABLE"),
        (TimeoutError(), None, 503, "UNAVAILABLE"),
        (ConnectionRefusedError(), None, 503, "UNAVAILABLE"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_each_error_type_has_one_answer(
    exc: BaseException, kind: Kind | None, status: int, code: str
) -> None:
    response = answer_for(exc, kind)
    assert response.status == status
    assert response.content_type == "application/json"
    assert isinstance(response.body, bytes)
    (entry,) = json.loads(response.body)["errors"]
    assert entry["code"] == code
    if status == 404 and isinstance(exc, (ContentNotFoundError, ImageNotFoundError, NoProviderError)):
        assert entry["message"] == str(exc)  # says why: the relay's policy, the missing digest


def test_416_says_the_size() -> None:
    response = answer_for(RangeNotSatisfiableError("bytes=99-", size=10))
    assert response.headers["Content-Range"] == "bytes */10"
    assert response.headers["Accept-Ranges"] == "bytes"


def test_errors_without_an_answer_are_raised_again() -> None:
    with pytest.raises(BufferPoolExhaustedError):
        answer_for(BufferPoolExhaustedError("not a client-facing error"))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, BodyHead(200, 0, 10, {"Content-Type": "x"})),
        ("bytes=2-4", BodyHead(206, 2, 5, {"Content-Type": "x", "Content-Range": "bytes 2-4/10"})),
        ("bytes=-3", BodyHead(206, 7, 10, {"Content-Type": "x", "Content-Range": "bytes 7-9/10"})),
        ("bytes=0-1,5-6", BodyHead(200, 0, 10, {"Content-Type": "x"})),  # several ranges: all
    ],
)
def test_body_head(header: str | None, expected: BodyHead) -> None:
    headers = {"Content-Type": "x"}
    assert body_head(10, headers, header) == expected
    assert headers == {"Content-Type": "x"}  # the caller's headers are copied, not changed


def test_body_head_refuses_a_range_past_the_end() -> None:
    with pytest.raises(RangeNotSatisfiableError) as caught:
        body_head(10, {}, "bytes=10-")
    assert caught.value.size == 10


def test_body_head_response_has_the_body_length() -> None:
    response = body_head(10, {"Content-Length": "10"}, "bytes=2-4").response()
    assert (response.status, response.content_length) == (206, 3)
