"""The closed-market queue: alerts that arrived while their exchange was closed, kept in the journal file until
their window opens, and the scheduler that sends them then.

Durability: a queued alert is one row per account in the `queue` table, written in the same transaction as the
alert itself (`Store.record_alert(also=QueueInsert(...))`), so a 202 `queued` answer means both are on disk. The alert's
journal status stays `queued` (not `accepted`), so crash recovery leaves it alone until the scheduler sends it.

Sending: `Scheduler.run_due()` claims the due rows (`queued` -> `sending`, one UPDATE, so two runs never send one
row twice), asks `tradingday.decide()` again for each account (an `extra_holidays` entry added meanwhile moves it
to the next open), sets the alert to `accepted` (recovery's work list from here on) and runs it through the
executor: risk limits, the kill switch and the client order ids are the same as for an alert sent at once. The
age check is not repeated: it applied when the alert arrived. While halted nothing is claimed.

Several instances on one PostgreSQL store: only the leader (`Store.is_leader`) claims; the others ask again every
half `journal.leader_lease_s`, and the one that takes over from a dead leader first settles the rows it left
`sending` (as a restart does). The claim itself takes each row once even if two instances claimed at once.

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
    from collections.abc import AsyncIterator, Callable, Iterable, Sequence

    from aiohttp import web

    from tvbridge.journal import Journal
    from tvbridge.store import Store

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


def entry_of(row: Any) -> QueueEntry:
    """A queue row (sqlite3.Row or asyncpg.Record: both index by column name) as a `QueueEntry`."""
    return QueueEntry(
        id=row["id"],
        alert_id=row["alert_id"],
        account=row["account"],
        not_before=datetime.fromisoformat(row["not_before"]),
        reason=row["reason"],
        state=row["state"],
        created_at=row["created_at"],
    )


@attrs.frozen(kw_only=True)
class QueueInsert:
    """What `Store.record_alert(also=...)` writes with an alert that cannot be sent now: its queue rows
    (account, not before, reason) and its legs' states (account, `queued` or `failed`, why). Calling it with a
    SQLite connection writes it there; the PostgreSQL store reads the fields."""

    alert_id: str
    entries: tuple[tuple[str, datetime, str], ...] = ()
    leg_states: tuple[tuple[str, str, str], ...] = ()

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(alert id, account, not before as ISO UTC, reason) per queue row."""
        return [(self.alert_id, account, _utc(moment), reason) for account, moment, reason in self.entries]

    def __call__(self, conn: sqlite3.Connection) -> None:
        now = _now()
        conn.executemany(
            "INSERT INTO queue (alert_id, account, not_before, reason, state, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, 'queued', ?, ?)",
            [(*row, now, now) for row in self.rows()],
        )
        conn.executemany(
            "UPDATE legs SET state = ?, message = ? WHERE alert_id = ? AND account = ?",
            [(state, message, self.alert_id, account) for account, state, message in self.leg_states],
        )


async def list_entries(journal: Store, *, include_done: bool = False) -> list[QueueEntry]:
    return await journal.queue.entries(include_done=include_done)


async def cancel_entries(journal: Store, alert_id: str, account: str | None = None) -> list[QueueEntry]:
    """Cancel the still-queued rows of an alert (one account, or all); returns what was cancelled."""
    return await journal.queue.cancel(alert_id, account)


