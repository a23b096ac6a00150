"""The OpenAPI document: valid OpenAPI 3.1, and describing exactly the routes the app
has (a route added without its description, or described but gone, fails here)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.web import Request
from openapi_spec_validator import validate

from aigateway import Settings, create_app
from aigateway.admin.openapi import openapi_document


def _routes(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, info
        found.add((route.method.upper(), path))
    return found


def _described(document: dict[str, object]) -> set[tuple[str, str]]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {(method.upper(), path) for path, operations in paths.items() for method in operations}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"base_path": "/ollama/api", "admin_path": "/gw-admin", "ui_path": "/console"},
        {"ui_path": None},
        {"metrics": "on"},
        {"metrics": "admin"},
    ],
)
def test_the_document_is_valid_and_describes_every_route_and_no_other(
    changes: dict[str, Any],
) -> None:
    settings = replace(Settings(), **changes)
    document = openapi_document(settings)
    validate(document)  # raises on anything OpenAPI 3.1 does not allow
    app = create_app(settings)
    assert _routes(app) == _described(document)


async def test_the_document_and_its_viewers_are_served(
    anon: TestClient[Request, None],
) -> None:
    resp = await anon.get("/openapi.json")
    assert resp.status == 200
    document = await resp.json()
    assert document["openapi"] == "3.1.0"
    tags = {tag for ops in document["paths"].values() for op in ops.values() for tag in op["tags"]}
    assert {"Ollama", "OpenAI-compatible", "Anthropic-compatible", "Admin"} <= tags
    schemes = document["components"]["securitySchemes"]
    assert (
        schemes["bearerKey"]["scheme"] == "bearer"
        and schemes["apiKeyHeader"]["name"] == "x-api-key"
    )
    for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        resp = await anon.get(page)
        assert resp.status == 200 and script in await resp.text()
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        asset = await anon.get(f"/docs/static/{script}")
        assert asset.status == 200 and len(await asset.read()) > 100_000  # served from the package
    assert (await anon.get("/docs/static/../app.py")).status == 404
    assert (await anon.get("/docs/static/nope.js")).status == 404
