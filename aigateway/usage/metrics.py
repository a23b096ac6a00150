"""/metrics in Prometheus's text format, with the official prometheus-client library; off
unless METRICS is `on` (anyone may scrape) or `admin` (an admin key is needed).

Counters and histograms are updated when a relayed request is settled (each kind of
request's series found once, then a few increments; no lock held across an await);
gauges (in flight, queued, upstream health) are read from the pool when scraped, so they
cost the relay nothing. Labels come only from
bounded sets: route templates, statuses, upstream names, and the canonical names of models
an upstream lists and answered for without an error; any other model is `other` (a client
cannot make up new series by spelling a model another way, or by naming ones that do not
exist).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import GatewayError, Refused
from ..protocol.routes import RelayRoute
from ..upstreams.cache import ResponseCache
from ..upstreams.pool import Pool

# Seconds: from a 5 ms answer to a 10-minute generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
OTHER = "other"  # the model label of requests of a model no upstream lists, or of none


_Children = tuple[Counter, Histogram, Histogram, Counter, Counter, Counter]


class Metrics:
    # in_flight: the relay's InFlight, of which only the count is read (usage sits below the
    # relay and does not import it).
    def __init__(
        self,
        pool: Pool,
        in_flight: Sized,
        currency: str,
        cache: ResponseCache | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "aigateway_requests",
            "Relayed requests, by route, status, model and upstream",
            ("route", "status", "model", "upstream"),
            registry=r,
        )
        self.duration = Histogram(
            "aigateway_request_duration_seconds",
            "Relayed requests' time through the gateway, to the last byte",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "aigateway_time_to_first_byte_seconds",
            "Relayed requests' time to the first response byte",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "aigateway_tokens", "Tokens counted, by model and kind", ("model", "kind"), registry=r
        )
        self.cost = Counter(
            "aigateway_cost",
            f"What relayed requests cost, in {currency}",
            ("model", "currency"),
            registry=r,
        )
        self.refusals = Counter(
            "aigateway_refusals",
            "Requests the gateway refused, by reason (errors.Refused)",
            ("reason",),
            registry=r,
        )
        for reason in Refused:  # every reason a series from the start, at 0
            self.refusals.labels(reason.value)
        self.currency = currency
        self.pool = pool
        pool.wants_lists = True  # model labels are the models the upstreams list
        r.register(_Gauges(pool, in_flight))
        if cache is not None:
            r.register(_CacheMetrics(cache))
        # Each kind of request's series, found once (labels() costs more than inc()).
        self._children: dict[tuple[RelayRoute, int, str, str], _Children] = {}

    def observe(
        self,
        route: RelayRoute,
        status: int,
        model: str | None,
        upstream: str,
        seconds: float,
        ttfb: float | None,
        prompt: int | None,
        completion: int | None,
        cost: int,
    ) -> None:
        """One relayed request, as it is settled."""
        label = self._label(model, status)
        key = (route, status, label, upstream)
        children = self._children.get(key)
        if children is None:  # the first of its kind: find its series once
            children = self._children[key] = self._series(route, status, label, upstream)
        requests, duration, first_byte, prompts, completions, costs = children
        requests.inc()
        duration.observe(seconds)
        if ttfb is not None:
            first_byte.observe(ttfb)
        if prompt:
            prompts.inc(prompt)
        if completion:
            completions.inc(completion)
        if cost:
            costs.inc(cost / 1e9)  # (nano-units)

    def _label(self, model: str | None, status: int) -> str:
        """A model's label: its one identity (protocol/names.py), when an upstream lists
        it and answered for it; every other name is `other`, so that the series stay
        at most the models served plus one however many names clients make up."""
        if model is None or status >= 400:
            return OTHER
        if model in self.pool.listed:
            return model
        self.pool.relist_soon()  # (pulled a moment ago? known from the next read on)
        return OTHER

    def _series(self, route: RelayRoute, status: int, label: str, upstream: str) -> _Children:
        name = route.ollama_path
        return (
            self.requests.labels(name, str(status), label, upstream),
            self.duration.labels(name),
            self.ttfb.labels(name),
            self.tokens.labels(label, "prompt"),
            self.tokens.labels(label, "completion"),
            self.cost.labels(label, self.currency),
        )

    def refused(self, error: GatewayError) -> None:
        if error.reason is not None:
            self.refusals.labels(error.reason.value).inc()

    def page(self) -> bytes:
        return generate_latest(self.registry)


class _Gauges(Collector):
    """What is true now, read when scraped."""

    def __init__(self, pool: Pool, in_flight: Sized) -> None:
        self.pool = pool
        self.in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "aigateway_in_flight", "Requests being relayed by this gateway now",
            value=len(self.in_flight),
        )  # fmt: skip
        labels = ("upstream",)
        up = GaugeMetricFamily("aigateway_upstream_up", "1 when the upstream is up", labels=labels)
        busy = GaugeMetricFamily(
            "aigateway_upstream_in_flight", "Requests at the upstream now", labels=labels
        )
        queued = GaugeMetricFamily(
            "aigateway_upstream_queued",
            "Requests waiting for room that the upstream could serve",
            labels=labels,
        )
        latency = GaugeMetricFamily(
            "aigateway_upstream_check_seconds", "The last check's round trip", labels=labels
        )
        waiting = self.pool.queue.waiting()
        for u in self.pool.upstreams:
            up.add_metric([u.name], 1.0 if u.up else 0.0)
            busy.add_metric([u.name], u.in_flight)
            queued.add_metric([u.name], waiting.get(u.name, 0))
            if u.latency_ms is not None:
                latency.add_metric([u.name], u.latency_ms / 1000)
        yield from (up, busy, queued, latency)


class _CacheMetrics(Collector):
    """The response cache (CACHE_SIZE), read when scraped: what it did since start and
    what it holds. Its hit rate is hits / (hits + misses)."""

    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        cache = self.cache
        yield CounterMetricFamily(
            "aigateway_cache_hits", "Requests answered from the response cache", cache.hits
        )
        yield CounterMetricFamily(
            "aigateway_cache_misses",
            "Requests looked for in the response cache and not found there",
            cache.misses,
        )
        yield CounterMetricFamily(
            "aigateway_cache_stored", "Answers the response cache kept", cache.stored
        )
        yield CounterMetricFamily(
            "aigateway_cache_evicted",
            "Answers the response cache dropped to make room",
            cache.evicted,
        )
        yield GaugeMetricFamily(
            "aigateway_cache_bytes", "Bytes the response cache holds now", cache.size
        )
        yield GaugeMetricFamily(
            "aigateway_cache_entries", "Answers the response cache holds now", len(cache)
        )
