"""The floor: the least an aiohttp pass-through can do (no auth, no logging, no checks).

The gateway's figures are judged as ratios against this, measured in the same run.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

from ..server import new_event_loop, raise_open_file_limit

UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
BASE = web.AppKey("base", str)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    async with request.app[UPSTREAM].request(
        request.method, request.app[BASE] + request.raw_path, data=body
    ) as upstream:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def make_app(upstream_url: str) -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app[BASE] = upstream_url.rstrip("/")

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        app[UPSTREAM] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        yield
        await app[UPSTREAM].close()

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    raise_open_file_limit()
    web.run_app(
        make_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        print=None,
        loop=new_event_loop(),
    )


if __name__ == "__main__":
    main()
