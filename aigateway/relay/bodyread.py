"""Reading a request body into memory: bounded (MAX_BODY_SIZE), its bytes taken from the
body memory as they arrive (bodybudget.py), and cut when it comes too slowly (bodypace.py).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import StreamReader, web

from ..errors import BadRequest, PayloadTooLarge, Refused
from ..http.expect import send_continue
from .bodybudget import BodyBudget
from .bodypace import BodyPace, SlowBody, Watched
from .ledger import BodyHold


async def read_body(
    request: web.Request, limit: int, pace: BodyPace, hold: BodyHold, coding: str | None
) -> bytes:
    """The whole body, at most `limit` bytes (after decoding). One that came whole with
    its request's head (the usual small one) is taken at once; one still arriving is taken
    as it comes, its declared length first committed to its key's share."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    if "Expect" in request.headers:
        await send_continue(request)  # admitted: now the body may come
    content = request.content
    budget = hold.budget
    try:
        if declared is not None and coding is None:
            if content.is_eof():  # all here already: one take, no await
                if not budget.try_take(hold.key, declared, declared):
                    await budget.take(hold.key, declared, declared, _deadline(hold))
                hold.held = hold.committed = declared
                # (Read as it lies in the buffer: readexactly() would make two coroutines
                # on every request to find it there.)
                body = content.read_nowait(declared) if declared else b""
                if len(body) < declared:
                    raise asyncio.IncompleteReadError(body, declared)
                return body
            if not budget.try_take(hold.key, 0, declared):
                await budget.take(hold.key, 0, declared, _deadline(hold))
            hold.committed = declared
            body = await _arriving(content, limit, pace, hold, False)
            if len(body) < declared:
                raise asyncio.IncompleteReadError(body, declared)
            return body
        # Chunked, or compressed (its size is not what it declares): it commits as it comes.
        return await _arriving(content, limit, pace, hold, True)
    except asyncio.IncompleteReadError:
        raise BadRequest("the request body ended before its Content-Length") from None
    except web.RequestPayloadError as exc:  # e.g. a body that is not what its coding says
        raise BadRequest(f"the request body cannot be read: {exc}") from None
    except SlowBody:
        raise pace.refusal() from None


async def _arriving(
    content: StreamReader, limit: int, pace: BodyPace, hold: BodyHold, commits: bool
) -> bytes:
    """Read a body as it arrives, taking each chunk's bytes before keeping it (and with
    `commits`, committing them to its key's share too)."""
    budget, key = hold.budget, hold.key
    chunks: list[bytes] = []
    size = 0
    watched = None if content.is_eof() else pace.watch(content)  # (all here: no clock)
    try:
        while chunk := await content.readany():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            nbytes = len(chunk)
            commit = nbytes if commits else 0
            if not budget.try_take(key, nbytes, commit):
                await _wait_for_memory(budget, hold, nbytes, commit, watched)
            hold.held += nbytes
            hold.committed += commit
            chunks.append(chunk)
    finally:
        pace.unwatch(watched)
    return b"".join(chunks)


async def _wait_for_memory(
    budget: BodyBudget, hold: BodyHold, nbytes: int, commit: int, watched: Watched | None
) -> None:
    """Wait for memory: the gateway's doing, not the client's, so its pace is not judged
    meanwhile, and is judged afresh after a wait."""
    if watched is None:
        await budget.take(hold.key, nbytes, commit, _deadline(hold))
        return
    watched.paused = True
    try:
        waited = await budget.take(hold.key, nbytes, commit, _deadline(hold))
    finally:
        watched.paused = False
    if waited:
        watched.start(time.monotonic())


def _deadline(hold: BodyHold) -> float:
    """When the body's waits for memory must end: WAIT_S after its first wait, in all."""
    if not hold.deadline:
        hold.deadline = time.monotonic() + hold.budget.wait_s
    return hold.deadline


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body is larger than this gateway accepts ({limit} bytes, MAX_BODY_SIZE)",
        reason=Refused.TOO_LARGE,
    )
