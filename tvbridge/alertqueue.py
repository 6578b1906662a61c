"""The closed-market queue: alerts that arrived while their exchange was closed, kept in the journal file until
their window opens, and the scheduler that sends them then.

Durability: a queued alert is one row per account in the `queue` table, written in the same transaction as the
alert itself (`Journal.record_alert(also=...)`), so a 202 `queued` answer means both are on disk. The alert's
journal status stays `queued` (not `accepted`), so crash recovery leaves it alone until the scheduler sends it.

Sending: `Scheduler.run_due()` claims the due rows (`queued` -> `sending`, one UPDATE, so two runs never send one
row twice), asks `tradingday.decide()` again for each account (an `extra_holidays` entry added meanwhile moves it
to the next open), sets the alert to `accepted` (recovery's work list from here on) and runs it through the
executor: risk limits, the kill switch and the client order ids are the same as for an alert sent at once. The
age check is not repeated: it applied when the alert arrived. While halted nothing is claimed.

The background task (`scheduler_ctx`) calls `run_due()` at the next due time or every `POLL_S` seconds, whichever
is sooner, so a `tvbridge queue cancel` or a CLI halt is seen within that time. Tests call `run_due()` directly
after moving the injected clock; nothing waits on the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import attrs
import structlog

from tvbridge.crashpoints import crash_point
from tvbridge.halt import halt_path, read_halt
from tvbridge.strategies import halted_reason

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import AsyncIterator, Callable, Iterable

    from aiohttp import web

    from tvbridge.journal import Journal

log = structlog.get_logger()

POLL_S: Final = 30.0
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id    TEXT NOT NULL,
    account     TEXT NOT NULL,
    not_before  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (alert_id, account)
);
CREATE INDEX IF NOT EXISTS queue_due ON queue (state, not_before);
"""
QUEUED: Final = "queued"
SENDING: Final = "sending"
SENT: Final = "sent"
CANCELLED: Final = "cancelled"
FAILED: Final = "failed"


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def create_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


@attrs.frozen(kw_only=True)
class QueueEntry:
    id: int
    alert_id: str
    account: str
    not_before: datetime
    reason: str
    state: str
    created_at: str

    def as_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "not_before": self.not_before.isoformat()}


def _entry(row: sqlite3.Row) -> QueueEntry:
    return QueueEntry(
        id=row["id"],
        alert_id=row["alert_id"],
        account=row["account"],
        not_before=datetime.fromisoformat(row["not_before"]),
        reason=row["reason"],
        state=row["state"],
        created_at=row["created_at"],
    )


def inserter(alert_id: str, entries: Iterable[tuple[str, datetime, str]]) -> Callable[[sqlite3.Connection], None]:
    """A function for `Journal.record_alert(also=...)`: queue rows (account, not before, reason) for the alert."""
    rows = list(entries)

    def insert(conn: sqlite3.Connection) -> None:
        now = _now()
        conn.executemany(
            "INSERT INTO queue (alert_id, account, not_before, reason, state, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, 'queued', ?, ?)",
            [(alert_id, account, _utc(moment), reason, now, now) for account, moment, reason in rows],
        )

    return insert


async def list_entries(journal: Journal, *, include_done: bool = False) -> list[QueueEntry]:
    where = "" if include_done else " WHERE state IN ('queued', 'sending')"
    rows = await journal.read(
        lambda conn: conn.execute(f"SELECT * FROM queue{where} ORDER BY not_before, id").fetchall()  # noqa: S608 - a constant
    )
    return [_entry(row) for row in rows]


async def cancel_entries(journal: Journal, alert_id: str, account: str | None = None) -> list[QueueEntry]:
    """Cancel the still-queued rows of an alert (one account, or all); returns what was cancelled."""

    def cancel(conn: sqlite3.Connection) -> list[QueueEntry]:
        query = "SELECT * FROM queue WHERE alert_id = ? AND state = 'queued'"
        args: tuple[str, ...] = (alert_id,)
        if account is not None:
            query += " AND account = ?"
            args = (alert_id, account)
        rows = [_entry(row) for row in conn.execute(query, args).fetchall()]
        now = _now()
        for entry in rows:
            conn.execute("UPDATE queue SET state = 'cancelled', updated_at = ? WHERE id = ?", (now, entry.id))
            conn.execute(
                "UPDATE legs SET state = 'cancelled', message = 'removed from the queue', updated_at = ?"
                " WHERE alert_id = ? AND account = ?",
                (now, entry.alert_id, entry.account),
            )
        left = conn.execute(
            "SELECT COUNT(*) FROM queue WHERE alert_id = ? AND state IN ('queued', 'sending')", (alert_id,)
        ).fetchone()[0]
        if rows and not left:
            conn.execute(
                "UPDATE alerts SET status = 'cancelled', updated_at = ? WHERE alert_id = ? AND status = 'queued'",
                (now, alert_id),
            )
        return rows

    return await journal.write(cancel)