class SqliteQueue:
    """`tvbridge.store.QueueStore` on the SQLite journal's file."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    async def entries(self, *, include_done: bool = False) -> list[QueueEntry]:
        where = "" if include_done else " WHERE state IN ('queued', 'sending')"
        rows = await self._journal.read(
            lambda conn: conn.execute(f"SELECT * FROM queue{where} ORDER BY not_before, id").fetchall()  # noqa: S608 - a constant
        )
        return [entry_of(row) for row in rows]

    async def cancel(self, alert_id: str, account: str | None = None) -> list[QueueEntry]:
        def cancel(conn: sqlite3.Connection) -> list[QueueEntry]:
            query = "SELECT * FROM queue WHERE alert_id = ? AND state = 'queued'"
            args: tuple[str, ...] = (alert_id,)
            if account is not None:
                query += " AND account = ?"
                args = (alert_id, account)
            rows = [entry_of(row) for row in conn.execute(query, args).fetchall()]
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

        return await self._journal.write(cancel)

    async def claim_due(self, now: datetime, *, halted: Sequence[str] = ()) -> list[QueueEntry]:
        due = _utc(now)
        names = json.dumps(list(halted))

        def claim(conn: sqlite3.Connection) -> list[QueueEntry]:
            rows = [
                entry_of(row)
                for row in conn.execute(
                    "SELECT * FROM queue WHERE state = 'queued' AND not_before <= ?"
                    # not a halted strategy's: it stays queued until resumed
                    " AND NOT EXISTS (SELECT 1 FROM alerts WHERE alerts.alert_id = queue.alert_id"
                    " AND alerts.strategy IN (SELECT value FROM json_each(?)))"
                    " ORDER BY not_before, id",
                    (due, names),
                ).fetchall()
            ]
            stamp = _now()
            for entry in rows:
                conn.execute("UPDATE queue SET state = 'sending', updated_at = ? WHERE id = ?", (stamp, entry.id))
            return rows

        return await self._journal.write(claim)

    async def requeue(self, alert_id: str, account: str, moment: datetime, reason: str) -> None:
        await self._journal.write(
            lambda conn: conn.execute(
                "UPDATE queue SET state = 'queued', not_before = ?, reason = ?, updated_at = ?"
                " WHERE alert_id = ? AND account = ?",
                (_utc(moment), reason, _now(), alert_id, account),
            )
        )

    async def mark(self, alert_id: str, accounts: Iterable[str], state: str) -> None:
        names = list(accounts)
        await self._journal.write(
            lambda conn: conn.executemany(
                "UPDATE queue SET state = ?, updated_at = ? WHERE alert_id = ? AND account = ?",
                [(state, _now(), alert_id, account) for account in names],
            )
        )

    async def next_due(self, *, halted: Sequence[str] = ()) -> datetime | None:
        names = json.dumps(list(halted))
        row = await self._journal.read(
            lambda conn: conn.execute(
                "SELECT MIN(not_before) FROM queue WHERE state = 'queued'"
                " AND NOT EXISTS (SELECT 1 FROM alerts WHERE alerts.alert_id = queue.alert_id"
                " AND alerts.strategy IN (SELECT value FROM json_each(?)))",
                (names,),
            ).fetchone()
        )
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    async def after_crash(self) -> None:
        await self._journal.write(_after_crash)

    async def hand_over(self, alert_id: str, accounts: Sequence[str]) -> None:
        def hand_over(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE alerts SET status = 'accepted' WHERE alert_id = ?", (alert_id,))
            conn.executemany(
                "UPDATE legs SET state = 'pending' WHERE alert_id = ? AND account = ?",
                [(alert_id, name) for name in accounts],
            )

        await self._journal.write(hand_over)


class Scheduler:
    """Sends queued alerts when their time comes; `send(alert_id, accounts)` does the sending."""

    def __init__(
        self,
        *,
        journal: Store,
        clock: Callable[[], datetime],
        data_dir: Any,
        send: Callable[[str, list[str]], Any],
        recheck_s: float = POLL_S,
        strategies: Iterable[str] = (),
    ) -> None:
        self._journal = journal
        self._recheck_s = recheck_s
        self.leading = False
        """Whether this instance ran the queue at its last look (the store's leader; always on SQLite)."""
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
            if not await self.lead():
                return 0
            claimed = await self._journal.queue.claim_due(self._clock(), halted=self._halted_strategies())
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

    async def lead(self) -> bool:
        """Whether this instance sends the queue now. On becoming the leader, the rows a dead leader left
        `sending` are settled first (`after_crash`), as at a restart."""
        leading = await self._journal.is_leader()
        if leading and not self.leading:
            await self._journal.queue.after_crash()
            log.info("queue.leading")
        self.leading = leading
        return leading

    async def requeue(self, alert_id: str, account: str, moment: datetime, reason: str) -> None:
        await self._journal.queue.requeue(alert_id, account, moment, reason)

    async def mark_sent(self, alert_id: str, accounts: Iterable[str]) -> None:
        await self._mark(alert_id, accounts, SENT)

    async def _mark(self, alert_id: str, accounts: Iterable[str], state: str) -> None:
        await self._journal.queue.mark(alert_id, accounts, state)

    def _halted_strategies(self) -> list[str]:
        """The named strategies halted now: their queued alerts are not claimed (they wait for the resume)."""
        return [name for name in self._strategies if halted_reason(self._data_dir, name) is not None]

    async def next_due(self) -> datetime | None:
        return await self._journal.queue.next_due(halted=self._halted_strategies())

    async def loop(self) -> None:
        """Forever: send what is due, then sleep until the next due time (at most `POLL_S`) or a wake-up."""
        while True:
            try:
                await self.run_due()
                due = await self.next_due()
            except Exception:
                log.exception("queue.loop_failed")
                due = None
            wait = POLL_S if self.leading else self._recheck_s  # a follower asks often: it may have to take over
            if due is not None:
                wait = max(0.0, min(wait, (due - self._clock()).total_seconds()))
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
    await journal.ensure_tables(create_schema)
    config = app[CONFIG]
    scheduler = Scheduler(
        journal=journal,
        clock=app[NOW],
        data_dir=config.server.data_dir,
        send=lambda alert_id, accounts: tradingday.send_queued(app, alert_id, accounts),
        recheck_s=min(POLL_S, config.journal.leader_lease_s / 2) if journal.shared else POLL_S,
        strategies=config.strategies,
    )
    await scheduler.lead()  # at start, before the first request: settle the rows a crash left `sending`
    app[SCHEDULER] = scheduler
    task = asyncio.create_task(scheduler.loop(), name="queue-scheduler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
