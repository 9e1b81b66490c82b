"""Which parts of a file are in the page cache right now (``mincore(2)`` through ctypes).

The page-cache coordinator takes this snapshot when a file starts being served: pages already
resident were read (and charged to a cgroup) by someone else, containerd's unpack or a previous
reader, so evicting them would not shrink our charge and would only slow the next reader down.

Asking about every page costs ~20 us per MiB (a page-cache lookup per page), a tenth of what
sending that MiB costs, so the file is sampled: one page per :data:`GRANULE`, which stands for
its granule. Python has no ``mincore`` binding; mapping the file costs no I/O.
"""

from __future__ import annotations

import ctypes
import mmap

PAGE = mmap.PAGESIZE
GRANULE = 2 << 20  # bytes each sampled page stands for; a multiple of PAGE


class _Libc:
    """The three libc calls needed, loaded once per process on first use."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)  # libc is loaded already; find_library would spawn ldconfig
        self.mmap = libc.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long)
        self.munmap = libc.munmap
        self.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        self.mincore = libc.mincore
        self.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)


_libc: list[_Libc] = []  # lazily filled; a list so that no module global is ever reassigned
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_granules(fd: int, size: int) -> bytes | None:
    """One byte per :data:`GRANULE` of the first ``size`` bytes of ``fd``: 1 if its sampled page
    (the granule's first) is resident, else 0.

    ``None`` when it cannot be known (empty file, mapping refused); callers then assume nothing
    was resident.
    """
    if size <= 0:
        return None
    if not _libc:
        try:
            _libc.append(_Libc())
        except (OSError, AttributeError):
            return None
    libc = _libc[0]
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        return None
    try:
        count = (size + GRANULE - 1) // GRANULE
        out = bytearray(count)
        vec = ctypes.create_string_buffer(1)
        mincore = libc.mincore
        for i in range(count):
            if mincore(addr + i * GRANULE, PAGE, vec) != 0:
                return None
            out[i] = vec.raw[0] & 1
        return bytes(out)
    finally:
        libc.munmap(addr, size)
