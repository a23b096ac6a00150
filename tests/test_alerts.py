"""Alerts: posted to a real loopback receiver that checks each signature, from a real
SQLite file and a real PostgreSQL outbox; once per kind, subject and period; kept across
a restart; sent once by two gateways; never to addresses they may not reach."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer
from sqlalchemy.ext.asyncio import create_async_engine

from aigateway import Settings, create_app
from aigateway.access.budgets import Budgets
from aigateway.alerts.guard import refusal
from aigateway.alerts.outbox import AlertOutbox
from aigateway.alerts.send import Poster, SendFailed
from aigateway.alerts.watch import RefusalWatch, expiring_alerts
from aigateway.alerts.webhook import EVENT_HEADER, SIGNATURE_HEADER
from aigateway.db.migrate import SCHEMA_VERSION
from aigateway.db.store import Store
from aigateway.db.url import database_from
from aigateway.errors import Refused
from aigateway.records import DAY, Alert, Budget, BudgetLine, KeyLimits, KeyRecord, Price
from aigateway.settings import SettingsError
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.upstreams.probe import UPSTREAM_ALERT_WINDOW_S

from .conftest import make_key
from .helpers import at_revision, clock_room, eventually, minute_room, old_key

SECRET = "s" * 40
BILLION = 10**9  # nano-units: 1 USD
CHAT = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}'


@dataclass
class Receiver:
    """A webhook receiver: what it was sent, and the statuses it answers in turn."""

    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    server: TestServer | None = None

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            self.posts.append((dict(request.headers), await request.read()))
            return web.Response(status=self.answers.pop(0) if self.answers else 200)

        async def moved(request: web.Request) -> web.Response:
            raise web.HTTPFound("/hook")

        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_post("/moved", moved)
        return app

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        assert self.server is not None
        return f"http://{host}:{self.server.port}{path}"

    def documents(self) -> list[dict[str, object]]:
        return [orjson.loads(body) for _, body in self.posts]


def verified(
    headers: dict[str, str], body: bytes, secret: str = SECRET, now: float | None = None
) -> bool:
    """What a receiver does (docs/alerts.md shows the same): recompute the HMAC, and
    refuse a signature older than five minutes."""
    parts = dict(p.split("=", 1) for p in headers[SIGNATURE_HEADER].split(","))
    mac = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256)
    fresh = abs((now or time.time()) - int(parts["t"])) < 300
    return fresh and hmac.compare_digest(mac.hexdigest(), parts["v1"])


@pytest.fixture
async def receiver(aiohttp_server: AiohttpServer) -> Receiver:
    found = Receiver()
    found.server = await aiohttp_server(found.app(), host="127.0.0.1")
    return found


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    opened = await Store.open(database)
    yield opened
    await opened.close()


@pytest.fixture
async def poster() -> AsyncIterator[Poster]:
    async with Poster.open(allow_private=True) as opened:
        yield opened


def alert(n: int = 1, kind: str = "budget_alert") -> Alert:
    return Alert(kind, f"user:{n}", "monthly@0", f"user {n} has spent a lot", {"n": n})


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def outbox_for(store: Store, receiver: Receiver, poster: Poster, **options: object) -> AlertOutbox:
    urls = {kind: receiver.url() for kind in ("budget_alert", "budget_exhausted")}
    options.setdefault("secret", SECRET)
    return AlertOutbox(store, urls, poster, **options)  # type: ignore[arg-type]


# --- the webhook: signed JSON, the Slack form, once per period ----------------------------


async def test_an_alert_is_posted_signed_once_per_period(
    store: Store, receiver: Receiver, poster: Poster
) -> None:
    outbox = outbox_for(store, receiver, poster)
    outbox.raise_alert(alert(1))
    outbox.raise_alert(alert(1))  # raised twice in its period: one alert
    outbox.raise_alert(alert(2))
    outbox.raise_alert(alert(3, kind="upstream_down"))  # a kind without a URL: not raised
    assert await outbox.round() == 2
    assert [d["subject"] for d in receiver.documents()] == ["user:1", "user:2"]
    headers, body = receiver.posts[0]
    assert verified(headers, body)
    assert not verified(headers, body + b" ")  # a changed body fails the check
    assert not verified(headers, body, "t" * 40)
    assert headers[EVENT_HEADER] == "budget_alert|user:1|monthly@0"
    assert headers["Content-Type"] == "application/json"
    document = receiver.documents()[0]
    assert document["kind"] == "budget_alert" and document["details"] == {"n": 1}
    assert document["text"] == "user 1 has spent a lot"
    # Raised again later (another gateway, a restart): its row is there, nothing is sent.
    outbox.raise_alert(alert(1))
    assert await outbox.round() == 0
    assert len(receiver.posts) == 2
    assert await store.alert_states() == {"sent": 2}


async def test_the_slack_form_is_text(store: Store, receiver: Receiver, poster: Poster) -> None:
    outbox = outbox_for(store, receiver, poster, form="slack", secret=None)
    outbox.raise_alert(alert(7))
    outbox.raise_alert(alert(8)._replace(text="upstream x is out: <!channel> & <http://a|b>"))
    assert await outbox.round() == 2
    headers, body = receiver.posts[0]
    assert orjson.loads(body) == {"text": "aigateway: user 7 has spent a lot"}
    assert SIGNATURE_HEADER not in headers
    # Slack's markup in a server string is shown, not followed (no ping, no link).
    assert orjson.loads(receiver.posts[1][1]) == {
        "text": "aigateway: upstream x is out: &lt;!channel&gt; &amp; &lt;http://a|b&gt;"
    }


# --- retries, restarts, several gateways --------------------------------------------------


async def test_failures_are_retried_with_backoff_then_given_up(
    store: Store, receiver: Receiver, poster: Poster, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    outbox = outbox_for(
        store, receiver, poster, clock=clock, jitter=lambda: 1.0, first_retry_s=10.0,
        most_retry_s=25.0, most_attempts=4,
    )  # fmt: skip
    receiver.answers = [500, 503]
    outbox.raise_alert(alert(1))
    assert await outbox.round() == 1  # tried: 500
    clock.now += 9.9
    assert await outbox.round() == 0  # not yet due: 10 s after the first try
    clock.now += 0.1
    assert await outbox.round() == 1  # tried: 503; the next in 20 s
    clock.now += 19.9
    assert await outbox.round() == 0
    clock.now += 0.1
    assert await outbox.round() == 1
    assert [verified(h, b, now=clock.now) for h, b in receiver.posts] == [True, True, True]
    assert not verified(*receiver.posts[0])  # signed at its (injected) time: old now
    assert len({h[SIGNATURE_HEADER] for h, _ in receiver.posts}) == 3  # signed at each try
    assert await store.alert_states() == {"sent": 1}

    # Backoff doubles up to its ceiling, with jitter between half and all of it.
    assert [outbox.backoff(n) for n in (1, 2, 3, 4)] == [10.0, 20.0, 25.0, 25.0]
    halved = outbox_for(store, receiver, poster, jitter=lambda: 0.0, first_retry_s=10.0)
    assert halved.backoff(1) == 5.0

    # An alert its receiver never takes is given up after the last try, with a log line.
    receiver.answers = [500] * 10
    outbox.raise_alert(alert(2))
    with caplog.at_level(logging.WARNING, "aigateway.alerts"):
        for _ in range(4):
            assert await outbox.round() == 1
            clock.now += 30
        assert await outbox.round() == 0
    assert await store.alert_states() == {"sent": 1, "dropped": 1}
    assert "gave up budget_alert|user:2|monthly@0 (budget_alert) after 4 tries" in caplog.text
    assert "answered 500" in caplog.text


async def test_alerts_raised_before_a_stop_are_sent_after_the_restart(
    database: str, receiver: Receiver, poster: Poster
) -> None:
    first = await Store.open(database)
    try:
        outbox = outbox_for(first, receiver, poster)
        outbox.raise_alert(alert(1))
        outbox.raise_alert(alert(2))
        await outbox.close()  # stopped before it posted them
    finally:
        await first.close()
    assert receiver.posts == []
    again = await Store.open(database)
    try:
        assert await outbox_for(again, receiver, poster).round() == 2
    finally:
        await again.close()
    assert sorted(str(d["subject"]) for d in receiver.documents()) == ["user:1", "user:2"]


async def test_alerts_wait_in_memory_while_the_database_is_busy(
    db_path: str, receiver: Receiver, poster: Poster
) -> None:
    store = await Store.open(db_path, busy_timeout_s=0.1)
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        outbox = outbox_for(store, receiver, poster)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the database
        outbox.raise_alert(alert(1))
        assert await outbox.round() == 0
        other.execute("ROLLBACK")
        assert await outbox.round() == 1
    finally:
        other.close()
        await store.close()
    assert [d["subject"] for d in receiver.documents()] == ["user:1"]


@pytest.mark.usefixtures("postgres")
async def test_two_gateways_on_one_postgresql_send_each_alert_once(
    pg_url: str, receiver: Receiver, poster: Poster
) -> None:
    stores = [await Store.open(pg_url), await Store.open(pg_url)]
    try:
        outboxes = [outbox_for(s, receiver, poster) for s in stores]
        for outbox in outboxes:  # both see the same 25 events (and 5 of their own)
            for n in range(25):
                outbox.raise_alert(alert(n))
        for n in range(25, 30):
            outboxes[0].raise_alert(alert(n))
        for n in range(30, 35):
            outboxes[1].raise_alert(alert(n))
        posted = await asyncio.gather(*(o.round() for o in outboxes))
        assert sum(posted) == 35  # between them, each once
        await asyncio.gather(*(o.round() for o in outboxes))
    finally:
        for opened in stores:
            await opened.close()
    subjects = [str(d["subject"]) for d in receiver.documents()]
    assert sorted(subjects) == sorted(f"user:{n}" for n in range(35))


# --- where alerts may go ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("192.168.0.1", "a private address"),
        ("172.16.0.1", "a private address"),
        ("fd12::1", "a private address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("224.0.0.1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("240.0.0.1", "a reserved address"),
        ("100.64.0.1", "a non-public address"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_which_addresses_alerts_may_go_to(address: str, why: str | None) -> None:
    assert refusal(ipaddress.ip_address(address), allow_private=False) == why


def test_metadata_addresses_are_refused_even_when_private_ones_are_allowed() -> None:
    allowed = [refusal(ipaddress.ip_address(a), True) for a in ("127.0.0.1", "10.0.0.1")]
    assert allowed == [None, None]
    for address in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"):
        assert refusal(ipaddress.ip_address(address), True) == "a cloud metadata address"


async def test_a_name_that_resolves_to_loopback_is_refused_after_dns(receiver: Receiver) -> None:
    assert "127.0.0.1" in {a[4][0] for a in socket.getaddrinfo("localhost", 80)}
    async with Poster.open(allow_private=False) as strict:
        for host in ("localhost", "127.0.0.1", "[::ffff:127.0.0.1]"):
            with pytest.raises(SendFailed, match="loopback address"):
                await strict.post(receiver.url(host=host), b"{}", {})
        with pytest.raises(SendFailed, match="cloud metadata address"):
            await strict.post("http://169.254.169.254/latest", b"{}", {})
    assert receiver.posts == []


async def test_an_alert_to_a_refused_address_is_tried_again_later(
    store: Store, receiver: Receiver
) -> None:
    clock = Clock()
    async with Poster.open(allow_private=False) as strict:
        outbox = outbox_for(store, receiver, strict, clock=clock, jitter=lambda: 1.0)
        outbox.raise_alert(alert(1))
        assert await outbox.round() == 1  # tried, refused before any connection
        clock.now += 10
        assert await outbox.round() == 1  # the next try, 10 s later: refused again
    assert receiver.posts == []
    assert await store.alert_states() == {"due": 1}


async def test_a_redirect_is_not_followed(receiver: Receiver, poster: Poster) -> None:
    with pytest.raises(SendFailed, match="answered 302, a redirect"):
        await poster.post(receiver.url("/moved"), b"{}", {})
    assert receiver.posts == []


async def test_a_slow_receiver_times_out(aiohttp_server: AiohttpServer) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_post("/", slow)
    server = await aiohttp_server(app, host="127.0.0.1")
    async with Poster.open(allow_private=True, total_timeout_s=0.2) as quick:
        with pytest.raises(SendFailed, match="no answer in time"):
            await quick.post(f"http://127.0.0.1:{server.port}/", b"{}", {})


# --- what raises each kind --------------------------------------------------------------


def test_a_budget_raises_its_alert_and_its_exhaustion_once_a_period() -> None:
    raised: list[Alert] = []
    budgets = Budgets("USD", raised.append)
    line = BudgetLine("user:3", "user 'acme'", Budget(100_000_000, "daily", 80))  # 100 USD
    day = 20_000 * DAY + 3600.0
    budgets.settle((line,), 0, 70 * BILLION, day)  # 70%: nothing
    assert raised == []
    budgets.settle((line,), 0, 10 * BILLION, day)  # 80%: the alert
    budgets.settle((line,), 0, 10 * BILLION, day)
    budgets.settle((line,), 0, 10 * BILLION, day + 60)  # 100%: used up
    budgets.settle((line,), 0, 10 * BILLION, day + 120)
    assert [(a.kind, a.subject, a.period) for a in raised] == [
        ("budget_alert", "user:3", f"daily@{20_000 * DAY}"),
        ("budget_exhausted", "user:3", f"daily@{20_000 * DAY}"),
    ]
    assert raised[0].text == "user 'acme' has reached 80% of its daily budget: 80.000000 of" \
        " 100.000000 USD"  # fmt: skip
    budgets.settle((line,), 0, 100 * BILLION, day + DAY)  # the next day: both again
    assert [a.kind for a in raised[2:]] == ["budget_alert", "budget_exhausted"]
    assert Budgets("USD")._alerts is None  # off: nothing is built


def test_n_refusals_of_a_key_within_m_minutes() -> None:
    raised: list[Alert] = []
    clock = Clock(600 * 1000.0)
    watch = RefusalWatch(3, 5, raised.append, clock)
    key = _key(9)
    watch.refused(Refused.RATE_LIMIT, key)
    clock.now += 301  # that one falls out of the 5 minutes
    watch.refused(Refused.RATE_LIMIT, key)
    watch.refused(Refused.RATE_LIMIT, key)
    assert raised == []
    watch.refused(Refused.TOKEN_QUOTA, key)
    assert [(a.kind, a.subject) for a in raised] == [("key_refusals", "key:9")]
    assert raised[0].details["last_reason"] == "token_quota"
    for _ in range(6):  # more in the same window: no second alert
        watch.refused(Refused.RATE_LIMIT, key)
    assert len(raised) == 1
    clock.now += 300
    for _ in range(3):
        watch.refused(Refused.RATE_LIMIT, key)
    assert len(raised) == 2 and raised[1].period != raised[0].period


def test_keys_about_to_expire() -> None:
    now = 1_800_000_000.0
    keys = [
        _key(1, expires_at=now + 2 * DAY),
        _key(2, expires_at=now + 9 * DAY),
        _key(3, expires_at=now - 1),
        _key(4),
        replace(_key(5, expires_at=now + DAY), revoked=True),
    ]
    found = expiring_alerts(keys, 7, now)
    assert [(a.subject, a.period) for a in found] == [("key:1", str(int(now + 2 * DAY)))]
    assert found[0].text == "key alice/k1 expires at 2027-01-17 08:00 UTC"


def _key(n: int, expires_at: float | None = None) -> KeyRecord:
    return KeyRecord(
        n, "alice", f"k{n}", "0" * 64, "aig_x", "user", 0.0, expires_at, None, False, None
    )


# --- the gateway: every kind from real requests and checks --------------------------------


async def test_a_gateway_raises_each_kind(
    aiohttp_server: AiohttpServer,
    receiver: Receiver,
    fake: FakeOllama,
    upstream: TestServer,
    db_path: str,
    dead_port: int,
) -> None:
    url = str(upstream.make_url("")).rstrip("/")
    settings = Settings(
        ollama_base_url=f"{url},http://127.0.0.1:{dead_port}",
        token_db_path=db_path,
        alert_webhook_url=receiver.url(),
        alert_webhook_secret=SECRET,
        alert_allow_private_urls=True,
        alert_refusals=(3, 1),
        alert_key_expiry_days=7,
    )
    key = await make_key(db_path, "acme", "laptop", expires_at=time.time() + 3 * DAY)
    limited = await make_key(db_path, "acme", "batch", limits=KeyLimits(rpm=1))
    admin = await make_key(db_path, "root", "ops", "admin")
    store = await Store.open(db_path)
    try:
        await store.set_user_budget("acme", Budget(30_000, "monthly", 50))
        await store.set_price(Price("llama3*", 10_000))
    finally:
        await store.close()
    # One 10-minute window of upstream alerts for both starts, one minute for rpm=1.
    await clock_room(UPSTREAM_ALERT_WINDOW_S, 30)
    await minute_room(15)
    gateway = await aiohttp_server(create_app(settings))
    async with ClientSession() as session:
        # 3 of 0.01 USD spend the 0.03 budget, then 402; 1 a minute: 3 refused.
        for secret, times in ((key, 5), (limited, 4)):
            for _ in range(times):
                async with session.post(
                    str(gateway.make_url("/api/chat")),
                    data=CHAT,
                    headers={"Authorization": f"Bearer {secret}"},
                ) as resp:
                    await resp.read()

    def kinds() -> list[str]:
        return sorted(str(d["kind"]) for d in receiver.documents())

    wanted = ["budget_alert", "budget_exhausted", "key_expiring", "key_refusals", "upstream_down"]
    await eventually(lambda: kinds() == wanted, timeout=10)
    assert all(verified(h, b) for h, b in receiver.posts)
    texts = {str(d["kind"]): str(d["text"]) for d in receiver.documents()}
    assert texts["budget_exhausted"] == (
        "user 'acme' has used up its monthly budget: 0.030000 of 0.030000 USD"
    )
    assert texts["key_refusals"].startswith("key acme/batch was refused 3 times within 1 min")
    assert texts["upstream_down"].startswith("upstream ollama2 is out: cannot reach it")
    async with (
        ClientSession(headers={"Authorization": f"Bearer {admin}"}) as session,
        session.get(str(gateway.make_url("/health"))) as resp,
    ):
        health = await resp.json()
    assert health["alerts"] == {
        "sent": 5, "given_up": 0, "waiting_in_memory": 0, "outbox": {"sent": 5}
    }  # fmt: skip
    await gateway.close()
    # Started again: what it raises again was sent before, so nothing more is posted.
    again = await aiohttp_server(create_app(settings))
    await asyncio.sleep(0.5)
    await again.close()
    assert kinds() == wanted


@pytest.mark.usefixtures("postgres")
async def test_two_gateways_that_see_an_upstream_go_down_post_it_once(
    aiohttp_server: AiohttpServer,
    receiver: Receiver,
    upstream: TestServer,
    pg_url: str,
    dead_port: int,
) -> None:
    url = str(upstream.make_url("")).rstrip("/")
    settings = Settings(
        ollama_base_url=f"{url},http://127.0.0.1:{dead_port}",
        database_url=pg_url,
        alert_webhook_url=receiver.url(),
        alert_webhook_secret=SECRET,
        alert_allow_private_urls=True,
    )
    await clock_room(UPSTREAM_ALERT_WINDOW_S, 30)
    gateways = [await aiohttp_server(create_app(settings)) for _ in range(2)]
    await eventually(lambda: len(receiver.posts) >= 1, timeout=10)
    await asyncio.sleep(1.0)  # time for a second post, were there one
    for gateway in gateways:
        await gateway.close()
    assert [d["kind"] for d in receiver.documents()] == ["upstream_down"]
    assert all(verified(h, b) for h, b in receiver.posts)


def test_alert_settings() -> None:
    base = {"ALERT_WEBHOOK_URL": "https://hooks.example.com/x", "ALERT_WEBHOOK_SECRET": SECRET}
    read = Settings.from_mapping(base)
    assert set(read.alert_urls) == {
        "budget_alert", "budget_exhausted", "upstream_down", "upstream_up", "key_expiring",
        "key_refusals",
    }  # fmt: skip
    assert SECRET not in repr(read) and "hooks.example.com" not in repr(read)
    assert Settings().alert_urls == {}  # off by default
    some = Settings.from_mapping(
        {**base, "ALERT_REFUSALS": "off", "ALERT_UPSTREAM_URL": "off",
         "ALERT_BUDGET_URL": "https://budgets.example.com/"}
    )  # fmt: skip
    assert some.alert_urls == {
        "budget_alert": "https://budgets.example.com/",
        "budget_exhausted": "https://budgets.example.com/",
        "key_expiring": "https://hooks.example.com/x",
    }
    assert Settings.from_mapping({**base, "ALERT_REFUSALS": "20/5"}).alert_refusals == (20, 5)
    for variable, value, expected in [
        ("ALERT_REFUSALS", "20", "expected N/M"),
        ("ALERT_REFUSALS", "0/5", "expected N/M"),
        ("ALERT_REFUSALS", "5/0", "expected N/M"),
        ("ALERT_WEBHOOK_URL", "ftp://x", "expected an http:// or https:// URL"),
        ("ALERT_BUDGET_URL", "nowhere", "expected an http:// or https:// URL"),
        ("ALERT_WEBHOOK_FORMAT", "xml", "ALERT_WEBHOOK_FORMAT"),
        ("ALERT_WEBHOOK_SECRET", "short", "at least 32"),
    ]:
        with pytest.raises(SettingsError, match=expected):
            Settings.from_mapping({**base, variable: value})
    with pytest.raises(SettingsError, match="ALERT_WEBHOOK_SECRET: expected a secret"):
        Settings.from_mapping({"ALERT_WEBHOOK_URL": "https://hooks.example.com/x"})
    slack = {"ALERT_WEBHOOK_URL": "https://hooks.example.com/x", "ALERT_WEBHOOK_FORMAT": "slack"}
    assert Settings.from_mapping(slack).alert_webhook_secret is None


async def test_a_database_of_the_release_before_upgrades_in_place(
    database: str, receiver: Receiver, poster: Poster
) -> None:
    """A database at the revision before the outbox's with a key keeps it and gains the
    outbox (the one before the head: the outbox's revision is the latest)."""
    engine = create_async_engine(database_from(database).url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(at_revision(SCHEMA_VERSION - 1))
        async with engine.begin() as conn:
            await conn.run_sync(old_key)
    finally:
        await engine.dispose()
    store = await Store.open(database)
    try:
        assert (await store.get_key(1)).name == "old"
        outbox = outbox_for(store, receiver, poster)
        outbox.raise_alert(alert(1))
        assert await outbox.round() == 1
    finally:
        await store.close()
