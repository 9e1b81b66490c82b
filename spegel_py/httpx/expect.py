"""The answer to a request's ``Expect`` header, and to requests no route can take, on every listener.

Why: aiohttp's default expect handler echoes the header's value into the text of its 417
answer, and a value that is not valid UTF-8 (aiohttp keeps such bytes as surrogate escapes)
makes building that text raise, so the client got a 500 (found by the reliability fuzzer,
``bench/reliability/fuzz.py``). :func:`expect_handler` does what aiohttp's does
(``100-continue`` on HTTP/1.1 gets an interim ``100 Continue``) and answers any other value
with a 417 that does not repeat it; routes pass it as ``expect_handler=``.

A request that matches no route (``CONNECT`` with its authority-form target has no path at all,
or an unknown path on the ``/metrics`` listener) still goes through aiohttp's default handler
before any middleware runs. :func:`needs_screening` picks such requests out before routing and
:func:`refusal` answers them with a 4xx; ``spegel_py/httpx/limits.py`` applies it per listener
(the registry passes its own, OCI JSON, answer).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse


async def expect_handler(request: web.Request) -> None:
    """``Expect: 100-continue`` -> ``100 Continue``; any other value -> 417, never echoed."""
    if request.version != HttpVersion11:
        return
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response's size
        return
    raise web.HTTPExpectationFailed(text="unsupported Expect value")


def needs_screening(request: BaseRequest) -> bool:
    """``CONNECT`` (no route has an authority-form target) or an ``Expect`` value that is not
    printable ASCII: aiohttp's router would answer either with its default expect handler."""
    if request.method == hdrs.METH_CONNECT:
        return True
    expect = request.headers.get(hdrs.EXPECT)
    return expect is not None and not (expect.isascii() and expect.isprintable())


def refusal(request: BaseRequest) -> web.Response:
    """A plain-text 4xx for a request :func:`needs_screening` picked: 405 for ``CONNECT``,
    417 for the ``Expect`` value (never echoed)."""
    if request.method == hdrs.METH_CONNECT:
        return web.Response(status=405, text="method not allowed", headers={"Allow": "GET, HEAD"})
    return web.Response(status=417, text="unsupported Expect value")


Screen = Callable[[BaseRequest], Awaitable[StreamResponse]]
SCREEN: web.AppKey[Screen] = web.AppKey("spegel_screen")
"""An application's own answer for what :func:`needs_screening` picks (default :func:`refuse`)."""


async def refuse(request: BaseRequest) -> StreamResponse:
    return refusal(request)


def screened(handler: Screen, screen: Screen) -> Screen:
    """``handler`` (the application's), with requests :func:`needs_screening` picks sent to
    ``screen`` before any routing."""

    async def handle(request: BaseRequest) -> StreamResponse:
        if needs_screening(request):
            return await screen(request)
        return await handler(request)

    return handle
