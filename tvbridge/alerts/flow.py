"""The webhook's one way through: parse, plan, ONE journal commit, execute, answer (issue 22).

`handlers.webhook` calls `accept()` after the guards (`middlewares/`) let the request through. In order:

1. the service checks: shutting down (503), records replaced under us (503), the kill switch (one stat() per
   directory for both while they are unchanged: `check_records`) and the strategy's own (503,
   `tvbridge/strategies.py`): nothing is recorded, a resend is welcome;
2. `parsing.parse_alert`: 422 with every bad field;
3. `alerts/plan.make_plan`: pure, per account and leg, send now / amo / queue / refuse;
4. `Journal.record_plan`: the alert, its plan (queued and refused legs included) and the first legs' `sending`
   marks in one transaction, group-committed with concurrent alerts, before any broker call and any 2xx; for an
   account whose broker joined the SQLite journal (the paper book) its first leg is checked first
   (`Executor.prepare_joined`) and booked inside that same transaction (`alerts/joined.py`); when that leg is
   the whole alert (one leg, every account joined) and its outcome is definite, the leg's result, the final
   status and the answer are in that transaction too: one commit in all;
5. the legs that send now run through `executor.Executor.run` (later legs marked `sending` one by one) under
   `deadline.answer_in_time` (202 past `server.response_deadline_s`), the rest are queued (`alertqueue.py`) or
   answered refused;
6. the answer, built by `alerts/answer.py`; the results are handed to the journal (`record_results`) and not
   waited for, unless the alert's own commit already holds them (then the order log row is written and the
   journal told so: `order_log_written`).

A stale alert is a plan too: recorded with status `stale`, every leg `stale`, answered 422. The scheduler
(`tradingday.send_queued`) runs a queued alert's accounts through `run_now` when their window opens.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
import structlog
from aiohttp import web

from tvbridge import alertqueue, metrics, strategies
from tvbridge.accessline import alert_queued
from tvbridge.alerts.answer import combined_body, stale_body
from tvbridge.alerts.plan import Checks, LegPlan, Plan, make_plan, with_amo
from tvbridge.alerts.records import AlertEntry, LegEntry
from tvbridge.crashpoints import crash_point
from tvbridge.deadline import answer_in_time
from tvbridge.errors import HaltedError, RecordsError, ShuttingDownError
from tvbridge.halt import halt_path, read_halt
from tvbridge.journal import Journal
from tvbridge.keys import (
    ACCESS,
    ALERT_ID,
    ARRIVED,
    CALENDAR,
    CONFIG,
    CONVERTER,
    DEDUPE_KEY,
    EXECUTOR,
    JOURNAL,
    NOW,
    ORDER_LOG,
    PLAN_CHECKS,
    PLUGIN_FILES,
    RAW_ALERT,
    RECORD_DIRS,
    SCHEDULER,
    SOURCE_IP,
    STATE,
)
from tvbridge.middlewares.body_limit import body_of
from tvbridge.models import AlertStatus, CancelLeg, LegResult, LegStatus, OrderAlert, OrderLeg
from tvbridge.parsing import check_encodable, might_hold_surrogates, parse_alert, unknown_keys
from tvbridge.strategies import current_strategy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tvbridge.accessline import Access
    from tvbridge.alerts.plan import Decision
    from tvbridge.models import Alert

log = structlog.get_logger()


async def accept(request: web.Request) -> web.Response:
    """The webhook after the guards: see the module docstring."""
    app = request.app
    config = app[CONFIG]
    if app[STATE].shutting_down:
        raise ShuttingDownError
    check_records(app)  # and the kill switch
    strategies.check_halted(config.server.data_dir, current_strategy())
    alert_id = request[ALERT_ID]
    raw = request[RAW_ALERT]
    body = body_of(request)
    if not body or might_hold_surrogates(body):  # no body kept (body_limit off): check the whole alert
        check_encodable(raw)
    alert = parse_alert(raw, app[CONVERTER])
    warnings = unknown_keys(raw)
    accounts = config.accounts_of(current_strategy())
    plan = make_plan(
        alert_id,
        alert,
        accounts,
        now=app[NOW](),
        received=datetime.now(UTC),
        config=config,
        calendar=app[CALENDAR],
        checks=app.get(PLAN_CHECKS) or Checks(),
    )
    if plan.stale is not None:
        return await refuse_stale(request, alert, plan, warnings)
    if not plan.all_now:
        return await not_all_now(request, alert, plan, warnings)
    premarked = plan.first_sends()
    executor = app[EXECUTOR]
    joined = (
        await executor.prepare_joined(alert_id, alert, premarked, accounts=accounts, warnings=warnings)
        if premarked
        else None
    )
    entry = entry_of(request, alert, plan)
    if joined is None:
        await app[JOURNAL].record_plan(entry)
    else:
        try:
            await app[JOURNAL].record_plan(joined.recorded(entry), join=joined)
        except Exception:  # not recorded (503): its legs were never sent, so not one of today's orders
            executor.unprepare_joined(joined)
            raise
    crash_point("after_record")
    log.debug(  # the alert's one info line is the executor's `alert.done`
        "alert.accepted",
        alert_type=alert.alert_type.value,
        legs=len(alert.legs),
        accounts=list(accounts),
        warnings=warnings or None,
    )
    work = executor.run(
        alert_id,
        alert,
        accounts,
        warnings,
        premarked=premarked,
        arrived=request.get(ARRIVED),
        access=request.get(ACCESS),
        joined=joined,
    )
    return await answer_in_time(app, work, alert_id=alert_id, alert_type=alert.alert_type.value, warnings=warnings)


def entry_of(request: web.Request, alert: Alert, plan: Plan, *, status: str = "accepted") -> AlertEntry:
    """The journal's record of the accepted alert and its plan (`alerts/records.py`)."""
    app = request.app
    raw: dict[str, Any] = request[RAW_ALERT]
    return AlertEntry(
        alert_id=plan.alert_id,
        alert_type=alert.alert_type.value,
        payload=raw,
        dedupe_key=request.get(DEDUPE_KEY),  # set by the dedupe guard; a stale refusal gets none
        source=request.get(SOURCE_IP),
        status=status,
        order_log_offset=app[ORDER_LOG].size(),
        legs=tuple(_leg_entry(plan, leg) for leg in plan.legs),
    )


