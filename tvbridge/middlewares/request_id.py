"""Step 1: give every request its alert id, bind it to the log context, and log the request once.

The id is time-ordered (hex milliseconds, then random) so ids sort by arrival, and short enough that the
client order id derived from it fits Dhan's 25-character correlation id. A client's own `X-Request-ID` is not
trusted: ids must be unique, and the journal's key.

A webhook request whose alert logged `alert.done` gets no second info line: `alert.done` is written here with the
access line's facts (`tvbridge/accessline.py`) and `http.request` goes at debug. Every other request (refusals,
admin, health, status, a 202 past the deadline) keeps `http.request` at info.

The `http.request` line of a 4xx answer is written only for the sample `tvbridge.refusals` picks (a flood of
junk must not flood the log); the path in it is cut to a bounded length.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Final

import structlog
from aiohttp import hdrs, web

from tvbridge.accessline import Access
from tvbridge.addresses import client_address, parse_networks
from tvbridge.keys import ACCESS, ALERT_ID, ARRIVED, SOURCE_IP
from tvbridge.metrics import observe_request
from tvbridge.refusals import count_left_out, should_log
from tvbridge.routes import is_webhook, public_path
from tvbridge.text import bounded

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiohttp.typedefs import Handler, Middleware

log = structlog.get_logger()
CLIENT_ERRORS: Final = range(400, 500)
"""Answers whose access line is sampled (`tvbridge.refusals`): anyone can cause them, at any rate."""


def new_alert_id() -> str:
    """17 characters: 11 hex digits of epoch milliseconds, 6 random hex digits."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(3)}"


def request_id(trusted_proxies: Sequence[str] = ()) -> Middleware:
    """`trusted_proxies` (`ip_allowlist.trusted_proxies`): the real client is known from the first step on, so
    a refusal by any later step (the body limit's too) is logged and counted against it, not against a proxy."""
    trusted = parse_networks(trusted_proxies)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request[ARRIVED] = started
        alert_id = new_alert_id()
        request[ALERT_ID] = alert_id
        address, _ = client_address(request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, []), trusted)
        request[SOURCE_IP] = str(address) if address is not None else (request.remote or "")
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(alert_id=alert_id)
        access = None
        if is_webhook(request):
            access = Access(alert_id, request.method, bounded(public_path(request)), request[SOURCE_IP], started)
            request[ACCESS] = access
        try:
            response = await handler(request)
        except BaseException:
            if access is not None:  # cancelled before the answer: the alert's line is still written
                access.flush()
            raise
        response.headers["X-Request-ID"] = alert_id
        status = response.status
        observe_request(request, status, time.perf_counter() - started)
        logged_done = access is not None and access.answer(status)
        if not logged_done and CLIENT_ERRORS.start <= status < CLIENT_ERRORS.stop and not should_log(request, status):
            count_left_out(request, status)  # a refusal outside the sample: counted for `refusals.suppressed`
            return response
        line = {
            "method": request.method,
            "path": access.path if access is not None else bounded(public_path(request)),
            "status": status,
            "source": request[SOURCE_IP],
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if logged_done:  # `alert.done` said it all at info
            log.debug("http.request", **line)
        else:
            log.info("http.request", **line)
        return response

    return middleware
