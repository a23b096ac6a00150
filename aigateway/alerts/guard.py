"""Which addresses an alert may be posted to. A webhook URL is a way into the gateway's
network (SSRF): unless ALERT_ALLOW_PRIVATE_URLS, only public addresses are connected to.
The check runs on the very address a socket is opened for, after the name was resolved
(once: no second lookup a rebinding DNS server could answer differently)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance metadata (AWS, GCP, Azure, Oracle; AWS's IPv6; Alibaba): refused even
# when private addresses are allowed, since they hand out the machine's credentials.
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)


class RefusedAddress(OSError):
    """An alert URL that leads to an address alerts may not go to."""


def refusal(address: IPAddress, allow_private: bool) -> str | None:
    """Why alerts may not be posted to `address`, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if address in METADATA:
        return "a cloud metadata address"
    if allow_private:
        return None if not address.is_multicast else "a multicast address"
    for what, flag in (
        ("a loopback", address.is_loopback),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("an unspecified", address.is_unspecified),
        ("a reserved", address.is_reserved),
        ("a private", address.is_private),
        ("a non-public", not address.is_global),  # 100.64/10 (carrier NAT), 6to4, ...
    ):
        if flag:
            return f"{what} address"
    return None


SocketFactory = Callable[[tuple[Any, ...]], socket.socket]


def guarded_socket(allow_private: bool) -> SocketFactory:
    """aiohttp's `socket_factory`: a socket for an address alerts may go to, else
    RefusedAddress (aiohttp then tries the name's next address, if any)."""

    def make(addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _canonical, sockaddr = addr_info
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        why = refusal(address, allow_private)
        if why is not None:
            raise RefusedAddress(f"{address} is {why} (ALERT_ALLOW_PRIVATE_URLS is off)")
        return socket.socket(family=family, type=kind, proto=proto)

    return make
