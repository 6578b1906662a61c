"""Step 1: give every request its alert id, bind it to the log context, and log the request once.

The id is time-ordered (hex milliseconds, then random) so ids sort by arrival, and short enough that the
client order id derived from it fits Dhan's 25-character correlation id. A client's own `X-Request-ID` is not
trusted: ids must be unique, and the journal's key.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from tvbridge.keys import ALERT_ID, SOURCE_IP
from tvbridge.metrics import observe_request
from tvbridge.routes import public_path

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

log = structlog.get_logger()


def new_alert_id() -> str:
    """17 characters: 11 hex digits of epoch milliseconds, 6 random hex digits."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(3)}"


def request_id() -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        alert_id = new_alert_id()
        request[ALERT_ID] = alert_id
        request[SOURCE_IP] = request.remote or ""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(alert_id=alert_id)
        started = time.perf_counter()
        response = await handler(request)
        response.headers["X-Request-ID"] = alert_id
        observe_request(request, response.status, time.perf_counter() - started)
        log.info(
            "http.request",
            method=request.method,
            path=public_path(request),
            status=response.status,
            source=request[SOURCE_IP],
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return response

    return middleware
