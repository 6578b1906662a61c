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

from typing import TYPE_CHECKING

import structlog
from aiohttp import hdrs, web

from tvbridge.addresses import client_address, contains, parse_networks
from tvbridge.errors import ForbiddenError
from tvbridge.keys import SOURCE_IP
from tvbridge.refusals import should_log
from tvbridge.routes import is_webhook

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

    from tvbridge.config import IpAllowlistConfig

log = structlog.get_logger()


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
            if should_log(request, 403):
                log.warning("ip_allowlist.refused", source=request.get(SOURCE_IP), reason=how, peer=request.remote)
            raise ForbiddenError("source address unknown: not allowed")
        if not contains(allowed, address):
            if should_log(request, 403):
                log.warning(
                    "ip_allowlist.refused", source=request.get(SOURCE_IP), reason="not on ip_allowlist.allow", via=how
                )
            raise ForbiddenError(f"source address {address} is not allowed")
        return await handler(request)

    return middleware
