"""Where a tenant's webhook may not reach: the operator's own network.

A URL is checked twice: when the directory is loaded (a literal IP address) and before
every connection, after resolving the name here (``Resolver``): DNS may answer
differently between the two, so the address connected to is one that was checked (the
request goes to that IP, with the name in ``Host`` and, over TLS, as the SNI name).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> the addresses the name resolves to."""

# Shared address space (RFC 6598): carrier-grade NAT, and some clouds' internal ranges.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class Refused(Exception):
    """The URL or an address it resolves to may not be reached; the message says why."""


@dataclass(frozen=True)
class Target:
    """Where one request goes: ``url`` names a checked address, ``host`` goes in the Host
    header, ``sni`` (https) is the name TLS sends and verifies the certificate for."""

    url: str
    host: str
    sni: str | None


def refusal(address: IpAddress) -> str | None:
    """Why ``address`` is not a public one (None: it is)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped)
    kinds = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local (incl. cloud metadata)", address.is_link_local),
        ("multicast", address.is_multicast),
        ("shared (CGNAT 100.64/10)", isinstance(address, ipaddress.IPv4Address) and address in _CGNAT),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-public", not address.is_global),
    )
    for kind, matches in kinds:
        if matches:
            return f"{address} is a {kind} address"
    return None


def literal_refusal(url: str, *, allow_private: bool) -> str | None:
    """At load: why ``url`` is refused without resolving anything (None: not refused yet).
    Only ``http(s)`` URLs with a host are valid at all (checked by the directory's model)."""
    parts = urlsplit(url)
    if parts.scheme != "https" and not allow_private:
        return "https is required (CDR_WEBHOOK_ALLOW_PRIVATE is off)"
    if allow_private:
        return None
    try:
        address = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return None  # a name: checked after it is resolved, before each connection
    reason = refusal(address)
    return None if reason is None else f"{reason} (CDR_WEBHOOK_ALLOW_PRIVATE is off)"


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def target(url: str, resolve: Resolver, *, allow_private: bool) -> Target:
    """The checked address to send ``url``'s request to; Refused with the reason when the
    name resolves to nothing, or to any address that is not public (one is enough: a
    name that answers with both is an attempt to get past the check)."""
    reason = literal_refusal(url, allow_private=allow_private)
    if reason is not None:
        raise Refused(reason)
    parts = urlsplit(url)
    host = parts.hostname or ""
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    try:
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in await resolve(host, port)]
    except OSError as exc:
        raise Refused(f"{host} does not resolve: {exc.strerror or exc}") from exc
    if not addresses:
        raise Refused(f"{host} does not resolve")
    if not allow_private:
        for address in addresses:
            why = refusal(address)
            if why is not None:
                raise Refused(f"{host} resolves to {why} (CDR_WEBHOOK_ALLOW_PRIVATE is off)")
    chosen = addresses[0]
    shown = f"[{chosen}]" if chosen.version == 6 else str(chosen)
    netloc = f"{shown}:{port}"
    path = parts.path or "/"
    url_to = f"{parts.scheme}://{netloc}{path}" + (f"?{parts.query}" if parts.query else "")
    named = f"[{host}]" if ":" in host else host
    host_header = named if parts.port is None else f"{named}:{parts.port}"
    return Target(url_to, host_header, host if tls else None)
