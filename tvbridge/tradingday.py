"""Trading days: the closed-market queue's send, the kill switch's endpoints, and `GET /market`.

The rule itself (`decide()`: send now, AMO, queue or reject when an exchange is closed) is part of the planner,
`alerts/plan.py`, which the webhook (`alerts/flow.py`) asks on arrival; `send_queued()` here asks it again when
a queued alert comes due (the scheduler in `alertqueue.py` calls it) and runs the accounts whose window is open.

The kill switch is `tvbridge/halt.py`; this module gives it its HTTP endpoints.
"""

from __future__ import annotations

from typing import Any

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
from tvbridge.strategies import strategy_halt_path, use_strategy

log = structlog.get_logger()

# the kill switch


def health_checks(app: web.Application) -> dict[str, Any]:
    halt = read_halt(halt_path(app[CONFIG].server.data_dir))
    if halt is None:
        return {"trading": {"ok": True}}
    return {"trading": {"ok": False, "detail": f"halted since {halt.since or '?'}: {halt.reason}"}}


async def send_queued(app: web.Application, alert_id: str, accounts: list[str]) -> None:
    """The scheduler's send: decide again for each account, then run the ones whose window is open."""
    record = await app[JOURNAL].get_alert(alert_id)
    if record is None:
        log.error("queue.alert_missing", accounts=accounts)
        return
    with use_strategy(record["strategy"]):  # its strategy's rules, records and log lines, as on arrival
        await _send_queued(app, alert_id, accounts, record)


async def _send_queued(app: web.Application, alert_id: str, accounts: list[str], record: dict[str, Any]) -> None:
    journal, scheduler = app[JOURNAL], app[SCHEDULER]
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

    if running:  # from here crash recovery owns these legs (journal status `accepted`, legs `pending`)
        await journal.queue.hand_over(alert_id, names)
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


async def _halt_request(request: web.Request) -> tuple[str, str | None]:
    """(reason, strategy) from `{"reason": "...", "strategy": "NAME"}` (both optional); 400 for an unknown
    strategy, so a typo never leaves the wrong one trading."""
    if not request.can_read_body:
        return "", None
    try:
        raw = await request.json()
    except ValueError:
        raise BadRequestError('body is not JSON: send {"reason": "...", "strategy": "NAME"} or nothing') from None
    if not isinstance(raw, dict):
        return "", None
    strategy = raw.get("strategy")
    if strategy is not None and (not isinstance(strategy, str) or strategy not in request.app[CONFIG].strategies):
        known = ", ".join(request.app[CONFIG].strategies) or "none configured"
        raise BadRequestError(f"strategy: must be one of the [strategies.NAME] tables ({known})")
    return str(raw.get("reason", "")), strategy


def _switch(app: web.Application, strategy: str | None) -> Any:
    data_dir = app[CONFIG].server.data_dir
    return halt_path(data_dir) if strategy is None else strategy_halt_path(data_dir, strategy)


async def halt(request: web.Request) -> web.Response:
    """The kill switch: all trading, or with `{"strategy": NAME}` that strategy's alone."""
    from tvbridge.handlers import require_admin  # noqa: PLC0415 - handlers imports this module

    require_admin(request)
    reason, strategy = await _halt_request(request)
    reason = reason or "halted through POST /admin/halt"
    state = set_halt(_switch(request.app, strategy), reason=reason, by="admin api")
    what = "trading" if strategy is None else f"strategy {strategy}"
    log.warning("trading.halted", reason=reason, by="admin api", halted_strategy=strategy)
    notify.event(request.app, "halted", f"{what} halted through the admin API: {reason}")
    scope = {} if strategy is None else {"strategy": strategy}
    return web.json_response({"halted": True, "reason": state.reason, "since": state.since, **scope})


async def resume(request: web.Request) -> web.Response:
    from tvbridge.handlers import require_admin  # noqa: PLC0415 - handlers imports this module

    require_admin(request)
    _reason, strategy = await _halt_request(request)
    was = clear_halt(_switch(request.app, strategy))
    what = "trading" if strategy is None else f"strategy {strategy}"
    log.warning("trading.resumed", by="admin api", was_halted=was, halted_strategy=strategy)
    notify.event(request.app, "resumed", f"{what} resumed through the admin API")
    request.app[SCHEDULER].wake.set()
    scope = {} if strategy is None else {"strategy": strategy}
    return web.json_response({"halted": False, "was_halted": was, **scope})


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
