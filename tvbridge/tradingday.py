"""Trading days: the closed-market queue's send, the kill switch's endpoints, and `GET /market`.

The rule itself (`decide()`: send now, AMO, queue or reject when an exchange is closed) is part of the planner,
`alerts/plan.py`, which the webhook (`alerts/flow.py`) asks on arrival; `send_queued()` here asks it again when
a queued alert comes due (the scheduler in `alertqueue.py` calls it) and runs the accounts whose window is open.

The kill switch is `tvbridge/halt.py`; this module gives it its HTTP endpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from tvbridge import notify
from tvbridge.alerts.answer import combined_body
from tvbridge.alerts.flow import decided, run_now
from tvbridge.alerts.plan import decide
from tvbridge.broker import BrokerError
from tvbridge.errors import BadRequestError, UnavailableError
from tvbridge.flatten import execute, make_plan
from tvbridge.halt import clear_halt, halt_path, read_halt, set_halt
from tvbridge.keys import BROKERS, CALENDAR, CONFIG, CONVERTER, JOURNAL, NOW, ORDER_LOG, SCHEDULER
from tvbridge.models import LegStatus
from tvbridge.parsing import parse_alert
from tvbridge.sessions import EXCHANGE_TZ, EXCHANGES

if TYPE_CHECKING:
    import sqlite3

log = structlog.get_logger()

# the kill switch


def health_checks(app: web.Application) -> dict[str, Any]:
    halt = read_halt(halt_path(app[CONFIG].server.data_dir))
    if halt is None:
        return {"trading": {"ok": True}}
    return {"trading": {"ok": False, "detail": f"halted since {halt.since or '?'}: {halt.reason}"}}


async def send_queued(app: web.Application, alert_id: str, accounts: list[str]) -> None:
    """The scheduler's send: decide again for each account, then run the ones whose window is open."""
    journal, scheduler = app[JOURNAL], app[SCHEDULER]
    record = await journal.get_alert(alert_id)
    if record is None:
        log.error("queue.alert_missing", accounts=accounts)
        return
    alert = parse_alert(record["payload"], app[CONVERTER])
    now = app[NOW]()
    decisions = [decide(app[CONFIG], app[CALENDAR], alert, account, now) for account in accounts]
    for d in decisions:
        if d.action == "queue" and d.at is not None:
            await scheduler.requeue(alert_id, d.account, d.at, d.reason)
            log.info("queue.postponed", account=d.account, scheduled_at=d.at.isoformat(), reason=d.reason)
    running = [d for d in decisions if d.action in {"now", "amo"}]
    dropped = [d for d in decisions if d.action == "reject" or (d.action == "queue" and d.at is None)]
    names = [d.account for d in running]

    def hand_over(conn: sqlite3.Connection) -> None:
        # from here crash recovery owns these legs (journal status `accepted`, legs `pending`)
        conn.execute("UPDATE alerts SET status = 'accepted' WHERE alert_id = ?", (alert_id,))
        conn.executemany(
            "UPDATE legs SET state = 'pending' WHERE alert_id = ? AND account = ?",
            [(alert_id, name) for name in names],
        )

    if running:
        await journal.write(hand_over)
        ran = await run_now(app, alert_id, alert, running, [])
        failed = decided(app, dropped, alert, LegStatus.FAILED)
        body = combined_body(alert_id, alert.alert_type.value, [*ran, *failed], [], [])
        await journal.finish_alert(alert_id, body["status"], body, failed)
        log.info("queue.sent", accounts=names, status=body["status"])
        notify.event(app, "queued_sent", f"queued alert {alert_id} sent to {', '.join(names)}: {body['status']}")
    if running or dropped:
        await scheduler.mark_sent(alert_id, [d.account for d in [*running, *dropped]])


# HTTP endpoints


async def market(request: web.Request) -> web.Response:
    """Per exchange: open or closed, why, and the next open, in exchange time."""
    app = request.app
    now = app[NOW]()
    calendar = app[CALENDAR]
    exchanges = {}
    for exchange in EXCHANGES:
        status = calendar.status(exchange, now)
        exchanges[exchange] = {
            "open": status.open,
            "phase": status.phase,
            "reason": status.reason,
            "next_open": status.next_open.isoformat() if status.next_open else None,
            "closes_at": status.closes_at.isoformat() if status.closes_at else None,
        }
    halt = read_halt(halt_path(app[CONFIG].server.data_dir))
    return web.json_response(
        {
            "timestamp": now.astimezone(EXCHANGE_TZ).isoformat(),
            "timezone": "Asia/Kolkata",
            "sessions_enabled": app[CONFIG].sessions.enabled,
            "halted": halt is not None,
            "exchanges": exchanges,
        }
    )


async def _reason(request: web.Request) -> str:
    if not request.can_read_body:
        return ""
    try:
        raw = await request.json()
    except ValueError:
        raise BadRequestError('body is not JSON: send {"reason": "..."} or nothing') from None
    return str(raw.get("reason", "")) if isinstance(raw, dict) else ""


async def halt(request: web.Request) -> web.Response:
    from tvbridge.handlers import require_admin  # noqa: PLC0415 - handlers imports this module

    require_admin(request)
    reason = await _reason(request) or "halted through POST /admin/halt"
    state = set_halt(halt_path(request.app[CONFIG].server.data_dir), reason=reason, by="admin api")
    log.warning("trading.halted", reason=reason, by="admin api")
    notify.event(request.app, "halted", f"trading halted through the admin API: {reason}")
    return web.json_response({"halted": True, "reason": state.reason, "since": state.since})


async def resume(request: web.Request) -> web.Response:
    from tvbridge.handlers import require_admin  # noqa: PLC0415 - handlers imports this module

    require_admin(request)
    was = clear_halt(halt_path(request.app[CONFIG].server.data_dir))
    log.warning("trading.resumed", by="admin api", was_halted=was)
    notify.event(request.app, "resumed", "trading resumed through the admin API")
    request.app[SCHEDULER].wake.set()
    return web.json_response({"halted": False, "was_halted": was})


async def flatten(request: web.Request) -> web.Response:
    """`{"account": NAME}` answers the plan; `{"account": NAME, "confirm": true}` carries it out."""
    from tvbridge.handlers import require_admin  # noqa: PLC0415 - handlers imports this module

    require_admin(request)
    try:
        raw = await request.json()
    except ValueError:
        raise BadRequestError('body is not JSON: send {"account": "NAME", "confirm": false}') from None
    account = str(raw.get("account")) if isinstance(raw, dict) else ""
    brokers = request.app[BROKERS]
    if account not in brokers:
        raise BadRequestError(f"account: must be one of {', '.join(brokers)}")
    broker = brokers[account]
    try:
        plan = await make_plan(account, broker)
    except BrokerError as e:
        raise UnavailableError(f"account {account}: cannot list what is open: {e}") from None
    body: dict[str, Any] = {"plan": plan.as_json(), "done": [], "alert_id": None, "results": []}
    if raw.get("confirm") is True and not plan.unsupported:
        report = await execute(
            plan,
            broker,
            broker_name=request.app[CONFIG].broker_of(account),
            journal=request.app[JOURNAL],
            order_log=request.app[ORDER_LOG],
            source="admin api",
        )
        body.update(
            done=list(report.lines), alert_id=report.alert_id, status=report.status, results=report.body["results"]
        )
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/market", market)
    app.router.add_post("/admin/halt", halt)
    app.router.add_post("/admin/resume", resume)
    app.router.add_post("/admin/flatten", flatten)
