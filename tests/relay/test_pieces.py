"""The plan of a multi-provider fetch (relay/pieces.py), without sockets: claim order, orphans,
the buffer budget, in-order delivery and every buffer back."""

from __future__ import annotations

import asyncio

import pytest

from spegel_py.relay.pieces import Piece, Plan

SIZE = 16  # bytes per buffer


def plan(total: int, buffers: int, piece_buffers: int = 2) -> Plan:
    return Plan(total, [memoryview(bytearray(SIZE)) for _ in range(buffers)], piece_buffers)


def fill(p: Plan, piece: Piece, data: bytes) -> None:
    """Write ``data`` into the piece as a worker would, in reads of at most 5 bytes."""
    pos = 0
    while pos < len(data):
        space = piece.space()
        n = min(len(space), 5, len(data) - pos)
        space[:n] = data[pos : pos + n]
        p.fetched(piece, n)
        pos += n


def drain(p: Plan) -> bytes:
    out = b""
    while (ready := p.ready_chunk()) is not None:
        chunk, buf = ready
        out += bytes(chunk)
        p.release(buf)
    return out


async def test_pieces_are_claimed_in_order_within_the_budget() -> None:
    p = plan(total=100, buffers=5)  # pieces of 32 bytes need 2 buffers: two fit, not three
    a, b = p.claim("w1"), p.claim("w2")
    assert a is not None and b is not None
    assert [(a.start, a.end), (b.start, b.end)] == [(0, 32), (32, 64)]
    assert p.claim("w3") is None and p.free_buffers == 1


async def test_bytes_leave_in_blob_order_whoever_finishes_first() -> None:
    data = bytes(range(100))
    p = plan(total=100, buffers=8)
    pieces = [p.claim(f"w{i}") for i in range(4)]
    assert [x.length for x in pieces if x is not None] == [32, 32, 32, 4]
    for piece in reversed(pieces):  # the last piece arrives first
        assert piece is not None
        fill(p, piece, data[piece.start : piece.end])
        if piece.start > 0:
            assert p.ready_chunk() is None  # nothing may pass the head
    assert drain(p) == data
    assert p.free_buffers == 8 and p.all_fetched and p.head is None


async def test_an_orphan_is_claimed_first_and_continued_where_it_stopped() -> None:
    data = bytes(range(64))
    p = plan(total=64, buffers=4)
    first, second = p.claim("dead"), p.claim("w2")
    assert first is not None and second is not None
    fill(p, first, data[:21])  # a buffer and 5 bytes, then the provider dies
    p.disown(first)
    fill(p, second, data[32:])
    taken = p.claim("w3")
    assert taken is first and taken.next_offset == 21 and taken.claims == 2
    fill(p, taken, data[21:32])
    assert drain(p) == data


async def test_a_piece_whose_buffers_are_not_free_waits() -> None:
    p = plan(total=64, buffers=2)
    head = p.claim("w1")
    assert head is not None and p.claim("w2") is None
    fill(p, head, bytes(32))
    drain(p)  # the head's buffers come back: the next piece can start
    assert p.claim("w2") is not None


async def test_next_chunk_waits_for_the_head_and_ends_on_failure() -> None:
    p = plan(total=32, buffers=2)
    piece = p.claim("w1")
    assert piece is not None
    waiting = asyncio.create_task(p.next_chunk())
    done, _ = await asyncio.wait({waiting}, timeout=0.01)  # the head is empty: it must block
    assert not done
    fill(p, piece, b"x" * SIZE)
    chunk, _ = await waiting
    assert bytes(chunk) == b"x" * SIZE
    p.fail(ConnectionError("gone"))
    with pytest.raises(ConnectionError):
        await p.next_chunk()


def test_a_plan_needs_one_piece_of_buffers() -> None:
    with pytest.raises(ValueError, match="at least one piece"):
        Plan(100, [memoryview(bytearray(SIZE))], 2)