def _leg_entry(plan: Plan, leg: LegPlan) -> LegEntry:
    """A queued or refused leg keeps its reason; a leg still to run has none until its result."""
    state = plan.leg_state(leg)
    return LegEntry(
        account=leg.account,
        leg_number=leg.number,
        client_order_id=leg.client_order_id,
        state=state,
        message=leg.reason if state in {"queued", "failed"} else None,
    )


def check_records(app: web.Application) -> None:
    """503 while the journal, the order log or a plugin's state file (`Broker.state_files()`: paper's database)
    is not the file that was opened (deleted or replaced under the server): an alert accepted into it would be
    lost at the next start, and its id forgotten by dedupe (or, for paper, its order booked in a lost file).
    Then 503 while the kill switch is on (`check_halted`).

    While none of their directories changed, one stat() each answers for all the files (`fileid.Unchanged`),
    and for the halt file too: its directory (the data directory) is one of them, creating, renaming or deleting
    the halt file changes its mtime, and a check is "clean" only when no halt file was there. A halt file that
    is there is read on every alert, as before."""
    journal, order_log, plugin_files = app[JOURNAL], app[ORDER_LOG], app.get(PLUGIN_FILES, ())
    unchanged = app[RECORD_DIRS]
    if unchanged.directories is None:  # the record files stay the same for the process's life
        files = [order_log.path, *(f.path for f in plugin_files), halt_path(app[CONFIG].server.data_dir)]
        if isinstance(journal, Journal):  # a file of ours (a PostgreSQL store has none to watch)
            files.append(journal.path)
        unchanged.directories = tuple(sorted({str(path.parent) for path in files}))
    stamp = unchanged.stamp(unchanged.directories)
    if unchanged.unchanged(stamp):
        return
    problem = journal.problem() or order_log.problem()
    for identity in plugin_files:
        problem = problem or identity.problem()
    halt = None if problem else read_halt(halt_path(app[CONFIG].server.data_dir))  # the path only when needed
    unchanged.checked(stamp, clean=not problem and halt is None)
    if problem:
        log.error("records.replaced", problem=problem)
        raise RecordsError(f"{problem}: nothing was recorded; restart tvbridge to reopen its files")
    if halt is not None:
        raise HaltedError(f"trading halted: {halt.reason}" if halt.reason else "trading halted")


