"""Reads of a size the allocator serves cheaply, for the asyncio transports of pooled
connections.

asyncio's socket transport reads with ``sock.recv(max_size)``, 256 KiB, into a new ``bytes``
object each time, and shrinks it to what arrived. glibc's malloc serves a request that large
with ``mmap()`` until the process has freed an ``mmap()``-ed block larger than it (which raises
malloc's mmap threshold for good); until then every read of a small reply costs ``mmap``,
``mremap``, ``munmap`` and a page fault or two (cpython#85451). Which of the two states a
process is in depends on what it happened to free before, so the same service ran fast or slow
from one start to the next: here a pool of asyncpg connections doing ``SELECT 1`` moved
14,000-16,000 operations per second in the slow state and 18,000-25,000 in the fast one.

Reading at most :data:`READ_SIZE` keeps each read under glibc's default threshold (128 KiB),
so the heap serves it whatever the process freed before. A large reply takes more reads
(about 5-10 % more client CPU on a 20 MB result here); small replies, the pool's daily work,
no longer depend on the allocator's history.
"""

from __future__ import annotations

__all__ = ["READ_SIZE", "limit_reads"]

# Under glibc's default mmap threshold (128 KiB), with room for the bytes object's header and
# malloc's own.
READ_SIZE = 127 * 1024


def limit_reads(transport: object) -> None:
    """Have ``transport`` read at most :data:`READ_SIZE` bytes at a time.

    Only asyncio's plain socket transports (TCP, Unix socket), which allocate a buffer of
    ``max_size`` per read, are changed. Others are left as they are: uvloop's reads into a
    buffer it keeps, and asyncio's TLS transport exposes no read size of its own. So is a
    transport already set to read less. Never raises.
    """
    if getattr(transport, "max_size", 0) > READ_SIZE:
        try:
            transport.max_size = READ_SIZE  # type: ignore[attr-defined]
        except AttributeError:  # a transport with a read-only max_size: leave it
            pass
