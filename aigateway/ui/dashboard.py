"""The dashboard: a page and its script and styles, served by the gateway under UI_PATH.

Nothing is built or installed: the files in `ui/static/` ship in the package and are read once
at start. The page holds no data and no inline script; its modules (app.js first) ask the
admin API (with the session cookie, see sessions.py) for everything and show every string as
text.
Every answer carries a Content-Security-Policy that allows only this origin's script and
styles, and forbids framing.
"""

from __future__ import annotations

import html
from pathlib import Path

from aiohttp import web

from ..http.auth import public
from ..http.expect import defer_continue
from ..http.webfiles import BROWSER_HEADERS, files_handler, page_handler
from ..settings import Settings
from .signin import sign_in, sign_out

UI_DIR = Path(__file__).parent / "static"
# The script is ES modules, one a page (app.js the shell): each served by its name.
STATIC = {
    **{path.name: "text/javascript" for path in sorted(UI_DIR.glob("*.js"))},
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
# Third-party files, unchanged (vendor/README.md names each, its version and checksum);
# its README is not served, the licence is.
VENDOR_DIR = UI_DIR / "vendor"
VENDOR = {
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "uPlot.LICENSE": "text/plain",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    **BROWSER_HEADERS,
    "Cache-Control": "no-store",
}


def add_dashboard_routes(app: web.Application, settings: Settings) -> None:
    ui = settings.ui_path
    if ui is None:
        return

    @public
    async def to_index(request: web.Request) -> web.Response:
        raise web.HTTPFound(ui + "/")

    router = app.router
    for method, path, handler in (
        ("GET", ui, to_index),
        ("GET", ui + "/", page_handler(_page(settings), SECURITY_HEADERS)),
        ("GET", ui + "/static/{name}", files_handler(UI_DIR, STATIC, SECURITY_HEADERS)),
        ("GET", ui + "/static/vendor/{name}", files_handler(VENDOR_DIR, VENDOR, SECURITY_HEADERS)),
        ("POST", ui + "/session", public(sign_in)),
        ("DELETE", ui + "/session", public(sign_out)),
    ):
        router.add_route(method, path, handler, expect_handler=defer_continue)


def _page(settings: Settings) -> bytes:
    """index.html with the gateway's paths in data attributes (escaped: they are
    settings, but the page treats nothing as trusted)."""
    assert settings.ui_path is not None
    values = {
        "UI": settings.ui_path,
        "ADMIN": settings.admin_path,
        "API": settings.base_path,
        "CURRENCY": settings.currency,
    }
    text = (UI_DIR / "index.html").read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", html.escape(value, quote=True))
    return text.encode()