async def refuse_stale(request: web.Request, alert: Alert, plan: Plan, warnings: list[str]) -> web.Response:
    """422 with status `stale`: nothing is sent, and the refusal is on record (journal, order log, log)."""
    app = request.app
    config = app[CONFIG]
    alert_id = plan.alert_id
    message = plan.stale or ""
    results = results_of(app, alert, config.accounts_of(current_strategy()), LegStatus.STALE, message)
    body = stale_body(alert_id, alert.alert_type.value, results, warnings, message)
    journal = app[JOURNAL]
    raw: dict[str, Any] = request[RAW_ALERT]
    stale = AlertEntry(
        alert_id=alert_id,
        alert_type=alert.alert_type.value,
        payload=raw,
        dedupe_key=None,
        source=request.get(SOURCE_IP),
        status=AlertStatus.STALE.value,
    )
    await journal.record_plan(stale)
    await journal.finish_alert(alert_id, AlertStatus.STALE.value, body, results)
    try:  # journaled already: a CSV problem must not turn the refusal into a 500
        await app[ORDER_LOG].append(results, alert_id=alert_id, alert_type=alert.alert_type.value)
    except Exception:
        log.exception("order_log.write_failed", alert_id=alert_id)
    log.warning("alert.stale", age_s=round(plan.age_s or 0.0, 1), max_age_s=config.alerts.max_age_s)
    metrics.alert_outcome(app, AlertStatus.STALE.value)
    return web.json_response(body, status=422)


def results_of(
    app: web.Application, alert: Alert, accounts: Sequence[str], status: LegStatus, message: str
) -> list[LegResult]:
    """Every leg of `alert` on `accounts` with one status and message (nothing was sent)."""
    executor = app[EXECUTOR]
    legs: tuple[OrderLeg | CancelLeg, ...] = alert.legs
    return [
        executor.result_for(account, n, leg, status, message)
        for account in accounts
        for n, leg in enumerate(legs, start=1)
    ]


def decided(app: web.Application, decisions: Sequence[Decision], alert: Alert, status: LegStatus) -> list[LegResult]:
    """Per decision, every leg with the decision's reason (queued or refused accounts)."""
    executor = app[EXECUTOR]
    legs: tuple[OrderLeg | CancelLeg, ...] = alert.legs
    return [
        executor.result_for(d.account, n, leg, status, d.reason)
        for d in decisions
        for n, leg in enumerate(legs, start=1)
    ]


def _queue_rows(alert_id: str, queued: Sequence[Decision]) -> alertqueue.QueueInsert:
    """The queue rows that join the alert's commit (`Store.record_plan(join=...)`); the legs' states are in the
    plan itself."""
    return alertqueue.QueueInsert(
        alert_id=alert_id, entries=tuple((d.account, d.at, d.reason) for d in queued if d.at is not None)
    )


