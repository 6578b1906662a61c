"""The HTTP endpoints. Guards have run before a webhook handler is reached (see `middlewares/__init__.py`); the
webhook's own work is `alerts/flow.py`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from tvbridge import __version__, tradingday
from tvbridge.access import same_token
from tvbridge.alertpage import alert_page, prefers_html
from tvbridge.alerts.flow import accept
from tvbridge.errors import AuthError, NotFoundError
from tvbridge.keys import BROKERS, CREDENTIALS, JOURNAL, ORDER_LOG, SOURCE_IP, STATE
from tvbridge.refusals import should_log
from tvbridge.status import page_refusal
from tvbridge.text import bounded

log = structlog.get_logger()


async def index(_request: web.Request) -> web.Response:
    return web.json_response({"service": "tvbridge", "version": __version__, "status": "running"})


async def health(request: web.Request) -> web.Response:
    """200 when every dependency works; 503 naming what is broken otherwise."""
    app = request.app
    checks: dict[str, Any] = {}
    journal = app[JOURNAL]
    try:  # a real write: a full disk or a read-only file shows here, not only on the next alert
        async with asyncio.timeout(2):
            writable = await journal.probe()
    except TimeoutError:
        writable = False
        journal.last_error = "journal write timed out"
    checks["journal"] = {"ok": writable, **({"detail": journal.last_error} if not writable else {})}
    order_log_problem = app[ORDER_LOG].problem()
    checks["order_log"] = {"ok": not order_log_problem, **({"detail": order_log_problem} if order_log_problem else {})}
    for account, broker in app[BROKERS].items():
        try:
            async with asyncio.timeout(2):
                result = await broker.health()
            checks[f"broker:{account}"] = {"ok": result.ok, **({"detail": result.detail} if result.detail else {})}
        except Exception as e:  # noqa: BLE001 - a failing health check is a finding, not an error
            checks[f"broker:{account}"] = {"ok": False, "detail": f"health check failed: {type(e).__name__}"}
    state = app[STATE]
    if state.shutting_down:
        checks["server"] = {"ok": False, "detail": "shutting down"}
    checks.update(tradingday.health_checks(app))
    healthy = all(check["ok"] for check in checks.values())
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": datetime.now(UTC).isoformat(),
        "checks": checks,
    }
    return web.json_response(body, status=200 if healthy else 503)


async def webhook(request: web.Request) -> web.Response:
    """`POST /webhook`: the guards have run (`middlewares/`); the alert's way through is `alerts/flow.py`."""
    return await accept(request)


def require_admin(request: web.Request) -> None:
    """Admin endpoints take `Authorization: Bearer <server.admin_token>`."""
    expected = request.app[CREDENTIALS].admin_token
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not same_token(token.strip(), expected):
        if should_log(request, 401):  # a guesser's flood must not flood the log (tvbridge.refusals)
            log.warning("admin.auth_failed", path=bounded(request.path), source=request.get(SOURCE_IP))
        raise AuthError("admin token required: Authorization: Bearer <admin token>")


async def get_alert(request: web.Request) -> web.Response:
    """The journal's record of one alert, accepted or refused (`tvbridge/refusal_journal.py`): JSON for API clients,
    a page for a browser that asks for HTML (`tvbridge/alertpage.py`)."""
    as_page = prefers_html(request.headers.get("Accept", ""))
    if as_page:
        if (refused := page_refusal(request)) is not None:
            return refused
    else:
        require_admin(request)
    wanted = request.match_info["alert_id"]
    journal = request.app[JOURNAL]
    record = await journal.get_alert(wanted)
    if record is None:
        record = await journal.get_refusal(wanted)
    if record is None:
        raise NotFoundError(f"no alert {wanted!r} in the journal")
    return alert_page(record) if as_page else web.json_response(record)
