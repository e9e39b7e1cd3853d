"""Which forwarded headers to believe: only those a configured reverse proxy wrote.

Anyone can send ``X-Forwarded-Host`` or ``X-Real-Ip``; they mean something
only when the TCP peer is a proxy the operator named in ``trusted_proxies``.
The HTTP server itself never applies them (no Tornado ``xheaders``), so
``request.remote_ip`` is always the real peer and this module is the one
place that decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import tornado.httputil

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, IPv4-mapped IPv6 as IPv4; ``None`` for anything else."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class TrustedProxies:
    """The addresses and networks (``10.0.0.0/8``) of the proxies in front of the server."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        """Raise ``ValueError`` for an entry that is neither an address nor a network."""
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(entry.strip(), strict=False) for entry in entries
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str | None) -> bool:
        """Whether a connection from ``address`` comes from a trusted proxy."""
        if not self.networks or not address:
            return False
        ip = parse_address(address)
        return ip is not None and any(ip in network for network in self.networks)


def _last(value: str) -> str:
    # A proxy that appends rather than replaces puts its own value last; anything
    # before it came from further out, possibly from the client itself.
    return value.rsplit(",", 1)[-1].strip()


def public_origin(request: tornado.httputil.HTTPServerRequest, proxies: TrustedProxies) -> str:
    """``scheme://host`` of this server as the browser addressed it.

    ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` count only on a request whose
    TCP peer is a trusted proxy; otherwise the request's own scheme and ``Host``.
    """
    scheme = request.protocol
    host = request.headers.get("Host", "")
    if proxies.trusts(request.remote_ip):
        scheme = request.headers.get("X-Forwarded-Proto") or scheme
        host = request.headers.get("X-Forwarded-Host") or host
    return f"{_last(scheme)}://{_last(host)}"
