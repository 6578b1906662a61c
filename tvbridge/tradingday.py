"""Trading days: what an alert does when its exchange is closed, the kill switch, and `GET /market`.

`decide()` is the one rule, per account, asked when an alert arrives and again when a queued alert comes due:

* sessions off, a `cancel_order` alert, or every leg's exchange open: send now;
* `when_closed = "reject"`: every leg fails with the reason, nothing is sent;
* `when_closed = "amo"` on a broker in `[sessions] amo_brokers`, inside the after-market window (from 15 minutes
  after the close to 16 minutes before the next open): send now as an after-market order (each leg's `amoTime`,
  else `[sessions] amo_time`); outside that window it waits in the queue for the window or the open;
  on any other broker (paper): waits in the queue until the open (plus 30/60 minutes for OPEN_30/OPEN_60), so
  paper fills when a live AMO would;
* `when_closed = "queue"` (the default): waits in the queue until every leg's exchange is open, then is sent.

The webhook handler asks `plan()`; when every account sends now it carries on as before, otherwise
`handle_closed()` journals the alert with its queue rows in one transaction and answers (202 `queued` when
nothing ran now). The kill switch is `tvbridge/halt.py`; this module gives it its HTTP endpoints.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import structlog
from aiohttp import web

from tvbridge import alertqueue, notify
from tvbridge.broker import BrokerError
from tvbridge.deadline import answer_in_time
from tvbridge.errors import BadRequestError, HaltedError, UnavailableError
from tvbridge.executor import planned_legs, response_body
from tvbridge.flatten import execute, make_plan
from tvbridge.halt import clear_halt, halt_path, read_halt, set_halt
from tvbridge.keys import (
    ALERT_ID,
    BROKERS,
    CALENDAR,
    CONFIG,
    CONVERTER,
    DEDUPE_KEY,
    EXECUTOR,
    JOURNAL,
    NOW,
    ORDER_LOG,
    RAW_ALERT,
    SCHEDULER,
    SOURCE_IP,
)
from tvbridge.models import AlertStatus, CancelAlert, CancelLeg, LegResult, LegStatus, OrderAlert, OrderLeg, summarize
from tvbridge.parsing import parse_alert
from tvbridge.risk import RiskLimitError, check_leg, reference_price
from tvbridge.sessions import EXCHANGE_TZ, EXCHANGES

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tvbridge.config import Config
    from tvbridge.models import Alert
    from tvbridge.sessions import Calendar

log = structlog.get_logger()

AMO_AFTER_CLOSE: Final = timedelta(minutes=15)
AMO_BEFORE_OPEN: Final = timedelta(minutes=16)
AMO_OFFSETS: Final = {"OPEN": timedelta(0), "OPEN_30": timedelta(minutes=30), "OPEN_60": timedelta(minutes=60)}
Action = Literal["now", "amo", "queue", "reject"]


@attrs.frozen(kw_only=True)
class Decision:
    account: str
    action: Action
    reason: str = ""
    at: datetime | None = None
    """When a queued alert is sent (exchange time)."""
    amo_time: str | None = None


def show(moment: datetime | None) -> str:
    return moment.astimezone(EXCHANGE_TZ).strftime("%a %Y-%m-%d %H:%M IST") if moment else "none within a month"


def in_amo_window(calendar: Calendar, exchange: str, at: datetime) -> bool:
    if calendar.is_open(exchange, at):
        return False
    last, nxt = calendar.last_close(exchange, at), calendar.next_open(exchange, at)
    return last is not None and nxt is not None and last + AMO_AFTER_CLOSE <= at < nxt - AMO_BEFORE_OPEN


def amo_window_start(calendar: Calendar, exchanges: Sequence[str], at: datetime) -> datetime | None:
    """The first moment from `at` on when every exchange is in its after-market window, if before the open."""
    starts: list[datetime] = []
    for exchange in exchanges:
        if in_amo_window(calendar, exchange, at):
            starts.append(at)
            continue
        last = calendar.last_close(exchange, at)
        if last is None or at >= last + AMO_AFTER_CLOSE:
            return None  # just before the open: no window until the session
        starts.append(last + AMO_AFTER_CLOSE)
    start = max(starts)
    return start if all(in_amo_window(calendar, exchange, start) for exchange in exchanges) else None


def decide(config: Config, calendar: Calendar, alert: Alert, account: str, now: datetime) -> Decision:  # noqa: PLR0911 - one return per rule of the docstring
    """What to do with `alert` on `account` at `now` (see the module docstring)."""
    if not config.sessions.enabled or isinstance(alert, CancelAlert):
        return Decision(account=account, action="now")
    exchanges = sorted({leg.exchange.value for leg in alert.legs})
    closed = [exchange for exchange in exchanges if not calendar.is_open(exchange, now)]
    if not closed:
        return Decision(account=account, action="now")
    why = "; ".join(f"{exchange} is closed: {calendar.status(exchange, now).reason}" for exchange in closed)
    opens = calendar.all_open_from(exchanges, now)
    mode = config.when_closed(account)
    if opens is None:  # e.g. extra_holidays covering a month: nothing to wait for, so nothing is kept
        return Decision(account=account, action="reject", reason=f"market closed ({why}) and no session within a month")
    if mode == "reject":
        return Decision(
            account=account,
            action="reject",
            reason=f"market closed ({why}); when_closed is reject: nothing was sent; next open {show(opens)}",
        )
    if mode == "amo":
        default_amo = config.sessions.amo_time
        amo_time = next((leg.amo_time for leg in alert.legs if leg.amo_time), None) or default_amo
        if config.broker_of(account) in config.sessions.amo_brokers:
            if all(in_amo_window(calendar, exchange, now) for exchange in exchanges):
                return Decision(
                    account=account,
                    action="amo",
                    reason=f"market closed ({why}); sent as an after-market order ({amo_time})",
                    amo_time=default_amo,
                )
            window = amo_window_start(calendar, exchanges, now)
            at = min(window, opens) if window else opens
            return Decision(
                account=account,
                action="queue",
                at=at,
                reason=f"market closed ({why}); outside the after-market window: queued until {show(at)}",
            )
        at = opens + AMO_OFFSETS.get(amo_time.upper(), timedelta(0))
        return Decision(
            account=account,
            action="queue",
            at=at,
            reason=f"market closed ({why}); this broker takes no after-market orders: queued until {show(at)}"
            f" ({amo_time})",
        )
    return Decision(
        account=account, action="queue", at=opens, reason=f"market closed ({why}); queued until {show(opens)}"
    )


def plan(app: web.Application, alert: Alert) -> list[Decision]:
    config = app[CONFIG]
    now = app[NOW]()
    decisions = [decide(config, app[CALENDAR], alert, account, now) for account in config.routing.accounts]
    return [_never_passes(app, alert, d) if d.action == "queue" else d for d in decisions]


def _never_passes(app: web.Application, alert: Alert, decision: Decision) -> Decision:
    """A queued account whose risk limits the alert can never pass (quantity, notional, the symbol lists) is
    refused now, not hours later at the open. Limits that may change by then (the kill switch, the daily
    count) are checked when the alert is sent, with these again."""
    if not isinstance(alert, OrderAlert):
        return decision
    limits = app[CONFIG].risk_of(decision.account, app[CONVERTER])
    broker = app[BROKERS].get(decision.account)
    for number, leg in enumerate(alert.legs, start=1):
        try:
            check_leg(limits, leg, reference_price(broker, leg))
        except RiskLimitError as e:
            reason = f"leg {number}: {e}; not queued, nothing will be sent"
            return Decision(account=decision.account, action="reject", reason=reason)
    return decision


def with_amo(alert: OrderAlert, amo_time: str) -> OrderAlert:
    """The alert with every leg's `amoTime` set (the leg's own wins): brokers place such legs as AMOs."""
    legs = tuple(attrs.evolve(leg, amo_time=leg.amo_time or amo_time) for leg in alert.legs)
    return attrs.evolve(alert, legs=legs)


# the kill switch


def check_halted(app: web.Application) -> None:
    """Raise `HaltedError` (503, nothing recorded) while the kill switch is on."""
    halt = read_halt(halt_path(app[CONFIG].server.data_dir))
    if halt is not None:
        raise HaltedError(f"trading halted: {halt.reason}" if halt.reason else "trading halted")


def health_checks(app: web.Application) -> dict[str, Any]:
    halt = read_halt(halt_path(app[CONFIG].server.data_dir))
    if halt is None:
        return {"trading": {"ok": True}}
    return {"trading": {"ok": False, "detail": f"halted since {halt.since or '?'}: {halt.reason}"}}


# the webhook when an account cannot send now


def _results(app: web.Application, decisions: Sequence[Decision], alert: Alert, status: LegStatus) -> list[LegResult]:
    executor = app[EXECUTOR]
    legs: tuple[OrderLeg | CancelLeg, ...] = alert.legs
    return [
        executor.result_for(d.account, n, leg, status, d.reason)
        for d in decisions
        for n, leg in enumerate(legs, start=1)
    ]


def _queue_rows(alert_id: str, queued: Sequence[Decision], rejected: Sequence[Decision]) -> alertqueue.QueueInsert:
    return alertqueue.QueueInsert(
        alert_id=alert_id,
        entries=tuple((d.account, d.at, d.reason) for d in queued if d.at is not None),
        leg_states=tuple((d.account, "queued", d.reason) for d in queued)
        + tuple((d.account, "failed", d.reason) for d in rejected),
    )


def _combined_body(
    alert_id: str, alert: Alert, results: Sequence[LegResult], queued: Sequence[Decision], warnings: Sequence[str]
) -> dict[str, Any]:
    done = [r for r in results if r.status is not LegStatus.QUEUED]
    status = summarize(done).value if done else AlertStatus.QUEUED.value
    if queued and status == AlertStatus.FAILED.value:  # refused here, still coming there: not a failed alert
        status = AlertStatus.PARTIAL.value
    body = response_body(alert_id, alert.alert_type.value, status, results, warnings)
    if queued:
        first = min(d.at for d in queued if d.at is not None)
        body["scheduled_at"] = first.astimezone(EXCHANGE_TZ).isoformat()
        body["queued"] = [
            {"account": d.account, "scheduled_at": d.at.astimezone(EXCHANGE_TZ).isoformat(), "reason": d.reason}
            for d in queued
            if d.at is not None
        ]
        if not done:
            body["message"] = f"Queued {len(results)} order leg(s): {queued[0].reason}"
    return body


async def _run_now(
    app: web.Application, alert_id: str, alert: Alert, decisions: Sequence[Decision], warnings: Sequence[str]
) -> list[LegResult]:
    """Run the accounts that send now (normally or as AMOs); returns their results in account order."""
    executor = app[EXECUTOR]
    normal = [d.account for d in decisions if d.action == "now"]
    bodies: list[dict[str, Any]] = []
    if normal:
        bodies.append(await executor.run(alert_id, alert, normal, warnings))
    by_time: dict[str, list[str]] = {}
    for d in decisions:
        if d.action == "amo" and d.amo_time:
            by_time.setdefault(d.amo_time, []).append(d.account)
    for amo_time, accounts in by_time.items():
        assert isinstance(alert, OrderAlert)  # noqa: S101 - decide() never sends a cancel alert as an AMO
        bodies.append(await executor.run(alert_id, with_amo(alert, amo_time), accounts, warnings))
    return [r for body in bodies for r in _leg_results(body)]


def _leg_results(body: dict[str, Any]) -> list[LegResult]:
    """The executor answers with JSON-ready dicts; rebuild the records for the combined answer."""
    return [
        LegResult(
            leg_number=r["leg_number"],
            account=r["account"],
            broker=r["broker"],
            symbol=r["symbol"],
            exchange="",
            transaction=r["transaction"],
            quantity=r["quantity"],
            order_type="",
            product_type="",
            price="",
            status=LegStatus(r["status"]),
            message=r["message"],
            order_id=r["order_id"],
            client_order_id=r["client_order_id"],
            order_state=r["order_state"],
        )
        for r in body["results"]
    ]


async def handle_closed(
    request: web.Request, alert: Alert, decisions: Sequence[Decision], warnings: list[str]
) -> web.Response:
    """The webhook for an alert that at least one account cannot send now: queue, reject, AMO, or a mix."""
    app = request.app
    config = app[CONFIG]
    alert_id = request[ALERT_ID]
    journal = app[JOURNAL]
    queued = [d for d in decisions if d.action == "queue"]
    rejected = [d for d in decisions if d.action == "reject"]
    running = [d for d in decisions if d.action in {"now", "amo"}]
    raw: dict[str, Any] = request[RAW_ALERT]
    await journal.record_alert(
        alert_id=alert_id,
        alert_type=alert.alert_type.value,
        payload=raw,
        dedupe_key=request.get(DEDUPE_KEY),  # a resend of a queued alert is a duplicate
        source=request.get(SOURCE_IP),
        legs=planned_legs(alert_id, alert, config.routing.accounts),
        status="accepted" if running else AlertStatus.QUEUED.value,
        also=_queue_rows(alert_id, queued, rejected),
        order_log_offset=app[ORDER_LOG].size(),
    )
    waiting = _results(app, queued, alert, LegStatus.QUEUED) + _results(app, rejected, alert, LegStatus.FAILED)
    for d in queued:
        log.info("alert.queued", account=d.account, scheduled_at=d.at.isoformat() if d.at else None, reason=d.reason)
    for d in rejected:
        log.warning("alert.rejected_closed", account=d.account, reason=d.reason)
    try:  # journaled already: a CSV problem must not turn the answer into a 500
        await app[ORDER_LOG].append(waiting, alert_id=alert_id, alert_type=alert.alert_type.value)
    except Exception:
        log.exception("order_log.write_failed")
    if queued:
        app[SCHEDULER].wake.set()

    async def finish() -> dict[str, Any]:
        ran = await _run_now(app, alert_id, alert, running, warnings) if running else []
        body = _combined_body(alert_id, alert, [*ran, *waiting], queued, warnings)
        await journal.finish_alert(alert_id, body["status"], body, waiting)
        return body

    if not running:
        body = await finish()
        return web.json_response(body, status=202 if queued else 200)
    return await answer_in_time(app, finish(), alert_id=alert_id, alert_type=alert.alert_type.value, warnings=warnings)


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

    if running:  # from here crash recovery owns these legs (journal status `accepted`, legs `pending`)
        await journal.queue.hand_over(alert_id, names)
        ran = await _run_now(app, alert_id, alert, running, [])
        failed = _results(app, dropped, alert, LegStatus.FAILED)
        body = _combined_body(alert_id, alert, [*ran, *failed], [], [])
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
