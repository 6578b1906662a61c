"""The HTTP endpoints. Guards have run before a webhook handler is reached (see `middlewares/__init__.py`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from tvbridge import __version__, metrics, tradingday
from tvbridge.access import same_token
from tvbridge.alertpage import alert_page, prefers_html
from tvbridge.crashpoints import crash_point
from tvbridge.deadline import answer_in_time
from tvbridge.errors import AuthError, NotFoundError, RecordsError, ShuttingDownError
from tvbridge.executor import Executor, planned_legs, response_body
from tvbridge.keys import (
    ALERT_ID,
    BROKERS,
    CONFIG,
    CONVERTER,
    CREDENTIALS,
    DEDUPE_KEY,
    EXECUTOR,
    JOURNAL,
    ORDER_LOG,
    PLUGIN_FILES,
    RAW_ALERT,
    SOURCE_IP,
    STATE,
)
from tvbridge.middlewares.body_limit import body_of
from tvbridge.models import AlertStatus, LegResult, LegStatus, oldest_timenow, timenows
from tvbridge.parsing import check_encodable, might_hold_surrogates, parse_alert, unknown_keys
from tvbridge.refusals import should_log
from tvbridge.status import page_refusal
from tvbridge.text import bounded

if TYPE_CHECKING:
    from tvbridge.models import Alert

log = structlog.get_logger()

MAX_AHEAD_S = 60.0
"""A `meta.timenow` further ahead of our clock than this is refused as stale: clocks are wrong somewhere."""


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
    """Parse, age-check, journal, then run the legs; answer 200 with results or 202 after the deadline."""
    app = request.app
    config = app[CONFIG]
    state = app[STATE]
    if state.shutting_down:
        raise ShuttingDownError
    _check_records(app)
    tradingday.check_halted(app)
    alert_id = request[ALERT_ID]
    raw = request[RAW_ALERT]
    body = body_of(request)
    if not body or might_hold_surrogates(body):  # no body kept (body_limit off): check the whole alert
        check_encodable(raw)
    alert = parse_alert(raw, app[CONVERTER])
    warnings = unknown_keys(raw)
    accounts = config.routing.accounts
    journal = app[JOURNAL]

    age_s = _age_s(alert)
    if age_s is not None and age_s > config.alerts.max_age_s:
        message = f"alert is stale: meta.timenow is {age_s:.0f} s old, the limit is {config.alerts.max_age_s:.0f} s"
        return await _refuse_stale(request, alert, age_s, warnings, message)
    ahead_s = _ahead_s(alert)
    if ahead_s is not None and ahead_s > MAX_AHEAD_S:
        message = (
            f"alert is stale: meta.timenow is {ahead_s:.0f} s ahead of this server's clock, the limit is"
            f" {MAX_AHEAD_S:.0f} s; check the clock of the server and of the alert's sender"
        )
        return await _refuse_stale(request, alert, -ahead_s, warnings, message)

    decisions = tradingday.plan(app, alert)
    if any(d.action != "now" for d in decisions):
        return await tradingday.handle_closed(request, alert, decisions, warnings)

    await journal.record_alert(
        alert_id=alert_id,
        alert_type=alert.alert_type.value,
        payload=raw,
        dedupe_key=request.get(DEDUPE_KEY),  # set by middlewares/dedupe.py; a stale refusal below gets none
        source=request.get(SOURCE_IP),
        legs=planned_legs(alert_id, alert, accounts),
        order_log_offset=app[ORDER_LOG].size(),
    )
    crash_point("after_record")
    log.info(
        "alert.accepted",
        alert_type=alert.alert_type.value,
        legs=len(alert.legs),
        accounts=list(accounts),
        warnings=warnings or None,
    )
    return await answer_in_time(
        app,
        app[EXECUTOR].run(alert_id, alert, accounts, warnings),
        alert_id=alert_id,
        alert_type=alert.alert_type.value,
        warnings=warnings,
    )


def _check_records(app: web.Application) -> None:
    """503 while the journal, the order log or a plugin's state file (`Broker.state_files()`: paper's database)
    is not the file that was opened (deleted or replaced under the server): an alert accepted into it would be
    lost at the next start, and its id forgotten by dedupe (or, for paper, its order booked in a lost file)."""
    problem = app[JOURNAL].problem() or app[ORDER_LOG].problem()
    for identity in app.get(PLUGIN_FILES, ()):
        problem = problem or identity.problem()
    if problem:
        log.error("records.replaced", problem=problem)
        raise RecordsError(f"{problem}: nothing was recorded; restart tvbridge to reopen its files")


def _ahead_s(alert: Alert) -> float | None:
    """How far the newest `meta.timenow` is ahead of our clock: a future stamp has a negative age and would
    pass the age check forever, so it is refused beyond `MAX_AHEAD_S` (clock skew)."""
    stamps = timenows(alert)
    if not stamps:
        return None
    return (max(stamps) - datetime.now(UTC)).total_seconds()


def _age_s(alert: Alert) -> float | None:
    stamp = oldest_timenow(alert)
    if stamp is None:
        return None
    return (datetime.now(UTC) - stamp).total_seconds()


async def _refuse_stale(
    request: web.Request, alert: Alert, age_s: float, warnings: list[str], message: str
) -> web.Response:
    """422 with status `stale`: nothing is sent, and the refusal is on record (journal, order log, log).
    `age_s` is negative for a `meta.timenow` ahead of our clock."""
    app = request.app
    config = app[CONFIG]
    alert_id = request[ALERT_ID]
    results = [
        _stale_result(app, account, n, leg, message)
        for account in config.routing.accounts
        for n, leg in enumerate(alert.legs, start=1)
    ]
    body = response_body(alert_id, alert.alert_type.value, AlertStatus.STALE.value, results, warnings)
    body["message"] = message
    raw: dict[str, Any] = request[RAW_ALERT]
    await app[JOURNAL].record_alert(
        alert_id=alert_id,
        alert_type=alert.alert_type.value,
        payload=raw,
        dedupe_key=None,
        source=request.get(SOURCE_IP),
        legs=[],
        status=AlertStatus.STALE.value,
    )
    await app[JOURNAL].finish_alert(alert_id, AlertStatus.STALE.value, body, results)
    try:  # journaled already: a CSV problem must not turn the refusal into a 500
        await app[ORDER_LOG].append(results, alert_id=alert_id, alert_type=alert.alert_type.value)
    except Exception:
        log.exception("order_log.write_failed", alert_id=alert_id)
    log.warning("alert.stale", age_s=round(age_s, 1), max_age_s=config.alerts.max_age_s)
    metrics.alert_outcome(app, AlertStatus.STALE.value)
    return web.json_response(body, status=422)


def _stale_result(app: web.Application, account: str, number: int, leg: Any, message: str) -> LegResult:
    executor: Executor = app[EXECUTOR]
    return executor.result_for(account, number, leg, LegStatus.STALE, message)


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
