"""A peer's response head is parsed strictly: every hostile head is a PeerProtocolError.

The table is the parser alone (:func:`spegel_py.relay.peerhead.parse_head`); the same heads
reach a client through the real registry server in ``test_hostile_peers.py``.
"""

from __future__ import annotations

import pytest

from spegel_py.errors import PeerError, PeerProtocolError
from spegel_py.relay.peerhead import MAX_HEADERS, MAX_LINE, parse_head

OK = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize(
    ("head", "status", "length", "keep_alive"),
    [
        (OK + b"Content-Length: 5", 200, 5, True),
        (b"HTTP/1.1 200\r\nContent-Length: 5", 200, 5, True),  # the reason phrase is optional
        (b"HTTP/1.1 404 \r\nContent-Length: 0", 404, 0, True),
        (b"HTTP/1.1 200 \xc3\xa7a va\r\nContent-Length: 5", 200, 5, True),  # obs-text in the reason
        (b"HTTP/1.0 200 OK\r\nContent-Length: 5", 200, 5, False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5", 200, 5, True),
        (OK + b"Connection: close\r\nContent-Length: 5", 200, 5, False),
        (OK + b"Content-Length:5", 200, 5, True),
        (OK + b"Content-Length: \t5 \t", 200, 5, True),  # OWS around a value is not part of it
        (OK + b"Content-Length: 5\r\ncontent-length: 5", 200, 5, True),  # the same value twice
        (OK + b"Content-Length: 0000000000000000005", 200, 5, True),  # 19 digits
        (OK + b"Transfer-Encoding: chunked", 200, None, False),
        (OK + b"X-Other: caf\xe9\r\nContent-Length: 5", 200, 5, True),  # obs-text, dropped anyway
        (b"HTTP/1.1 200 OK", 200, None, True),
    ],
)
def test_accepted_heads(head: bytes, status: int, length: int | None, keep_alive: bool) -> None:
    parsed = parse_head(head)
    assert (parsed.status, parsed.content_length, parsed.keep_alive) == (status, length, keep_alive)


def test_only_the_headers_the_relay_reads_are_kept() -> None:
    parsed = parse_head(
        OK + b"Content-Length: 5\r\nContent-Type: application/json\r\nDocker-Content-Digest: sha256:ab\r\n"
        b"Set-Cookie: a=b\r\nX-Evil: yes\r\nServer: x\r\nAccept-Ranges: bytes\r\nLocation: /x"
    )
    assert parsed.headers == {
        "content-length": "5",
        "content-type": "application/json",
        "docker-content-digest": "sha256:ab",
        "accept-ranges": "bytes",
    }


HEADERS = b"".join(b"X-A: b\r\n" for _ in range(MAX_HEADERS))

HOSTILE: dict[str, bytes] = {
    "superscript digit length": OK + b"Content-Length: \xb2",  # '²' in latin-1: str.isdigit() is True
    "superscript digits length": OK + b"Content-Length: 1\xb2\xb3\xb9",
    "utf-8 superscript length": OK + "Content-Length: \u00b2".encode(),
    "arabic-indic digit length": OK + "Content-Length: \u0663".encode(),  # arabic-indic three
    "fullwidth digit length": OK + "Content-Length: \uff15".encode(),  # fullwidth five
    "superscript digit status": "HTTP/1.1 \u00b200 OK\r\nContent-Length: 5".encode(),
    "bare LF in a value": OK + b"Content-Type: text/plain\nX-Injected: 1\r\nContent-Length: 5",
    "bare LF as line end": b"HTTP/1.1 200 OK\nContent-Length: 5",
    "bare LF in a dropped header": OK + b"X-A: a\nb\r\nContent-Length: 5",
    "bare CR in a value": OK + b"Content-Type: a\rb\r\nContent-Length: 5",
    "bare CR at the end of a line": OK + b"Content-Length: 5\r",
    "NUL in a value": OK + b"Content-Type: a\x00b\r\nContent-Length: 5",
    "NUL in a dropped header": OK + b"X-A: \x00\r\nContent-Length: 5",
    "DEL in a value": OK + b"Content-Type: a\x7f\r\nContent-Length: 5",
    "escape in the reason": b"HTTP/1.1 200 O\x1bK\r\nContent-Length: 5",
    "non-ASCII in a kept header": OK + b"Content-Type: caf\xe9\r\nContent-Length: 5",
    "20 digits": OK + b"Content-Length: " + b"9" * 20,
    "a thousand digits": OK + b"Content-Length: " + b"9" * 1000,
    "negative length": OK + b"Content-Length: -5",
    "plus sign": OK + b"Content-Length: +5",
    "two numbers": OK + b"Content-Length: 5 5",
    "a list": OK + b"Content-Length: 5, 5",
    "hex length": OK + b"Content-Length: 0x5",
    "decimal point": OK + b"Content-Length: 5.0",
    "empty length": OK + b"Content-Length: ",
    "two different lengths": OK + b"Content-Length: 5\r\nContent-Length: 6",
    "length and chunked": OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked",
    "two different digests": OK + b"Docker-Content-Digest: sha256:a\r\nDocker-Content-Digest: sha256:b",
    "too many headers": OK + HEADERS + b"Content-Length: 5",
    "a long line": OK + b"X-A: " + b"a" * MAX_LINE + b"\r\nContent-Length: 5",
    "obs-fold": OK + b"Content-Type: text/plain\r\n json\r\nContent-Length: 5",
    "obs-fold with a tab": OK + b"Content-Length: 5\r\n\t5",
    "space before the colon": OK + b"Content-Length : 5",
    "no colon": OK + b"Content-Length 5",
    "empty name": OK + b": 5\r\nContent-Length: 5",
    "non-token name": OK + b"Content Length: 5",
    "empty head": b"",
    "HTTP/2.0 status line": b"HTTP/2.0 200 OK\r\nContent-Length: 5",
    "HTTP/2 status line": b"HTTP/2 200\r\nContent-Length: 5",
    "HTTP/1.2": b"HTTP/1.2 200 OK\r\nContent-Length: 5",
    "lower-case version": b"http/1.1 200 OK\r\nContent-Length: 5",
    "two-digit status": b"HTTP/1.1 20 OK\r\nContent-Length: 5",
    "four-digit status": b"HTTP/1.1 2000 OK\r\nContent-Length: 5",
    "status 600": b"HTTP/1.1 600 OK\r\nContent-Length: 5",
    "status 099": b"HTTP/1.1 099 OK\r\nContent-Length: 5",
    "double space": b"HTTP/1.1  200 OK\r\nContent-Length: 5",
    "no status": b"HTTP/1.1\r\nContent-Length: 5",
    "not HTTP": b"SSH-2.0-OpenSSH_9.6\r\nContent-Length: 5",
    "leading space": b" HTTP/1.1 200 OK\r\nContent-Length: 5",
}


@pytest.mark.parametrize("head", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_heads_are_protocol_errors(head: bytes) -> None:
    with pytest.raises(PeerProtocolError):
        parse_head(head)


def test_a_protocol_error_is_a_peer_error() -> None:
    """What makes it a miss for the hedger (never a 500)."""
    assert issubclass(PeerProtocolError, PeerError)


def test_the_bounds_themselves_are_accepted() -> None:
    head = OK + b"".join(b"X-A: b\r\n" for _ in range(MAX_HEADERS - 1)) + b"Content-Length: 5"
    assert parse_head(head).content_length == 5
    long = b"X-A: " + b"a" * (MAX_LINE - 5)
    assert parse_head(OK + long + b"\r\nContent-Length: 5").content_length == 5
