"""The upstreams as the relay sees them: which may serve a request, in what order, and
whether each is up.

Order among those that serve a request's model and route: one where the model is loaded
already (Ollama's /api/ps: nobody waits for a cold load when a warm copy exists), then
the least busy relative to its max_concurrent, then the one picked least relative to its
weight (a smooth weighted round robin). With several upstreams, a check every
UPSTREAM_CHECK_INTERVAL seconds (an Ollama's /api/tags and /api/ps, a cloud API's
/models) finds models and health; a failed check, a refused connection or a 502/503/504
takes an upstream out for a cool-down that doubles while it keeps failing (2 s up to a
minute), and a passing check brings it back. A gateway with one upstream checks nothing
and always tries it, as it always did (/health/ollama asks it, and /admin/upstreams its
loaded models, each at most once an interval: probe.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple

import orjson

from ..access.allowlist import ENTRY_NAMES, identity, model_allowed
from ..errors import BadRequest, ModelNotAllowed, NotFound, Refused, ServiceUnavailable
from ..protocol.body import first_text_field
from ..protocol.routes import RelayRoute
from ..records import NORMAL_PRIORITY, AlertSink
from .config import UpstreamConfig, auth_headers
from .probe import CheckFailed, OneProbe, Shared, upstream_alert
from .queue import FairQueue
from .transport import ConnectFailed, TimedOut, Transport, UpstreamFailed

log = logging.getLogger("aigateway.upstreams")

CHECK_TIMEOUT_S = 5.0
COOL_DOWN_FIRST_S = 2.0
COOL_DOWN_MOST_S = 60.0
# Answers that mean "not now" rather than "not this request": failed over while nothing
# has reached the client, and counted against the upstream.
FAILOVER_STATUSES = frozenset({502, 503, 504})
# The /v1 routes a cloud upstream serves, by kind (paths as in routes.py).
CLOUD_ROUTES = {
    "openai": frozenset({"/chat/completions", "/embeddings", "/models", "/models/{model}"}),
    "anthropic": frozenset({"/messages", "/models"}),
}
# The header an admin names an upstream with, for model management with several.
UPSTREAM_HEADER = "X-Upstream"
MAX_LISTED = 10_000  # models kept from one upstream's list
MAX_LIST_BYTES = 16 * 1024**2
RELIST_GAP_S = 5.0  # the least time between two reads of the lists for an unknown model


class Upstream:
    """One upstream: its configuration, and what the gateway knows of it now."""

    __slots__ = (
        "checked_at", "config", "digests", "failures", "in_flight", "latency_ms", "listed_at",
        "loaded", "models", "out_until", "picked", "reason", "running",
    )  # fmt: skip

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.in_flight = 0
        self.picked = 0  # requests sent to it so far (for the weighted order)
        # An Ollama's models by its /api/tags (canonical names); None until first listed.
        self.models: frozenset[str] | None = None
        self.digests: dict[str, str] = {}  # each listed model's digest, by canonical name
        self.listed_at = -math.inf  # (monotonic) when its list was last read
        self.loaded: frozenset[str] = frozenset()  # by its /api/ps
        self.running: tuple[LoadedModel, ...] = ()  # the same, as /api/ps describes them
        self.failures = 0  # in a row
        self.reason: str | None = None  # why it is out; None: up
        self.out_until = 0.0  # monotonic time its cool-down ends
        self.latency_ms: float | None = None  # of the last check
        self.checked_at: float | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def up(self) -> bool:
        return self.reason is None

    def fits(self, route: RelayRoute) -> bool:
        """Whether it answers this route at all: an Ollama every route, a cloud API only
        its own dialect's."""
        kind = self.config.kind
        if kind == "ollama":
            return True
        return route.dialect != "ollama" and route.path in CLOUD_ROUTES[kind]

    def serves(self, model: str, wanted: str | None = None) -> bool:
        """Whether it serves `model` (`wanted`: its canonical name, if made already)."""
        if self.config.models is not None:
            return model_allowed(model, self.config.models)
        return self.models is None or (wanted or identity(model)) in self.models

    def has_room(self) -> bool:
        most = self.config.max_concurrent
        return most is None or self.in_flight < most

    def busy(self) -> float:
        most = self.config.max_concurrent
        return self.in_flight / most if most else 0.0

    def view(self) -> dict[str, object]:
        """What /health/ollama shows an admin."""
        return {
            "name": self.name,
            "kind": self.config.kind,
            "url": self.config.url,
            "status": "up" if self.up else "out",
            "reason": self.reason,
            "out_for_s": (
                None if self.up else round(max(0.0, self.out_until - time.monotonic()), 1)
            ),
            "latency_ms": self.latency_ms,
            "checked_at": self.checked_at,
            "in_flight": self.in_flight,
            "max_concurrent": self.config.max_concurrent,
            "weight": self.config.weight,
            "models": (
                list(self.config.models)
                if self.config.models is not None
                else None
                if self.models is None
                else sorted(self.models)
            ),
            "loaded": sorted(self.loaded),
            # Each loaded model's memory on the GPU (bytes) and when it unloads (RFC 3339,
            # as Ollama said it), from the last check.
            "loaded_models": [m._asdict() for m in self.running],
        }


