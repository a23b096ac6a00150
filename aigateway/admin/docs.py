"""/openapi.json, and its viewers at /docs (Swagger UI) and /redoc (ReDoc), served
offline from files vendored in docs_assets/ (see VENDORED.md there)."""

from __future__ import annotations

from pathlib import Path

import orjson
from aiohttp import web

from ..http.auth import public
from ..http.expect import defer_continue
from ..http.webfiles import BROWSER_HEADERS, files_handler, page_handler
from ..settings import DOCS_PATH, Settings
from .openapi import openapi_document

ASSETS = Path(__file__).parent / "docs_assets"
FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "docs.js": "text/javascript",
    "redoc.js": "text/javascript",
}
# The viewers style their elements inline and ReDoc searches in a worker it makes from a
# blob: allowed on these pages only; scripts still come from this origin alone.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline';"
        " img-src 'self' data:; font-src 'self' data:; connect-src 'self';"
        " worker-src 'self' blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    **BROWSER_HEADERS,
}
CACHED = {**HEADERS, "Cache-Control": "public, max-age=86400"}  # (versioned, vendored)
_PAGE = """<!doctype html>
<html lang="en" data-spec="/openapi.json">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aigateway API{title}</title>
<link rel="icon" href="data:,">
{head}
</head>
<body>
{body}
</body>
</html>
"""


def add_docs_routes(app: web.Application, settings: Settings) -> None:
    document = orjson.dumps(openapi_document(settings))
    swagger = _PAGE.format(
        title="",
        head=f'<link rel="stylesheet" href="{DOCS_PATH}/static/swagger-ui.css">\n'
        f'<script src="{DOCS_PATH}/static/swagger-ui-bundle.js" defer></script>\n'
        f'<script src="{DOCS_PATH}/static/docs.js" defer></script>',
        body='<div id="swagger"></div>',
    ).encode()
    redoc = _PAGE.format(
        title=" reference",
        head=f'<script src="{DOCS_PATH}/static/redoc.standalone.js" defer></script>\n'
        f'<script src="{DOCS_PATH}/static/redoc.js" defer></script>',
        body='<div id="redoc"></div>',
    ).encode()

    @public
    async def spec(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    for path, handler in (
        ("/openapi.json", spec),
        (DOCS_PATH, page_handler(swagger, HEADERS)),
        ("/redoc", page_handler(redoc, HEADERS)),
        (DOCS_PATH + "/static/{name}", files_handler(ASSETS, FILES, CACHED)),
    ):
        app.router.add_route("GET", path, handler, expect_handler=defer_continue)
