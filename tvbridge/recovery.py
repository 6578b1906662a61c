"""Crash recovery: finish the alerts that an earlier run accepted (journaled, maybe answered 2xx) but did not
finish, because it was killed, lost power, or ran out of shutdown grace.

It runs once at start, after the brokers have started and before the server accepts traffic (the cleanup_ctx
after `executor_ctx`), so no new alert races it. On a store shared by several instances (PostgreSQL) it also
runs every half `journal.leader_lease_s` while serving, for the alerts of instances whose lease expired: the
store hands each such alert to one instance only (`Store.unfinished`), never this instance's running ones.

For each unfinished alert, oldest first, the executor runs it again with a `Resume`: legs the journal shows
settled are kept; every open leg (`pending`, `sending`, `unknown`) is first looked up at its account's broker by
its client order id; what the broker has is recorded, what it lacks is sent (with the same client order id, so a
broker that did get it does not place it twice) while the alert is younger than `alerts.max_age_s`, and marked
`expired` with a `recovery.leg_expired` warning otherwise. The alert is then finished like any other: journal,
order log, log line. The killed run may have written the order log's rows and died before the journal's final
commit: the rows found in the log after the offset journaled with the alert are not written again, so every leg
has exactly one row.

Before them, the alerts finished in their own commit (a one-leg paper alert, `alerts/joined.py`) whose order log
row may be missing: the commit holds their final status and results and marks them "order log row pending"; the
row is written after it, and the mark is cleared by a later write (`Journal.order_log_written`). A crash in
between leaves the mark: `write_pending_rows` writes the rows of marked alerts that are not in the log after
their journaled offset (once: a row the killed run wrote is found there) and clears the marks. Nothing is placed
or looked up for them: they are finished.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import structlog

from tvbridge.errors import InvalidAlertError
from tvbridge.executor import Resume
from tvbridge.journal import OPEN_LEG_STATES, Journal
from tvbridge.models import LegResult, LegStatus, oldest_timenow
from tvbridge.orderlog import neutralize
from tvbridge.parsing import parse_alert, unknown_keys
from tvbridge.strategies import use_strategy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    import cattrs
    from aiohttp import web

    from tvbridge.config import Config
    from tvbridge.executor import Executor
    from tvbridge.models import Alert
    from tvbridge.orderlog import OrderLog
    from tvbridge.store import Store

log = structlog.get_logger()


def _stored_result(leg: Mapping[str, Any]) -> LegResult | None:
    stored = leg.get("result")
    if not isinstance(stored, dict):
        return None
    try:
        return LegResult(**{**stored, "status": LegStatus(stored["status"])})
    except (TypeError, ValueError, KeyError):  # written by another version: ask the broker instead of guessing
        log.warning("recovery.result_unreadable", leg=leg.get("leg_number"), account=leg.get("account"))
        return None


_PLANNED: Final = {"queued": LegStatus.QUEUED, "failed": LegStatus.FAILED}


def _planned_result(executor: Executor, alert: Alert, leg: Mapping[str, Any]) -> LegResult | None:
    """A leg the plan queued or refused (`record_plan` wrote its state and reason, its result comes only with the
    alert's final write): settled as planned, never sent here. The closed-market queue sends a queued one at its
    window; without this, a crash before the final write sent it now and again at the open."""
    status = _PLANNED.get(leg["state"])
    number = leg["leg_number"]
    if status is None or not 1 <= number <= len(alert.legs):
        return None
    return executor.result_for(leg["account"], number, alert.legs[number - 1], status, leg.get("message") or "")


async def write_pending_rows(journal: Journal, order_log: OrderLog) -> int:
    """The order log rows of the alerts finished in their own commit and still marked "row pending" (see the module
    docstring): each leg's row written unless the log has it after the alert's offset, then the marks cleared (an
    alert whose rows could not be written keeps its mark, for the next start). Returns how many rows it wrote."""
    marked = await journal.pending_order_log()
    if not marked:
        return 0
    offsets = [record["order_log_offset"] for record in marked]
    logged = order_log.logged_since(0 if None in offsets else min(offsets))
    written = 0
    done: list[str] = []
    for record in marked:
        alert_id = record["alert_id"]
        results = [result for leg in record["legs"] if (result := _stored_result(leg)) is not None]
        missing = [r for r in results if (neutralize(alert_id), neutralize(r.account), str(r.leg_number)) not in logged]
        try:
            await order_log.append(missing, alert_id=alert_id, alert_type=record["alert_type"])
        except Exception:
            log.exception("order_log.write_failed", alert_id=alert_id)
            continue
        written += len(missing)
        done.append(alert_id)
        log.warning(
            "recovery.order_log_rows",
            alert_id=alert_id,
            written=[f"{r.account}#{r.leg_number}" for r in missing] or None,
            already_in_order_log=sorted(f"{r.account}#{r.leg_number}" for r in results if r not in missing) or None,
        )
    await journal.clear_order_log_marks(done)
    return written


async def recover(
    journal: Store, executor: Executor, config: Config, converter: cattrs.Converter, order_log: OrderLog
) -> int:
    """Finish every unfinished alert in the journal; returns how many there were. First, the order log rows of
    alerts finished in their own commit that a crash may have cut off (`write_pending_rows`)."""
    if isinstance(journal, Journal):  # only the SQLite journal finishes an alert in its own commit
        await write_pending_rows(journal, order_log)
    alert_ids = await journal.unfinished()
    logged: set[tuple[str, str, str]] = set()
    if alert_ids:
        log.warning("recovery.started", alerts=len(alert_ids))
        # rows the killed run wrote between the order log and the journal's final commit: kept, not repeated
        logged = order_log.logged_since(await journal.order_log_start())
    for alert_id in alert_ids:
        with structlog.contextvars.bound_contextvars(alert_id=alert_id):
            await _recover_one(
                alert_id, journal=journal, executor=executor, config=config, converter=converter, logged=logged
            )
    if alert_ids:
        log.warning("recovery.done", alerts=len(alert_ids))
    return len(alert_ids)


async def _recover_one(
    alert_id: str,
    *,
    journal: Store,
    executor: Executor,
    config: Config,
    converter: cattrs.Converter,
    logged: set[tuple[str, str, str]],
) -> None:
    record = await journal.get_alert(alert_id)
    if record is None:  # listed a moment ago; nothing else writes during recovery
        return
    raw: dict[str, Any] = record["payload"]
    try:
        alert = parse_alert(raw, converter)
    except InvalidAlertError as e:  # it parsed when accepted: only a changed parser can get here
        log.error("recovery.unreadable", errors=e.errors)
        await journal.finish_alert(alert_id, "failed", {"status": "failed", "message": "unreadable after restart"})
        return
    legs = record["legs"]
    accounts = list(dict.fromkeys(leg["account"] for leg in legs)) or list(config.accounts_of(record["strategy"]))
    settled: dict[tuple[str, int], LegResult] = {}
    with use_strategy(record["strategy"]):
        for leg in legs:
            result = _stored_result(leg) or _planned_result(executor, alert, leg)
            if leg["state"] not in OPEN_LEG_STATES and result is not None:
                settled[leg["account"], leg["leg_number"]] = result
    now = datetime.now(UTC)
    born = datetime.fromisoformat(record["received_at"])
    timenow = oldest_timenow(alert)
    if timenow is not None:
        born = min(born, timenow)
    age_s = (now - born).total_seconds()
    max_age_s = config.alerts.max_age_s
    in_log = frozenset(
        (leg["account"], leg["leg_number"])
        for leg in legs
        if (neutralize(alert_id), neutralize(leg["account"]), str(leg["leg_number"])) in logged
    )
    counted = frozenset((leg["account"], leg["leg_number"]) for leg in legs if leg["state"] in {"sending", "unknown"})
    resume = Resume(
        settled=settled,
        may_send=age_s <= max_age_s,
        age_s=age_s,
        max_age_s=max_age_s,
        logged=in_log,
        counted=counted,
    )
    log.warning(
        "recovery.alert",
        age_s=round(age_s, 1),
        already_in_order_log=sorted(f"{account}#{number}" for account, number in in_log) or None,
        open_legs=[
            f"{leg['account']}#{leg['leg_number']}:{leg['state']}" for leg in legs if leg["state"] in OPEN_LEG_STATES
        ],
        may_send=resume.may_send,
    )
    await executor.run(alert_id, alert, accounts, unknown_keys(raw), resume=resume, strategy=record["strategy"])


async def recovery_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: recover before the first request (registered after the brokers and the executor)."""
    from tvbridge.keys import (  # noqa: PLC0415 - keys imports this module's types
        CONFIG,
        CONVERTER,
        EXECUTOR,
        JOURNAL,
        ORDER_LOG,
    )

    journal, executor, config, converter, order_log = (
        app[JOURNAL],
        app[EXECUTOR],
        app[CONFIG],
        app[CONVERTER],
        app[ORDER_LOG],
    )
    await recover(journal, executor, config, converter, order_log)
    if not journal.shared:
        yield
        return

    async def adopt() -> None:
        """Several instances on one store: finish the alerts of an instance that died while serving, as a
        restart would, once its lease has expired (`journal.leader_lease_s`)."""
        while True:
            await asyncio.sleep(config.journal.leader_lease_s / 2)
            try:
                await recover(journal, executor, config, converter, order_log)
            except Exception:
                log.exception("recovery.failed")

    task = asyncio.create_task(adopt(), name="recovery-adopt")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