class Pool:
    def __init__(
        self,
        configs: Sequence[UpstreamConfig],
        check_interval: float,
        queue_timeout: float,
        transport: Transport,
        alerts: AlertSink | None = None,
    ) -> None:
        self.upstreams = [Upstream(config) for config in configs]
        self._alerts = alerts  # None: alerts are off
        self.queue: FairQueue[Upstream] = FairQueue(queue_timeout)
        self.by_name = {u.name: u for u in self.upstreams}
        # One upstream: no checks, never out (there is nothing to fail over to).
        self.single = len(self.upstreams) == 1
        # ...but /health/ollama and the start-up warning ask it, at most once an interval.
        self.probe: OneProbe | None = None
        if self.single:
            only = self.upstreams[0]
            self.probe = OneProbe(
                only.config,
                lambda path, timeout: self.fetch(only, path, timeout),
                check_interval,
                alerts,
            )
        # ...and an admin's view of it (the dashboard's Overview) its /api/ps, alike.
        self._loaded_of_one: Shared[None] | None = None
        if self.single and self.upstreams[0].config.kind == "ollama":
            self._loaded_of_one = Shared(lambda: self._read_loaded(only), check_interval)
        # Cloud APIs that only keys whose allow-list names their models may use.
        self.closed = any(u.config.closed for u in self.upstreams)
        self.check_interval = check_interval
        self.transport = transport  # how checks, lists and probes reach the upstreams
        # The models the upstreams last listed (canonical names), each upstream's and all:
        # the only model names /metrics makes labels of.
        self._lists: dict[str, frozenset[str]] = {}
        self.listed: frozenset[str] = frozenset()
        self._relisted_at = -math.inf
        # Whether anything uses the lists (/metrics, the response cache): else one upstream's
        # list is not read.
        self.wants_lists = False
        self._relisting: asyncio.Task[None] | None = None
        # The upstreams that answer each route (by its Ollama path), which never changes.
        self._fitting: dict[str, list[Upstream]] = {}

    def candidates(
        self,
        route: RelayRoute,
        model: str | None,
        named: str | None = None,
        closed_ok: bool = True,
    ) -> list[Upstream]:
        """The upstreams to try for a request, best first; at least one, else an error
        for the client (404 when none serves the model on this route, 503 with
        Retry-After when those that do are all out, 403 when only cloud APIs closed to
        the caller (`closed_ok` false: its allow-list does not name the model) do)."""
        if not closed_ok and model is not None and self.closed:
            return self._open_candidates(route, model, named)
        if self.single:
            return self.upstreams
        if named is not None:
            upstream = self.by_name.get(named)
            if upstream is None or not upstream.fits(route):
                asked = (
                    f"{UPSTREAM_HEADER} names no upstream of this gateway for this route"
                    if named
                    else f"with several upstreams, name one with {UPSTREAM_HEADER}"
                )
                raise BadRequest(f"{asked}; the upstreams are {', '.join(self.by_name)}")
            return [upstream]
        fitting = self._fitting.get(route.ollama_path)
        if fitting is None:
            fitting = [u for u in self.upstreams if u.fits(route)]
            self._fitting[route.ollama_path] = fitting
        wanted = None
        if model is not None:
            wanted = identity(model)
            serving = [u for u in fitting if u.serves(model, wanted)]
            if not serving:
                elsewhere = [
                    u.name for u in self.upstreams if u.serves(model, wanted) and not u.fits(route)
                ]
                if elsewhere:
                    raise NotFound(
                        f"model '{model}' is served by {', '.join(elsewhere)}, a cloud API,"
                        " which answers only its own routes (OpenAI: /v1/chat/completions,"
                        " /v1/embeddings; Anthropic: /v1/messages)"
                    )
                # A model no upstream lists (pulled a moment ago, or not at all): every
                # Ollama that discovers its models may try, and answers as it would alone.
                serving = [
                    u for u in fitting if u.config.kind == "ollama" and u.config.models is None
                ]
            fitting = serving
        if not fitting:
            raise NotFound(f"model '{model}' not found" if model else "no upstream for this route")
        up = [u for u in fitting if u.reason is None]  # (up, without the property's call)
        if not up:
            wait = min(u.out_until for u in fitting) - time.monotonic()
            # Which upstreams and why stay out of the answer (any key holder reads it;
            # an admin sees them in /health/ollama and the log).
            raise ServiceUnavailable(
                f"no upstream that serves {repr(model) if model else 'this route'} is up;"
                " try again later",
                {"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        if len(up) > 1:
            up.sort(
                key=lambda u: (
                    wanted not in u.loaded if wanted is not None else False,
                    u.busy(),
                    u.picked / u.config.weight,
                )
            )
        return up

    def _open_candidates(self, route: RelayRoute, model: str, named: str | None) -> list[Upstream]:
        """candidates() without the closed cloud APIs (which are paid with the gateway's
        key), or 403 when they are all that would serve the model."""
        found = self.candidates(route, model, named)
        usable = [u for u in found if not u.config.closed]
        if not usable:
            raise ModelNotAllowed(
                f"the model {model!r} is served by a cloud API paid with this gateway's"
                " key; only keys whose allow-list names it may use it",
                reason=Refused.MODEL_NOT_ALLOWED,
            )
        return usable

    def try_acquire(self, candidates: Sequence[Upstream]) -> Upstream | None:
        """A slot on the first of `candidates` (best first) with room now, or None. (No
        await: the usual case costs no coroutine.)"""
        for upstream in candidates:
            if upstream.has_room():
                upstream.in_flight += 1
                return upstream
        return None

    async def wait_for_slot(
        self, candidates: Sequence[Upstream], key_id: int, priority: int = NORMAL_PRIORITY
    ) -> Upstream:
        """When all of `candidates` are at their max_concurrent (try_acquire found none):
        a slot on the first that frees one, waiting in the fair queue in the key's class."""
        return await self.queue.wait(key_id, candidates, self.release, priority)

    def release(self, upstream: Upstream) -> None:
        """A request is done with its slot: the next waiting request takes it, if any."""
        upstream.in_flight -= 1
        if upstream.config.max_concurrent is not None and self.queue.hand_over(upstream):
            upstream.in_flight += 1

    def views(self) -> list[dict[str, object]]:
        """Each upstream as an admin sees it, with the requests waiting for it."""
        waiting = self.queue.waiting()
        return [{**u.view(), "queued": waiting.get(u.name, 0)} for u in self.upstreams]

    async def states(self) -> list[dict[str, object]]:
        """Each upstream as an admin sees it now, and no upstream call per caller: with
        several, from the last check (views()); with one, which is never checked, its
        state from the probe /health/ollama shares and (an Ollama) its loaded models from
        its /api/ps, each asked at most once a check interval."""
        if not self.single:
            return self.views()
        assert self.probe is not None
        probed = await self.probe.result()
        if probed.up and self._loaded_of_one is not None:
            await self._loaded_of_one.get()
        (view,) = self.views()
        if not probed.up:
            view["loaded"] = view["loaded_models"] = []  # (gone with the upstream)
        error = probed.details.get("error")
        view.update(
            status="up" if probed.up else "out",
            reason=error if isinstance(error, str) else None,
            latency_ms=probed.details.get("rtt_ms"),
            checked_at=round(time.time() - (time.monotonic() - probed.at), 3),
        )
        return [view]

    async def _read_loaded(self, upstream: Upstream) -> None:
        """An Ollama's loaded models by its /api/ps (none when it cannot be read)."""
        try:
            await self._read_ps(upstream)
        except CheckFailed as exc:
            log.info("upstream %s: its loaded models are unknown: %s", upstream.name, exc)
            upstream.loaded, upstream.running = frozenset(), ()

    def failed(self, upstream: Upstream, reason: str) -> None:
        """It failed a check or a request: out for a cool-down (not with one upstream)."""
        if self.single:
            return
        upstream.failures += 1
        cool = min(COOL_DOWN_MOST_S, COOL_DOWN_FIRST_S * 2 ** (upstream.failures - 1))
        upstream.out_until = time.monotonic() + cool
        if upstream.up:
            log.warning("upstream %s is out: %s", upstream.name, reason)
            if self._alerts is not None:
                self._alerts(upstream_alert(upstream.name, reason))
        upstream.reason = reason

    def passed(self, upstream: Upstream) -> None:
        if not upstream.up:
            log.warning("upstream %s is back", upstream.name)
            if self._alerts is not None:
                self._alerts(upstream_alert(upstream.name, None))
        upstream.reason = None
        upstream.failures = 0

    # --- checks ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def checking(self) -> AsyncIterator[None]:
        """Check the upstreams in the background while the app runs (several only)."""
        if self.single:
            if self.wants_lists:  # its list only: no checks, never out
                self.relist_soon()
            try:
                yield
            finally:
                if self._relisting is not None:
                    self._relisting.cancel()
            return
        await asyncio.gather(*(self.check(u) for u in self.upstreams))  # know them at once
        task = asyncio.create_task(self._check_forever(), name="upstream checks")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _check_forever(self) -> None:
        # (each was checked just now, at start: the next check is an interval away)
        started = time.monotonic()
        last = {u.name: started for u in self.upstreams}
        while True:
            await asyncio.sleep(min(1.0, self.check_interval))
            now = time.monotonic()
            due = [
                u
                for u in self.upstreams
                if (u.up and now - last.get(u.name, 0.0) >= self.check_interval)
                or (not u.up and now >= u.out_until)
            ]
            for u in due:
                last[u.name] = now
            try:
                await asyncio.gather(*(self.check(u) for u in due))
            except Exception:  # never let the checks die
                log.exception("upstream checks failed")

    async def check(self, upstream: Upstream) -> None:
        """One check: an Ollama's model list and loaded models, a cloud API's models."""
        started = time.perf_counter()
        try:
            await self._list(upstream)
            if upstream.config.kind == "ollama":
                await self._read_ps(upstream)
        except CheckFailed as exc:
            self.failed(upstream, str(exc))
            return
        finally:
            upstream.checked_at = time.time()
        upstream.latency_ms = round((time.perf_counter() - started) * 1000, 2)
        self.passed(upstream)

    async def _list(self, upstream: Upstream) -> None:
        """Read an upstream's model list: an Ollama's /api/tags (the models it serves),
        a cloud API's /models (cut down to its patterns); its names join `listed`."""
        if upstream.config.kind == "ollama":
            body = await self._document(upstream, "/api/tags", CHECK_TIMEOUT_S)
            entries = [(identity(n), digest) for n, digest in model_entries(body, "models")]
            names = [name for name, _ in entries]
            upstream.models = frozenset(names)
            upstream.digests = {name: digest for name, digest in entries if digest is not None}
            upstream.listed_at = time.monotonic()
        else:
            patterns = upstream.config.models or ()
            names = [
                identity(n)
                for n in await self.names(upstream, "/models", "data")
                if model_allowed(n, patterns)
            ]
        self._lists[upstream.name] = frozenset(names)
        self.listed = frozenset().union(*self._lists.values())

    def digest_of(self, model: str) -> str | None:
        """The digest of `model` (a canonical name) that every Ollama listing it agrees
        on, by the lists last read (one upstream, which is never checked, has its list
        read again once it is older than a check interval, and none until then: after a
        quiet while the first request would otherwise be answered by a list of long ago,
        the model replaced since); None when no Ollama lists it,
        two list different ones, one lists it without a digest, or a cloud API or an
        Ollama whose list is unknown could answer it. The response cache keys answers by
        it: a model replaced under the same name is a different model."""
        if self.single:
            now = time.monotonic()
            # Read again half an interval on, so that under steady requests a fresh list
            # is in before this one is too old.
            if now - self._relisted_at > self.check_interval / 2:
                self.relist_soon(changed=True)
            if now - self.upstreams[0].listed_at > self.check_interval:
                return None  # (read longer ago: the model may have been replaced since)
        found = None
        for upstream in self.upstreams:
            if upstream.config.kind != "ollama" or upstream.models is None:
                if upstream.serves(model):
                    return None
                continue
            digest = upstream.digests.get(model)
            if digest is None:
                if model in upstream.models:  # (listed without one: which model is unknown)
                    return None
                continue
            if found is not None and digest != found:
                return None
            found = digest
        return found

    def relist_soon(self, changed: bool = False) -> None:
        """Read the model lists again in the background (at most every RELIST_GAP_S,
        unless models were `changed` through the gateway: pulled, created, copied or
        deleted): what a model seen for the first time asks for, with one upstream
        (which is not checked) or between checks."""
        now = time.monotonic()
        if now - self._relisted_at < RELIST_GAP_S and not changed:
            return
        self._relisted_at = now

        async def relist() -> None:
            for upstream in self.upstreams:
                with contextlib.suppress(CheckFailed):
                    await self._list(upstream)

        self._relisting = asyncio.create_task(relist(), name="upstream model lists")

    async def names(
        self, upstream: Upstream, path: str, field: str, timeout: float = CHECK_TIMEOUT_S
    ) -> list[str]:
        """The names in an upstream's model list (checked as hostile input); CheckFailed
        saying why when there are none to read."""
        return model_names(await self._document(upstream, path, timeout), field)

    async def _read_ps(self, upstream: Upstream) -> None:
        """An Ollama's loaded models by its /api/ps: their names (routing prefers them)
        and, for an admin's view, each one's memory on the GPU and when it unloads."""
        running = loaded_models(await self._document(upstream, "/api/ps", CHECK_TIMEOUT_S))
        upstream.loaded = frozenset(identity(m.name) for m in running)
        upstream.running = tuple(running)

    async def _document(self, upstream: Upstream, path: str, timeout: float) -> bytes:
        """The body of an upstream's document that answered 200; CheckFailed saying why
        when it did not."""
        try:
            status, body = await self.fetch(upstream, path, timeout)
        except TimedOut:
            raise CheckFailed(f"{path} did not answer in {timeout:g} s") from None
        except ConnectFailed as exc:
            raise CheckFailed(f"cannot reach it: {exc}") from None
        except UpstreamFailed as exc:
            raise CheckFailed(f"{path}: {exc.cause}: {exc}"[:300]) from None
        if status != 200:
            raise CheckFailed(f"{path} answered {status}")
        return body

    async def fetch(
        self, upstream: Upstream, path: str, timeout: float = CHECK_TIMEOUT_S
    ) -> tuple[int, bytes]:
        """GET one of an upstream's own documents (its lists, Ollama's version) with its
        key: status and body (at most MAX_LIST_BYTES, else CheckFailed), within
        `timeout` seconds. The checks, /health/ollama and /admin/models all ask this way."""
        async with self.transport.send(
            "GET",
            upstream.config.url + path,
            headers=auth_headers(upstream.config),
            timeout=timeout,
        ) as response:
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_LIST_BYTES:
                    raise CheckFailed(f"{path} is larger than {MAX_LIST_BYTES} bytes")
            return response.status, bytes(body)


class LoadedModel(NamedTuple):
    """A model an Ollama holds in memory, as its /api/ps says (checked as hostile)."""

    name: str
    size_vram: int | None  # bytes on the GPU
    expires_at: str | None  # when it unloads, RFC 3339 as Ollama wrote it


_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,20}(Z|[+-][0-9]{2}:[0-9]{2})")


def loaded_models(body: bytes) -> list[LoadedModel]:
    """The entries of an Ollama's /api/ps: each one's name, and its size on the GPU and
    expiry where they are what they should be (else None)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CheckFailed("its model list is not JSON") from None
    entries = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise CheckFailed("its model list has no 'models' list")
    found = []
    for entry in entries[:MAX_LISTED]:
        if not isinstance(entry, dict):
            continue
        name = first_text_field(entry, ENTRY_NAMES["models"])
        if not isinstance(name, str) or not 0 < len(name) <= 500:
            continue
        size = entry.get("size_vram")
        expires = entry.get("expires_at")
        found.append(
            LoadedModel(
                name,
                size if type(size) is int and 0 <= size < 2**63 else None,
                expires if isinstance(expires, str) and _RFC3339.fullmatch(expires) else None,
            )
        )
    return found


def model_names(body: bytes, field: str) -> list[str]:
    """The names in a model list whose entries are in `field` (see ENTRY_NAMES)."""
    return [name for name, _ in model_entries(body, field)]


def model_entries(body: bytes, field: str) -> list[tuple[str, str | None]]:
    """The names in a model list whose entries are in `field` (see ENTRY_NAMES), each
    with its digest where it has one that is printable text."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CheckFailed("its model list is not JSON") from None
    entries = doc.get(field) if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise CheckFailed(f"its model list has no {field!r} list")
    keys = ENTRY_NAMES[field]
    names = []
    for entry in entries[:MAX_LISTED]:
        if not isinstance(entry, dict):
            continue
        name = first_text_field(entry, keys)
        if isinstance(name, str) and 0 < len(name) <= 500:
            digest = entry.get("digest")
            usable = isinstance(digest, str) and 0 < len(digest) <= 200 and digest.isprintable()
            names.append((name, digest if usable else None))
    return names