class Scheduler:
    """Sends queued alerts when their time comes; `send(alert_id, accounts)` does the sending."""

    def __init__(
        self,
        *,
        journal: Journal,
        clock: Callable[[], datetime],
        data_dir: Any,
        send: Callable[[str, list[str]], Any],
        strategies: Iterable[str] = (),
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._data_dir = data_dir
        self._strategies = tuple(strategies)
        """The named strategies: a halted one's queued alerts stay queued (like everything under the global
        halt) and go when it is resumed."""
        self._halt_file = halt_path(data_dir)
        self._send = send
        self._lock = asyncio.Lock()
        self.wake = asyncio.Event()

    async def run_due(self) -> int:
        """Send every alert whose queue time has come; returns how many alerts were sent."""
        async with self._lock:
            if read_halt(self._halt_file) is not None:
                return 0
            now = _utc(self._clock())
            halted = self._halted_strategies()

            def claim(conn: sqlite3.Connection) -> list[QueueEntry]:
                rows = [
                    _entry(row)
                    for row in conn.execute(
                        "SELECT * FROM queue WHERE state = 'queued' AND not_before <= ?"
                        # not a halted strategy's: it stays queued until resumed
                        " AND NOT EXISTS (SELECT 1 FROM alerts WHERE alerts.alert_id = queue.alert_id"
                        " AND alerts.strategy IN (SELECT value FROM json_each(?)))"
                        " ORDER BY not_before, id",
                        (now, halted),
                    ).fetchall()
                ]
                stamp = _now()
                for entry in rows:
                    conn.execute("UPDATE queue SET state = 'sending', updated_at = ? WHERE id = ?", (stamp, entry.id))
                return rows

            claimed = await self._journal.write(claim)
            if claimed:
                crash_point("after_claim")
            by_alert: dict[str, list[str]] = {}
            for entry in claimed:
                by_alert.setdefault(entry.alert_id, []).append(entry.account)
            for alert_id, accounts in by_alert.items():
                with structlog.contextvars.bound_contextvars(alert_id=alert_id):
                    log.info("queue.sending", accounts=accounts)
                    try:
                        await self._send(alert_id, accounts)
                    except Exception:
                        # a bug, not a closed market: keep it out of the loop and visible (`queue list --all`)
                        log.exception("queue.send_failed", accounts=accounts)
                        await self._mark(alert_id, accounts, FAILED)
            return len(by_alert)

    async def requeue(self, alert_id: str, account: str, moment: datetime, reason: str) -> None:
        await self._journal.write(
            lambda conn: conn.execute(
                "UPDATE queue SET state = 'queued', not_before = ?, reason = ?, updated_at = ?"
                " WHERE alert_id = ? AND account = ?",
                (_utc(moment), reason, _now(), alert_id, account),
            )
        )

    async def mark_sent(self, alert_id: str, accounts: Iterable[str]) -> None:
        await self._mark(alert_id, accounts, SENT)

    async def _mark(self, alert_id: str, accounts: Iterable[str], state: str) -> None:
        names = list(accounts)
        await self._journal.write(
            lambda conn: conn.executemany(
                "UPDATE queue SET state = ?, updated_at = ? WHERE alert_id = ? AND account = ?",
                [(state, _now(), alert_id, account) for account in names],
            )
        )

    def _halted_strategies(self) -> str:
        """The named strategies halted now, as a JSON list (the claim's SQL reads it with json_each)."""
        return json.dumps([name for name in self._strategies if halted_reason(self._data_dir, name) is not None])

    async def next_due(self) -> datetime | None:
        halted = self._halted_strategies()
        row = await self._journal.read(
            lambda conn: conn.execute(
                "SELECT MIN(not_before) FROM queue WHERE state = 'queued'"
                " AND NOT EXISTS (SELECT 1 FROM alerts WHERE alerts.alert_id = queue.alert_id"
                " AND alerts.strategy IN (SELECT value FROM json_each(?)))",
                (halted,),
            ).fetchone()
        )
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    async def loop(self) -> None:
        """Forever: send what is due, then sleep until the next due time (at most `POLL_S`) or a wake-up."""
        while True:
            try:
                await self.run_due()
                due = await self.next_due()
            except Exception:
                log.exception("queue.loop_failed")
                due = None
            wait = POLL_S
            if due is not None:
                wait = max(0.0, min(POLL_S, (due - self._clock()).total_seconds()))
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wake.wait()


def _after_crash(conn: sqlite3.Connection) -> None:
    """Rows a crash left `sending`: back in the queue while their legs are still `queued` (not handed over);
    otherwise the legs were handed to the executor, the alert is `accepted` and crash recovery owns it."""
    conn.execute(
        "UPDATE queue SET state = 'queued' WHERE state = 'sending' AND EXISTS (SELECT 1 FROM legs WHERE"
        " legs.alert_id = queue.alert_id AND legs.account = queue.account AND legs.state = 'queued')"
    )
    conn.execute("UPDATE queue SET state = 'sent' WHERE state = 'sending'")


async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: create the queue table; send rows left `sending` by a crash again; run the scheduler."""
    from tvbridge import tradingday  # noqa: PLC0415 - tradingday imports this module
    from tvbridge.keys import CONFIG, JOURNAL, NOW, SCHEDULER  # noqa: PLC0415 - keys imports this module's types

    journal = app[JOURNAL]
    await journal.write(create_schema)
    await journal.write(_after_crash)
    scheduler = Scheduler(
        journal=journal,
        clock=app[NOW],
        data_dir=app[CONFIG].server.data_dir,
        send=lambda alert_id, accounts: tradingday.send_queued(app, alert_id, accounts),
        strategies=app[CONFIG].strategies,
    )
    app[SCHEDULER] = scheduler
    task = asyncio.create_task(scheduler.loop(), name="queue-scheduler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
