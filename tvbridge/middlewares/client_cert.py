"""Step 3 (only with `auth.require_client_cert`): the caller must be TradingView, by its TLS client certificate.

It runs before `body_limit`, so a caller without the certificate is refused (403) before its body is read.
The handshake has already verified the certificate against the configured CAs (`tvbridge.tls`); this step
checks that one was sent and that its subject CN is `TradingView Webhooks`. Webhook routes only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from tvbridge.errors import ForbiddenError
from tvbridge.refusals import should_log
from tvbridge.text import bounded
from tvbridge.tls import TRADINGVIEW_CN, common_names

if TYPE_CHECKING:
    from aiohttp import web

    from tvbridge.config import AuthConfig

log = structlog.get_logger()


def check_client_cert(config: AuthConfig, request: web.Request) -> None:
    """403 unless the TLS client certificate is TradingView's; nothing to check without `require_client_cert`."""
    if not config.require_client_cert:
        return
    peercert = request.transport.get_extra_info("peercert") if request.transport is not None else None
    names = common_names(peercert)
    if TRADINGVIEW_CN not in names:
        reason = "no client certificate" if peercert is None else "client certificate is not TradingView's"
        cns = [bounded(name) for name in names[:5]]
        if should_log(request, 403):
            log.warning("client_cert.refused", reason=reason, subject_cn=cns, peer=request.remote)
        raise ForbiddenError(f"a TradingView client certificate is required ({reason})")
