"""Step 4: find the real client address, and refuse webhook callers that are not on the allowlist.

The client is the TCP peer, unless the peer is one of `ip_allowlist.trusted_proxies`: then `X-Forwarded-For`
is read right to left, skipping trusted hops, and the first hop that is not a trusted proxy is the client (the
rightmost untrusted hop: everything left of it was written by someone we cannot check, so a client that sets
the header itself gains nothing). Every later step and log line sees that address in `request[SOURCE_IP]`,
also when the allowlist is off but proxies are configured, and on every route.

The allowlist (`ip_allowlist.allow`, TradingView's four addresses by default) acts on the webhook routes only,
and only when `ip_allowlist.enabled`: a first run on 127.0.0.1 must work without it. A refusal is a 403,
logged with the address.

Written with the standard library's `ipaddress` rather than aiohttp-remotes: its `XForwardedFiltered` does not
check that the TCP peer is a proxy at all (so the header can be spoofed), and `XForwardedStrict` wants the
trusted proxies as a per-hop chain, answers 400 on its own and replaces the request with a clone.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING

import structlog
from aiohttp import hdrs, web

from tvbridge.errors import ForbiddenError
from tvbridge.keys import SOURCE_IP
from tvbridge.routes import is_webhook

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from aiohttp.typedefs import Handler, Middleware

    from tvbridge.config import IpAllowlistConfig

log = structlog.get_logger()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Addresses and CIDRs as networks (a lone address is a /32 or /128); config has validated them."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it (`1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:443`); None if it is none.

    Cached: it runs for every request, and the addresses that call are few (TradingView's four, a proxy)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def contains(networks: Sequence[IPNetwork], address: IPAddress) -> bool:
    return any(address in network for network in networks)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
) -> tuple[IPAddress | None, str]:
    """The real client address and how it was found (a log reason); None when it cannot be known.

    `forwarded_for` is every `X-Forwarded-For` header line, in order; they read as one list.
    """
    address = parse_address(peer or "")
    if address is None:
        return None, "the TCP peer has no IP address"
    if not trusted or not contains(trusted, address):
        return address, "tcp peer"
    hops = [hop for line in forwarded_for for hop in line.split(",") if hop.strip()]
    if not hops:
        return address, "trusted proxy sent no X-Forwarded-For"
    for hop in reversed(hops):
        hop_address = parse_address(hop)
        if hop_address is None:
            return None, "X-Forwarded-For holds something that is not an IP address"
        if not contains(trusted, hop_address):
            return hop_address, "X-Forwarded-For, rightmost untrusted hop"
        address = hop_address
    return address, "X-Forwarded-For, every hop a trusted proxy: the leftmost"


def ip_allowlist(config: IpAllowlistConfig) -> Middleware:
    allowed = parse_networks(config.allow)
    trusted = parse_networks(config.trusted_proxies)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        address, how = client_address(request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, []), trusted)
        if address is not None:
            request[SOURCE_IP] = str(address)
        if not config.enabled or not is_webhook(request):
            return await handler(request)
        if address is None:
            log.warning("ip_allowlist.refused", reason=how, source=request.get(SOURCE_IP), peer=request.remote)
            raise ForbiddenError("source address unknown: not allowed")
        if not contains(allowed, address):
            log.warning("ip_allowlist.refused", reason="not on ip_allowlist.allow", source=str(address), via=how)
            raise ForbiddenError(f"source address {address} is not allowed")
        return await handler(request)

    return middleware
