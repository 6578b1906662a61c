"""Pre-open readiness: before the open, the server says whether today's first alert would work.

On every trading day (NSE's calendar) at `[sessions] readiness_at` (exchange time, default 08:45; a server started
within 30 minutes after it still runs it), and on demand (`GET /admin/ready`, which `tvbridge ready` asks), every
live account is checked: the halt switch, and what the broker itself knows (`Broker.readiness()`, declared with
`capabilities.readiness`: for Dhan the token past today's close or renewable, the instrument master refreshed
today, Dhan reachable and accepting the token, the clock within a second of Dhan's); a broker without that check
is asked `health()`. The result is one log line (`readiness.checked`), the
`/status` panel, the `tvbridge_ready{account}` metric, and a `not_ready` notification when anything fails.

Several instances on one PostgreSQL store (issue 20): each checks its own accounts at `readiness_at` (its
`/status`, metric and log line tell the truth about this instance: its token, its master file, its clock), but
only the leader (`Store.is_leader`) sends the `not_ready` notification: one message for the open, not one per
instance. `GET /admin/ready` checks the instance asked and answers for it, and never notifies on a follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import attrs
import structlog
from aiohttp import web

from tvbridge import notify
from tvbridge.broker import ReadinessCheck
from tvbridge.keys import BROKERS, CALENDAR, CONFIG, JOURNAL, METRICS, NOW
from tvbridge.metrics import is_halted
from tvbridge.sessions import EXCHANGE_TZ

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tvbridge.broker import Broker

log = structlog.get_logger()


@attrs.define
class Latest:
    """The latest report (scheduled or on demand), for `/status`: a holder set up before the app starts (its
    state must not change once it runs)."""

    report: Readiness | None = None


READINESS = web.AppKey["Latest"]("readiness")
BROKER_TIMEOUT_S: Final = 30.0
"""A broker's checks include a renewal or a master download: bounded, but not by an alert's 3 s."""
POLL_S: Final = 30.0
"""How often the scheduler looks at the clock; the check runs in the first poll at or after `readiness_at`."""
WINDOW: Final = timedelta(minutes=30)
"""A server started more than this long after `readiness_at` does not run the day's check by itself (the open
is near or past; `tvbridge ready` asks for it)."""
CALENDAR_EXCHANGE: Final = "NSE"


@attrs.frozen(kw_only=True)
class AccountReadiness:
    account: str
    checks: tuple[ReadinessCheck, ...]

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks)


@attrs.frozen(kw_only=True)
class Readiness:
    checked_at: datetime
    close_at: datetime
    accounts: tuple[AccountReadiness, ...]

    @property
    def ready(self) -> bool:
        return all(account.ready for account in self.accounts)

    def problems(self, *, local_only: bool = False) -> list[str]:
        return [
            f"{a.account} {c.name}: {c.detail}"
            for a in self.accounts
            for c in a.checks
            if not c.ok and (c.local or not local_only)
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "checked_at": self.checked_at.astimezone(EXCHANGE_TZ).isoformat(timespec="seconds"),
            "close_at": self.close_at.astimezone(EXCHANGE_TZ).isoformat(timespec="seconds"),
            "accounts": [
                {"account": a.account, "ready": a.ready, "checks": [attrs.asdict(c) for c in a.checks]}
                for a in self.accounts
            ],
        }


def summary_of(app: web.Application) -> dict[str, Any]:
    """For `/status` and `tvbridge status`: the last report (None before the first check) and each live
    account's token expiry (None when the broker does not know it)."""
    latest = app.get(READINESS)
    report = latest.report if latest is not None else None
    tokens = []
    for account, broker in app.get(BROKERS, {}).items():
        if broker.capabilities.token_expiry:
            expires = broker.token_expiry()
            when = expires.astimezone(EXCHANGE_TZ).isoformat(timespec="seconds") if expires else None
            tokens.append({"account": account, "expires_at": when})
    return {"readiness": report.as_json() if report else None, "tokens": tokens}


def render_html(readiness: dict[str, Any] | None) -> str:
    """The `/status` panel's rows (the page's script renders the same from the stream)."""
    if readiness is None:
        return '<tr><td colspan="3">not checked yet today (tvbridge ready)</td></tr>'
    rows = [
        f'<tr><td>{html.escape(a["account"])} {html.escape(c["name"])}</td><td class="{"ok" if c["ok"] else "bad"}">'
        f"{'ok' if c['ok'] else 'NOT READY'}</td><td>{html.escape(c['detail'])}</td></tr>"
        for a in readiness["accounts"]
        for c in a["checks"]
    ]
    verdict = "READY" if readiness["ready"] else "NOT READY"
    head = f"<tr><td>checked {html.escape(readiness['checked_at'][:16].replace('T', ' '))}</td>"
    head += f'<td class="{"ok" if readiness["ready"] else "bad"}">{verdict}</td><td></td></tr>'
    return head + "".join(rows)


