"""Send raw probes to a server and keep every byte of its answer, and whether it hung up.

Shared by the recorder (which learns a persona from a real server) and the fidelity harness
(which compares a decoy with the real server). A probe's answer ends when the server closes the
connection, or when nothing more arrives for ``idle_seconds`` (the server keeps it open).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from feint.camouflage.decoy.probes import Probe

ANSWER_BYTES_MAX = 4_000_000  # more than any page we impersonate; a runaway server stops here
CONNECT_TIMEOUT_SECONDS = 5.0
IDLE_SECONDS_DEFAULT = 0.6
ANSWER_SECONDS_MAX = 10.0  # a server that trickles forever is cut off here
CONCURRENCY_DEFAULT = 8


@dataclass(frozen=True, slots=True)
class Answer:
    """What a server sent back to one probe."""

    probe: str
    data: bytes
    closed: bool  # the server closed the connection (False: still open after the idle wait)
    error: str | None = None  # the connection failed (refused, reset before any byte)


async def exchange(
    host: str, port: int, payload: bytes, *, name: str, idle_seconds: float = IDLE_SECONDS_DEFAULT
) -> Answer:
    """Connect, send ``payload``, read until the server closes or goes quiet."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_SECONDS)
    except (OSError, TimeoutError) as exc:
        return Answer(probe=name, data=b"", closed=True, error=f"connect: {exc!r}")
    chunks: list[bytes] = []
    size = 0
    closed = False
    error: str | None = None
    begun = time.monotonic()
    try:
        if payload:
            writer.write(payload)
            await writer.drain()
        while size < ANSWER_BYTES_MAX and time.monotonic() - begun < ANSWER_SECONDS_MAX:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), idle_seconds)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
            size += len(chunk)
    except ConnectionResetError:
        # A reset after (or instead of) the answer is how some servers hang up on garbage.
        closed = True
    except OSError as exc:
        closed, error = True, f"io: {exc!r}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):  # the peer reset first; the socket is closed either way
            await writer.wait_closed()
    return Answer(probe=name, data=b"".join(chunks), closed=closed, error=error)


async def exchange_all(
    host: str,
    port: int,
    probes: Iterable[Probe],
    *,
    hostport: str | None = None,
    mtime: float = 0.0,
    idle_seconds: float = IDLE_SECONDS_DEFAULT,
    concurrency: int = CONCURRENCY_DEFAULT,
    progress: Callable[[Answer], None] | None = None,
) -> dict[str, Answer]:
    """Every probe's answer by probe name; probes run ``concurrency`` at a time, each on its own
    connection (``mtime``: the site files' time, for probes quoting their Last-Modified)."""
    gate = asyncio.Semaphore(concurrency)
    target = hostport or f"{host}:{port}"

    async def one(probe: Probe) -> Answer:
        async with gate:
            answer = await exchange(
                host, port, probe.render(hostport=target, mtime=mtime), name=probe.name, idle_seconds=idle_seconds
            )
        if progress is not None:
            progress(answer)
        return answer

    answers = await asyncio.gather(*(one(p) for p in probes))
    return {a.probe: a for a in answers}
