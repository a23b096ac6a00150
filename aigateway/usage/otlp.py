"""Spans to an OpenTelemetry collector over OTLP/HTTP: encoded as protobuf by hand
(otlp_wire.py) and posted from the batch thread (spans.py), as OTEL_EXPORTER_OTLP_* say.

Hand-written because the official SDK's encoding cost a traced request as much CPU again
as the request itself (docs/traces.md).
"""

from __future__ import annotations

import gzip
import http.client
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from urllib.parse import unquote, urlsplit

from ..setting_parsers import SettingsError
from .otlp_wire import encode_export, encode_head, encode_request, encode_spans
from .spans import Recorded, Span

__all__ = ["OtlpExporter", "encode_head", "encode_request", "exporter_from"]

log = logging.getLogger("aigateway.traces")

_RETRY_STATUSES = frozenset((429, 502, 503, 504))
_ATTEMPTS = 3


class OtlpExporter:
    """Posts each batch to the collector's OTLP/HTTP traces endpoint on one kept-alive
    connection; a batch the collector cannot take now (429, 502, 503, 504, or no
    connection) is tried again twice after a pause, then dropped and said in the log."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float,
        head: tuple[bytes, bytes],
        *,
        compress: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {
            **headers,
            "Content-Type": "application/x-protobuf",
            **({"Content-Encoding": "gzip"} if compress else {}),
        }
        self._timeout = timeout
        self._head = head
        self._compress = compress
        self._tls = tls
        self._connection: http.client.HTTPConnection | None = None
        self.endpoint = endpoint

    def export(self, spans: Sequence[Span]) -> None:
        self._send(encode_request(self._head, spans), len(spans))

    def export_recorded(self, batch: Sequence[Recorded]) -> None:
        """A batch of requests' spans, each encoded by the request itself when it can."""
        out: list[bytes] = []
        for recorded in batch:
            if not recorded.encode_otlp(out):
                encode_spans(out, recorded.spans())
        self._send(encode_export(self._head, out), len(out) // 2)  # (two parts a span)

    def _send(self, body: bytes, count: int) -> None:
        if self._compress:
            body = gzip.compress(body)
        for attempt in range(_ATTEMPTS):
            if attempt:
                time.sleep(0.5 * 2**attempt)
            try:
                status, answer = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                why = f"{type(exc).__name__}: {exc}"
                continue
            if 200 <= status < 300:
                return
            why = f"{status} {answer[:200]!r}"
            if status not in _RETRY_STATUSES:
                break
        log.warning("%d spans not exported to %s: %s", count, self.endpoint, why)

    def _post(self, body: bytes) -> tuple[int, bytes]:
        connection = self._connection
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._tls
                )
            else:
                connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
            self._connection = connection
        connection.request("POST", self._path, body, self._headers)
        response = connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _signal(environ: Mapping[str, str], suffix: str) -> str:
    """OTEL_EXPORTER_OTLP_TRACES_<suffix>, else OTEL_EXPORTER_OTLP_<suffix>."""
    value = environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{suffix}", "").strip()
    return value or environ.get(f"OTEL_EXPORTER_OTLP_{suffix}", "").strip()


def endpoint_from(environ: Mapping[str, str]) -> str:
    """The traces endpoint: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else
    OTEL_EXPORTER_OTLP_ENDPOINT with /v1/traces added, else the local collector's."""
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    variable = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    if not endpoint:
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
        endpoint = base.rstrip("/") + "/v1/traces"
        variable = "OTEL_EXPORTER_OTLP_ENDPOINT"
    parts = urlsplit(endpoint)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # (a port that is not a number)
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise SettingsError(f"{variable}: expected an http:// or https:// URL, got {endpoint!r}")
    return endpoint


def headers_from(environ: Mapping[str, str]) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_(TRACES_)HEADERS: key=value pairs, comma-separated, values
    percent-encoded (an API key for a hosted collector)."""
    headers: dict[str, str] = {}
    raw = _signal(environ, "HEADERS")
    for pair in raw.split(","):
        if not pair.strip():
            continue
        name, equals, value = pair.partition("=")
        name, value = name.strip(), unquote(value.strip())
        if not equals or not name or not name.isascii() or not _token(name):
            raise SettingsError(
                f"OTEL_EXPORTER_OTLP_HEADERS: expected name=value pairs, got {pair!r}"
            )
        if any(c in value for c in "\r\n\0"):
            raise SettingsError(f"OTEL_EXPORTER_OTLP_HEADERS: {name}'s value holds a line break")
        headers[name] = value
    return headers


def _token(name: str) -> bool:
    return all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)


def exporter_from(environ: Mapping[str, str], head: tuple[bytes, bytes]) -> OtlpExporter:
    """The OTLP exporter OTEL_EXPORTER_OTLP_* describe: endpoint, headers, timeout
    (milliseconds, default 10 s), compression (gzip or none), certificate (a CA file for
    https) and client certificate and key."""
    timeout_ms = _signal(environ, "TIMEOUT") or "10000"
    try:
        timeout = float(timeout_ms) / 1000
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_TIMEOUT: expected milliseconds above 0, got {timeout_ms!r}"
        )
    compression = _signal(environ, "COMPRESSION").lower() or "none"
    if compression not in ("gzip", "none"):
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_COMPRESSION: expected gzip or none, got {compression!r}"
        )
    endpoint = endpoint_from(environ)
    tls = None
    if endpoint.startswith("https:"):
        tls = ssl.create_default_context(cafile=_signal(environ, "CERTIFICATE") or None)
        client = _signal(environ, "CLIENT_CERTIFICATE")
        if client:
            tls.load_cert_chain(client, _signal(environ, "CLIENT_KEY") or None)
    return OtlpExporter(
        endpoint,
        headers_from(environ),
        timeout,
        head,
        compress=compression == "gzip",
        tls=tls,
    )
