"""`Expect: 100-continue`: the client waits for our go-ahead before sending its body.

aiohttp's default answers `100 Continue` as soon as the route is found, before any
middleware runs, so a client without a valid key (or over its limits) would send its
whole body before hearing its 401 (or 429). Every route uses `defer_continue` instead,
and the body readers call `send_continue` right before they read: only a request that
was let in is asked for its body.
"""

from __future__ import annotations

from aiohttp import HttpVersion11, hdrs, web

from .appkeys import CONTEXT


async def defer_continue(request: web.Request) -> None:
    """The route-level expect handler: accept 100-continue (answered later), refuse any
    other expectation with 417, as aiohttp does."""
    if request.version != HttpVersion11:
        return
    expect = request.headers.get(hdrs.EXPECT, "")
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect}")


async def send_continue(request: web.Request) -> None:
    """Ask for the body now, if the client waits to be asked (once)."""
    if request.version != HttpVersion11:
        return
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        return
    context = request[CONTEXT]
    if context.continue_sent:
        return
    context.continue_sent = True
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
