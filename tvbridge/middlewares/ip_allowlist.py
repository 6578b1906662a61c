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
from aiohttp import hdrs

from tvbridge.addresses import client_address, contains, parse_networks
from tvbridge.errors import ForbiddenError
from tvbridge.keys import SOURCE_IP
from tvbridge.refusals import should_log

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiohttp import web

    from tvbridge.config import IpAllowlistConfig

log = structlog.get_logger()


def ip_check(config: IpAllowlistConfig) -> Callable[[web.Request], None]:
    """The allowlist as a check of one request (403), its networks parsed once; a no-op while it is off.

    The real client address is already in `request[SOURCE_IP]` (`request_id`, with the same trusted proxies); it
    is worked out again here because a request whose address is unknown must be refused, not let through."""
    allowed = parse_networks(config.allow)
    trusted = parse_networks(config.trusted_proxies)

    def check(request: web.Request) -> None:
        if not config.enabled:
            return
        address, how = client_address(request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, []), trusted)
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

    return check
