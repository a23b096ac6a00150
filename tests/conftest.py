from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aigateway import Settings, create_app
from aigateway.store import KeyLimits, Role, Store
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.testing.pgserver import PostgresServer

MakeKey = Callable[..., Awaitable[str]]


async def make_key(
    db_path: str,
    user: str = "alice",
    name: str = "laptop",
    role: Role = "user",
    expires_at: float | None = None,
    limits: KeyLimits | None = None,
    models: list[str] | None = None,
) -> str:
    """Create a key through its own connection, as the CLI would."""
    store = await Store.open(db_path)
    try:
        _, secret = await store.create_key(
            user, name, role, expires_at, limits or KeyLimits(), models
        )
    finally:
        await store.close()
    return secret


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama()


@pytest.fixture
async def upstream(aiohttp_server, fake: FakeOllama) -> TestServer:  # type: ignore[no-untyped-def]
    return await aiohttp_server(fake.app())


@pytest.fixture
def db_path(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return str(tmp_path / "tokens.db")


@pytest.fixture
def settings(upstream: TestServer, db_path: str) -> Settings:
    return Settings(ollama_base_url=str(upstream.make_url("")).rstrip("/"), token_db_path=db_path)


@pytest.fixture
async def key(db_path: str) -> str:
    return await make_key(db_path)


@pytest.fixture
async def gateway(aiohttp_server, settings: Settings, key: str, admin_key: str) -> TestServer:  # type: ignore[no-untyped-def]
    return await aiohttp_server(create_app(settings))


@pytest.fixture
async def client(aiohttp_client, gateway: TestServer, key: str) -> TestClient:  # type: ignore[no-untyped-def]
    return await aiohttp_client(gateway, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
async def admin_key(db_path: str) -> str:
    return await make_key(db_path, "root", "ops", "admin")


@pytest.fixture
async def admin(aiohttp_client, gateway: TestServer, admin_key: str) -> TestClient:  # type: ignore[no-untyped-def]
    """A client with an admin key, for model management and the admin API."""
    return await aiohttp_client(gateway, headers={"Authorization": f"Bearer {admin_key}"})


@pytest.fixture
async def anon(aiohttp_client, gateway: TestServer) -> TestClient:  # type: ignore[no-untyped-def]
    return await aiohttp_client(gateway)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (each test gets its own database)."""
    server = PostgresServer().start()
    yield server
    server.close()


_database_numbers = itertools.count(1)


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """DATABASE_URL of a fresh, empty PostgreSQL database."""
    name = f"test_{next(_database_numbers)}"
    postgres.sql(f"CREATE DATABASE {name}")
    yield postgres.url(name)
    postgres.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A new database of each kind: a SQLite file path, or a PostgreSQL DATABASE_URL."""
    if request.param == "sqlite":
        return str(tmp_path / "tokens.db")
    url: str = request.getfixturevalue("pg_url")
    return url
