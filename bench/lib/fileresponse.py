"""Baseline server: aiohttp's own ``web.FileResponse`` (sendfile) on the benchmark URLs.

It shows what the framework alone costs, so a gap between spegel-py and nginx can be split
into "aiohttp" and "spegel-py's handler". Usage: ``python -m bench.lib.fileresponse HOST PORT DIR``.
"""

from __future__ import annotations

import os
import re
import sys

from aiohttp import web

_BLOB = re.compile(r"^/v2/.+/blobs/sha256:([0-9a-f]{64})$")


def make_app(blobs_dir: str) -> web.Application:
    async def v2(_: web.Request) -> web.Response:
        return web.json_response({})

    async def blob(request: web.Request) -> web.StreamResponse:
        m = _BLOB.match(request.path)
        if m is None:
            raise web.HTTPNotFound()
        return web.FileResponse(os.path.join(blobs_dir, m.group(1)))

    app = web.Application()
    app.router.add_get("/v2/", v2)
    app.router.add_get("/v2/{tail:.+}", blob)
    return app


if __name__ == "__main__":
    host, port, blobs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    web.run_app(make_app(blobs), host=host, port=port, access_log=None, print=None)