def close_of(app: web.Application, now: datetime) -> datetime:
    """The close the check is for: today's (NSE) until it has passed, then the next session's."""
    calendar = app[CALENDAR]
    local = now.astimezone(EXCHANGE_TZ)
    for ahead in range(31):
        sessions = calendar.sessions_on(CALENDAR_EXCHANGE, local.date() + timedelta(days=ahead))
        if sessions and (end := max(session.end for session in sessions)) > local:
            return end
    return local.replace(hour=15, minute=30, second=0, microsecond=0)


async def _account(account: str, broker: Broker, *, halted: bool, close_at: datetime) -> AccountReadiness:
    checks = [ReadinessCheck(name="halt", ok=not halted, detail="trading is HALTED" if halted else "not halted")]
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_S):
            if broker.capabilities.readiness:
                checks += await broker.readiness(close_at=close_at)
            else:
                health = await broker.health()
                checks.append(ReadinessCheck(name="reachable", ok=health.ok, detail=health.detail))
    except Exception as e:  # noqa: BLE001 - a check that cannot run is a finding, not a crash
        checks.append(ReadinessCheck(name="broker", ok=False, detail=f"the check failed: {type(e).__name__}"))
    return AccountReadiness(account=account, checks=tuple(checks))


async def leads(app: web.Application) -> bool:
    """Whether this instance announces the check: alone, always; on a shared store, the leader only. A store
    that cannot answer counts as leading: a `not_ready` twice is better than none before the open."""
    journal = app.get(JOURNAL)
    if journal is None or not journal.shared:
        return True
    try:
        return await journal.is_leader()
    except Exception:  # noqa: BLE001 - see above
        log.warning("readiness.leader_unknown")
        return True


async def check_readiness(app: web.Application, *, announce: bool | None = None) -> Readiness:
    """Check every live account now; log, record for /status and the metric, notify when not ready (when
    `announce`; None: when this instance `leads`). An instance that does not announce still notifies the problems
    only it has (`ReadinessCheck.local`: a follower's stale master, its clock): the leader cannot see them."""
    if announce is None:
        announce = await leads(app)
    now = app[NOW]()
    close_at = close_of(app, now)
    halted = is_halted(app)
    live = {a: b for a, b in app.get(BROKERS, {}).items() if b.capabilities.live}
    found = await asyncio.gather(*(_account(a, b, halted=halted, close_at=close_at) for a, b in live.items()))
    report = Readiness(checked_at=now, close_at=close_at, accounts=tuple(found))
    app[READINESS].report = report
    metrics = app[METRICS]
    for account in report.accounts:
        metrics.ready.labels(account=account.account).set(1 if account.ready else 0)
    if report.ready:
        log.info("readiness.checked", ready=True, accounts=[a.account for a in report.accounts], notified=False)
    else:
        problems = report.problems()
        told = problems if announce else report.problems(local_only=True)
        log.warning("readiness.checked", ready=False, problems=problems, notified=bool(told))
        if told:
            notify.event(app, "not_ready", "Not ready for the open: " + "; ".join(told))
    return report


def next_check(app: web.Application, now: datetime, last: date | None) -> datetime | None:
    """Today's check moment when it is due and not yet run (a trading day, at or after `readiness_at`,
    before the close); None otherwise."""
    local = now.astimezone(EXCHANGE_TZ)
    if last == local.date() or app[CALENDAR].closed_reason(CALENDAR_EXCHANGE, local.date()) is not None:
        return None
    hours, minutes = app[CONFIG].sessions.readiness_at.split(":")
    due = local.replace(hour=int(hours), minute=int(minutes), second=0, microsecond=0)
    sessions = app[CALENDAR].sessions_on(CALENDAR_EXCHANGE, local.date())
    if not due <= local < due + WINDOW or (sessions and local >= max(s.end for s in sessions)):
        return None
    return due


async def _schedule(app: web.Application) -> None:
    last: date | None = None
    while True:
        now = app[NOW]()
        if next_check(app, now, last) is not None:
            last = now.astimezone(EXCHANGE_TZ).date()
            try:
                await check_readiness(app)
            except Exception:  # tomorrow's check must still run
                log.exception("readiness.failed")
        await asyncio.sleep(POLL_S)


async def readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the daily check runs while the app does."""
    task = asyncio.create_task(_schedule(app), name="readiness")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def ready_handler(request: web.Request) -> web.Response:
    """`GET /admin/ready` (admin token): run the check now; 200 when ready, 503 when not."""
    from tvbridge.handlers import require_admin  # noqa: PLC0415 - handlers imports the app's modules

    require_admin(request)
    report = await check_readiness(request.app)
    return web.json_response(report.as_json(), status=200 if report.ready else 503)


def add_routes(app: web.Application) -> None:
    app[READINESS] = Latest()
    app.router.add_get("/admin/ready", ready_handler)
    app.cleanup_ctx.append(readiness_ctx)
