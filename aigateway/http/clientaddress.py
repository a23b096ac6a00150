"""The request as its client sees it: the client's address, and the scheme and host it
called.

One place so that every room that names the client (the access log, the per-address
sign-in limit) or compares against the gateway's own origin (the dashboard's origin
check, the Secure cookie) sees the same thing. Only a socket peer inside TRUSTED_PROXIES
is believed when it forwards `X-Forwarded-For`/`-Proto`/`-Host` (or RFC 7239
`Forwarded`, when it sends none of those); anyone else's forwarded headers are ignored,
since any client can write them.

The address is found by walking the forwarded chain from the right (the hop our peer
added) past every trusted proxy: the first untrusted hop is the client. Whatever a client
writes to the left of that is never read, so it cannot forge its address past a proxy
that appends (nginx's `$proxy_add_x_forwarded_for`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from ..settings import Network
from .appkeys import SETTINGS

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_SCHEMES = frozenset(_DEFAULT_PORTS)
_NONE: list[str] = []  # getall's default when a header is absent (never changed)
# A forwarded host is used only in a comparison, but a value with these could never be
# a browser's origin: treat it as not sent.
_NOT_IN_HOST = frozenset(" \t/\\@?#,;\"'<>")


@dataclass(frozen=True, slots=True)
class ClientView:
    """What the client called (scheme, host as in its Host header) and from where."""

    scheme: str
    host: str
    address: str

    @property
    def origin(self) -> str:
        """The origin a browser on this page sends (`https://host[:port]`): lower case,
        the scheme's default port left out as browsers leave it out."""
        host = self.host.lower()
        default = _DEFAULT_PORTS.get(self.scheme)
        if default is not None and host.endswith(default):
            host = host[: -len(default)]
        return f"{self.scheme}://{host}"


_VIEW = web.RequestKey("client_view", ClientView)


def client_address(request: web.Request) -> str:
    """The client's address ("" when aiohttp has none, e.g. a Unix socket). Without
    TRUSTED_PROXIES (the usual case, and every access line) just the socket's peer."""
    if not request.app[SETTINGS].trusted_proxies:
        return request.remote or ""
    return client_view(request).address


def client_view(request: web.Request) -> ClientView:
    """The request as the client sent it, worked out once per request."""
    networks = request.app[SETTINGS].trusted_proxies
    if not networks:
        return ClientView(request.scheme, request.host, request.remote or "")
    view = request.get(_VIEW)
    if view is None:
        view = request[_VIEW] = _forwarded_view(request, networks)
    return view


def peer_trusted(request: web.Request) -> bool:
    """Whether the socket's peer is one of TRUSTED_PROXIES (its forwarded headers count)."""
    networks = request.app[SETTINGS].trusted_proxies
    return bool(networks) and _trusted(_address(request.remote or ""), networks)


def _forwarded_view(request: web.Request, networks: tuple[Network, ...]) -> ClientView:
    remote = request.remote or ""
    if not _trusted(_address(remote), networks):
        return ClientView(request.scheme, request.host, remote)
    headers = request.headers
    forwarded_for = headers.getall("X-Forwarded-For", _NONE)
    proto = _last(headers.getall("X-Forwarded-Proto", _NONE))
    host = _last(headers.getall("X-Forwarded-Host", _NONE))
    if not forwarded_for and proto is None and host is None and "Forwarded" in headers:
        # RFC 7239 only from a proxy that sends no X-Forwarded-*: a proxy that appends
        # X-Forwarded-For passes a client's own Forwarded header on untouched.
        elements = request.forwarded
        hops: Iterable[str] = (e.get("for", "") for e in reversed(elements))
        last = elements[-1] if elements else {}
        proto, host = last.get("proto"), last.get("host")
    else:
        hops = (hop for value in reversed(forwarded_for) for hop in reversed(value.split(",")))
    return ClientView(
        _scheme(proto) or request.scheme,
        _host(host) or request.host,
        _first_untrusted(hops, remote, networks),
    )


def _first_untrusted(hops: Iterable[str], remote: str, networks: tuple[Network, ...]) -> str:
    """Walking right to left, the first hop outside TRUSTED_PROXIES. When every hop is
    trusted, the leftmost; when a hop is no address (`unknown`, an obfuscated name, a
    typo), the trusted hop that wrote it: nothing left of it can be believed."""
    client = remote
    for hop in hops:
        address = _address(hop.strip())
        if address is None:
            break
        client = str(address)
        if not _trusted(address, networks):
            break
    return client


def _last(values: list[str]) -> str | None:
    """The last of a header's comma-separated values: the one our peer itself wrote
    (a proxy that appends leaves what came before it, maybe a client's, on the left)."""
    return values[-1].rpartition(",")[2].strip() if values else None


def _scheme(value: str | None) -> str | None:
    """A forwarded scheme, if it is http or https."""
    value = value.lower() if value else None
    return value if value in _SCHEMES else None


def _host(value: str | None) -> str | None:
    """A forwarded host, if it can be a host[:port]."""
    if not value or not value.isprintable() or any(c in _NOT_IN_HOST for c in value):
        return None
    return value


def _address(node: str) -> IPAddress | None:
    """The address in a forwarded node or a socket peer: `192.0.2.1`, `192.0.2.1:4711`,
    `2001:db8::1`, `[2001:db8::1]:4711`; None for anything else."""
    try:
        return ipaddress.ip_address(node)
    except ValueError:
        pass
    if node.startswith("["):
        node = node[1 : node.find("]")]
    elif node.count(":") == 1:
        node = node.partition(":")[0]
    else:
        return None
    try:
        return ipaddress.ip_address(node)
    except ValueError:
        return None


def _trusted(address: IPAddress | None, networks: tuple[Network, ...]) -> bool:
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return any(address in network for network in networks)
