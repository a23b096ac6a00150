"""Fixed pages and files for browsers (the dashboard, the API docs): read once at
start, each sent with the headers that keep a browser from framing or second-guessing
it; a file not in the list is a 404 (so no path ever reaches the file system)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web

from .auth import public

Handler = Callable[[web.Request], Awaitable[web.Response]]

# Sent with every page and file; each kind of page adds its own Content-Security-Policy.
BROWSER_HEADERS = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def page_handler(body: bytes, headers: Mapping[str, str]) -> Handler:
    @public
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html", charset="utf-8", headers=headers)

    return page


def files_handler(folder: Path, types: Mapping[str, str], headers: Mapping[str, str]) -> Handler:
    """Serves `{name}` from `folder`, only the names in `types` (name -> content type)."""
    files = {name: (folder / name).read_bytes() for name in types}

    @public
    async def file(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type=types[name], headers=headers)

    return file