async def not_all_now(request: web.Request, alert: Alert, plan: Plan, warnings: list[str]) -> web.Response:
    """An alert that at least one account cannot send now: queue, reject, AMO, or a mix. The alert, its legs'
    states and its queue rows are one transaction; the accounts that send now run under the deadline."""
    app = request.app
    alert_id = plan.alert_id
    journal = app[JOURNAL]
    queued = plan.of("queue")
    rejected = plan.of("reject")
    running = [d for d in plan.accounts if d.action in {"now", "amo"}]
    # a queued or refused account's legs are journaled as such; a running account's legs stay `pending` here
    # (they are marked one by one as they are sent)
    waiting = decided(app, queued, alert, LegStatus.QUEUED) + decided(app, rejected, alert, LegStatus.FAILED)
    # refused on every account: the final status goes with the plan (a crash before the answer's record must not
    # leave it `queued` with nothing queued)
    status = "accepted" if running else AlertStatus.QUEUED.value
    if not running and not queued:
        status = combined_body(alert_id, alert.alert_type.value, waiting, queued, warnings)["status"]
    entry = entry_of(request, alert, plan, status=status)
    entry = attrs.evolve(entry, legs=tuple(attrs.evolve(leg, state=_unmarked(leg.state)) for leg in entry.legs))
    await journal.record_plan(entry, join=_queue_rows(alert_id, queued))
    for d in queued:  # with the answer, carrying the access line's facts (`tvbridge/accessline.py`)
        fields = {"account": d.account, "scheduled_at": d.at.isoformat() if d.at else None, "reason": d.reason}
        alert_queued(request.get(ACCESS), fields)
    for d in rejected:
        log.warning("alert.rejected_closed", account=d.account, reason=d.reason)
    try:  # journaled already: a CSV problem must not turn the answer into a 500
        await app[ORDER_LOG].append(waiting, alert_id=alert_id, alert_type=alert.alert_type.value)
    except Exception:
        log.exception("order_log.write_failed")
    if queued:
        app[SCHEDULER].wake.set()

    async def finish() -> dict[str, Any]:
        ran = await run_now(app, alert_id, alert, running, warnings, access=request.get(ACCESS)) if running else []
        body = combined_body(alert_id, alert.alert_type.value, [*ran, *waiting], queued, warnings)
        # after the executor's own record of the accounts it ran (handed over, not committed yet): the same
        # interface keeps the alert's writes in order, so the combined answer is the one that stays
        await journal.record_results(alert_id, body["status"], body, waiting)
        return body

    if not running:
        body = await finish()
        return web.json_response(body, status=202 if queued else 200)
    return await answer_in_time(app, finish(), alert_id=alert_id, alert_type=alert.alert_type.value, warnings=warnings)


def _unmarked(state: str) -> Any:
    """In a mixed plan no leg is marked `sending` with the alert (the executor marks each one as it sends)."""
    return "pending" if state == "sending" else state


async def run_now(
    app: web.Application,
    alert_id: str,
    alert: Alert,
    decisions: Sequence[Decision],
    warnings: Sequence[str],
    *,
    access: Access | None = None,
) -> list[LegResult]:
    """Run the accounts that send now (normally or as AMOs); returns their results in account order. `access`:
    the webhook request's (`tvbridge/accessline.py`), none from the market-open queue."""
    executor = app[EXECUTOR]
    normal = [d.account for d in decisions if d.action == "now"]
    bodies: list[dict[str, Any]] = []
    if normal:
        bodies.append(await executor.run(alert_id, alert, normal, warnings, access=access))
    by_time: dict[str, list[str]] = {}
    for d in decisions:
        if d.action == "amo" and d.amo_time:
            by_time.setdefault(d.amo_time, []).append(d.account)
    for amo_time, accounts in by_time.items():
        assert isinstance(alert, OrderAlert)  # noqa: S101 - decide() never sends a cancel alert as an AMO
        bodies.append(await executor.run(alert_id, with_amo(alert, amo_time), accounts, warnings, access=access))
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
