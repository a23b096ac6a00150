"""Whether the one upstream answers, asked at most once per check interval.

With several upstreams the pool's background checks know each one's state; with one there
are no checks (nothing to fail over to), so /health/ollama, /admin/upstreams and the
start-up warning ask it here (and /admin/upstreams its loaded models, alike: Shared).
Callers share the last answer while it is younger than the interval, and a probe in
flight: a crowd of anonymous callers costs the upstream (a paid cloud API, with the
server's key) one request per interval, not one each."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import orjson

from ..records import Alert, AlertSink
from .config import UpstreamConfig
from .transport import TimedOut, UpstreamFailed

log = logging.getLogger("aigateway.upstreams")

PROBE_TIMEOUT_S = 5.0
T = TypeVar("T")

# GET one of the upstream's own documents: status and body (Pool.fetch).
Fetch = Callable[[str, float], Awaitable[tuple[int, bytes]]]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    state: str  # ok, unreachable or unhealthy
    code: int  # the HTTP status /health/ollama answers with
    details: dict[str, object] = field(default_factory=dict)  # for admins only
    at: float = 0.0  # time.monotonic() when it was asked

    @property
    def up(self) -> bool:
        return self.code == 200


class Shared(Generic[T]):
    """An answer asked at most once per `max_age_s`: callers share the last one while it
    is younger than that, and one ask in flight (shielded: one caller leaving does not
    cancel what the others wait for)."""

    def __init__(
        self,
        ask: Callable[[], Awaitable[T]],
        max_age_s: float,
        answered: Callable[[T], None] | None = None,
    ) -> None:
        self._ask = ask
        self.max_age_s = max_age_s
        self._answered = answered  # told each new answer, before it is shared
        self._last: tuple[float, T] | None = None  # (time.monotonic() when asked, answer)
        self._asking: asyncio.Future[T] | None = None

    async def get(self, fresh: bool = False) -> T:
        """The last answer while it is young enough (`fresh`: not older than now), else a
        new ask shared with everyone asking meanwhile."""
        last = self._last
        if last is not None and not fresh and time.monotonic() - last[0] < self.max_age_s:
            return last[1]
        if self._asking is None:
            started = time.monotonic()
            self._asking = asyncio.ensure_future(self._ask())
            self._asking.add_done_callback(lambda asking: self._asked(asking, started))
        return await asyncio.shield(self._asking)

    def _asked(self, asking: asyncio.Future[T], started: float) -> None:
        self._asking = None
        if asking.cancelled() or asking.exception() is not None:
            return
        if self._answered is not None:
            self._answered(asking.result())
        self._last = (started, asking.result())


class OneProbe:
    def __init__(
        self,
        upstream: UpstreamConfig,
        fetch: Fetch,
        max_age_s: float,
        alerts: AlertSink | None = None,
    ) -> None:
        self.upstream = upstream
        self._alerts = alerts
        self._fetch = fetch
        self._last: ProbeResult | None = None
        self._shared = Shared(self._ask, max_age_s, self._answered)

    async def result(self, fresh: bool = False) -> ProbeResult:
        """The last answer while it is young enough (`fresh`: not older than now, for an
        admin troubleshooting), else a new probe shared with everyone asking meanwhile."""
        return await self._shared.get(fresh)

    def _answered(self, now: ProbeResult) -> None:
        if self._last is not None and self._last.up != now.up:
            reason = None if now.up else str(now.details["error"])
            if reason is None:
                log.warning("upstream %s answers again", self.upstream.name)
            else:
                log.warning("upstream %s is out: %s", self.upstream.name, reason)
            if self._alerts is not None:
                self._alerts(upstream_alert(self.upstream.name, reason))
        self._last = now

    async def _ask(self) -> ProbeResult:
        # A cloud API has no /api/version: its model list says whether it answers (what
        # the checks of several upstreams ask it).
        upstream = self.upstream
        ollama = upstream.kind == "ollama"
        probe = "/api/version" if ollama else "/models"
        who = "Ollama" if ollama else f"upstream {upstream.name}"
        details: dict[str, object] = (
            {"ollama_url": upstream.url}
            if ollama
            else {"upstream": upstream.name, "url": upstream.url}
        )
        started = time.monotonic()
        try:
            status, body = await self._fetch(probe, PROBE_TIMEOUT_S)
        except (UpstreamFailed, CheckFailed) as exc:
            said = "timed out" if isinstance(exc, TimedOut) else str(exc) or type(exc).__name__
            details["error"] = f"{who} did not answer: {said}"
            return ProbeResult("unreachable", 503, details, started)
        details["rtt_ms"] = round((time.monotonic() - started) * 1000, 2)
        version = _version(body) if ollama else None
        if status != 200 or (ollama and version is None):
            details["error"] = f"{who} answered {probe} with status {status}"
            return ProbeResult("unhealthy", 503, details, started)
        if ollama:
            details["ollama_version"] = version
        return ProbeResult("ok", 200, details, started)


class CheckFailed(Exception):
    """An upstream's answer to a check cannot be read, or it gave none; the message says why."""


def _version(body: bytes) -> str | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    version = doc.get("version") if isinstance(doc, dict) else None
    return version if isinstance(version, str) else None


# An upstream's alerts are de-duplicated per this long: gateways that each see it go
# down raise one alert, and one that flaps raises one "down" and one "up" a window.
UPSTREAM_ALERT_WINDOW_S = 600


def upstream_alert(name: str, reason: str | None) -> Alert:
    """`upstream_down` (with why) or, for `reason` None, `upstream_up`."""
    window = str(int(time.time() // UPSTREAM_ALERT_WINDOW_S))
    if reason is None:
        return Alert(
            "upstream_up",
            f"upstream:{name}",
            window,
            f"upstream {name} is back",
            {"upstream": name},
        )
    return Alert(
        "upstream_down",
        f"upstream:{name}",
        window,
        f"upstream {name} is out: {reason}",
        {"upstream": name, "reason": reason},
    )
