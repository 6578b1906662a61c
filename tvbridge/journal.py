"""The durable journal: every accepted alert and every leg's state, in SQLite (WAL).

An alert is written here, with all its legs `pending`, before any order is sent and before any 2xx answer.
Each leg is marked `sending` (committed) before its broker call, and its result is written when the broker
answers, so after a crash every leg is in one of these states (`LEG_STATES`):

    pending    never handed to a broker
    sending    handed to the broker, answer not recorded: the order may exist (recovery looks it up)
    unknown    the broker call failed in transit and lookup could not settle it
    placed     the broker has the order (any live state: open, filled, ...)
    cancelled  a cancel leg that ran
    failed     refused by the broker or never sendable; nothing placed
    skipped    not sent because an earlier leg of the account failed or is unknown
    expired    found unsent by crash recovery after `alerts.max_age_s`: never sent
    test_mode  dry run; stale: refused at arrival (too old)

Apart from `state`, each leg keeps its order's own state at the broker (`order_state`, `filled_quantity`,
`average_price`, `order_message`): the placement's answer first, then every change order follow-up finds
(`tvbridge/followup.py`). What is in the journal is what crash recovery and `GET /alerts/<id>` rely on. The
secret is removed from the stored payload. Durability per `journal.synchronous` and group commit: see
`docs/durability.md`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import structlog

from tvbridge.alertqueue import SqliteQueue
from tvbridge.alerts.records import AlertEntry, Finished, SettlingJoin, pending_entry
from tvbridge.config import DEFAULT_STRATEGY
from tvbridge.errors import JournalError
from tvbridge.fileid import FileIdentity
from tvbridge.models import LegStatus
from tvbridge.recentkeys import RecentKeys
from tvbridge.refusal_journal import get_refusal
from tvbridge.sqlite import InlineSqlite, SqliteWorker, Synchronous, open_database
from tvbridge.store.pending import PendingResults
from tvbridge.store.rows import alert_record, dedupe_record, leg_record, strategy_fill

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    from aiohttp import web

    from tvbridge.halt import Halt
    from tvbridge.models import LegResult
    from tvbridge.positions import StrategyFill

log = structlog.get_logger()


def leg_state(result: LegResult) -> str:
    """The journal's state for a leg's outcome (see the module docstring)."""
    if result.status is LegStatus.SUCCESS:
        return "cancelled" if result.order_type == "CANCEL" else "placed"
    return result.status.value


SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id     TEXT PRIMARY KEY,
    received_at  TEXT NOT NULL,
    alert_type   TEXT NOT NULL,
    dedupe_key   TEXT,
    source       TEXT,
    payload      TEXT NOT NULL,
    status       TEXT NOT NULL,
    response     TEXT,
    updated_at   TEXT NOT NULL,
    order_log_offset INTEGER,
    strategy     TEXT,
    order_log_pending INTEGER
);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status);
CREATE TABLE IF NOT EXISTS probe (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    at      TEXT NOT NULL,
    filler  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_dedupe ON alerts (dedupe_key, received_at);
CREATE TABLE IF NOT EXISTS legs (
    alert_id         TEXT NOT NULL REFERENCES alerts (alert_id),
    account          TEXT NOT NULL,
    leg_number       INTEGER NOT NULL,
    client_order_id  TEXT,
    state            TEXT NOT NULL,
    order_id         TEXT,
    message          TEXT,
    result           TEXT,
    updated_at       TEXT NOT NULL,
    order_state      TEXT,
    filled_quantity  INTEGER,
    average_price    TEXT,
    order_message    TEXT,
    order_updated_at TEXT,
    PRIMARY KEY (alert_id, account, leg_number)
);
"""
ORDER_COLUMNS: Final = {
    "order_state": "TEXT",
    "filled_quantity": "INTEGER",
    "average_price": "TEXT",
    "order_message": "TEXT",
    "order_updated_at": "TEXT",
    "bracket": "TEXT",
}
"""The broker's current view of a leg's order, kept by order follow-up (`tvbridge/followup.py`). Journals made
before these columns existed get them when they open (`_add_order_columns`). `bracket` is a bracket leg's parts
as JSON (`tvbridge.brackets`): follow-up keeps following the leg while any part is open."""
FOLLOWED_STATES: Final = ("pending", "open", "trigger_pending", "partially_filled")
"""`tvbridge.broker.OPEN_STATES` as stored: the orders follow-up keeps asking about."""

UNFINISHED: Final = "accepted"
MAX_MARKS_WAITING: Final = 256
"""Order log marks to clear (`order_log_written`) beyond which they get a commit of their own instead of waiting
for the next write to carry them."""
T = TypeVar("T")
OPEN_LEG_STATES: Final = frozenset({"pending", "sending", "unknown"})
"""Legs whose outcome crash recovery still has to settle."""
LEG_STATES: Final = frozenset(
    {*OPEN_LEG_STATES, "placed", "cancelled", "failed", "skipped", "expired", "test_mode", "stale"}
)


def _now() -> str:
    return datetime.now(UTC).isoformat()


@attrs.frozen(kw_only=True)
class OrderStateRecord:
    """What order follow-up writes for a leg: the broker's current view of its order."""

    state: str
    filled_quantity: int | None = None
    average_price: str | None = None
    message: str = ""
    bracket: tuple[dict[str, str | None], ...] = ()
    """A bracket's parts now; empty leaves the stored parts as they are."""


@attrs.frozen(kw_only=True)
class PlannedLeg:
    account: str
    leg_number: int
    client_order_id: str | None


class Journal:
    """Async facade over the journal's SQLite file; every write is committed before it returns, except
    `record_results`, which is handed over and committed with the next group (`tvbridge.alerts.records`).

    The SQLite implementation of `tvbridge.store.Store` (one instance; `tvbridge/store/postgres.py` is the
    shared one)."""

    def __init__(self, path: Path, synchronous: Synchronous = "normal", *, probe_bytes: int = 65536) -> None:
        self.path = path
        self._db = open_database(path, synchronous=synchronous, name="journal")
        self.healthy = True
        self.last_error = ""
        self._on_commit: Callable[[float], None] | None = None
        self._probe_bytes = probe_bytes
        self._files: tuple[FileIdentity, ...] = ()
        self.queue = SqliteQueue(self)
        self.shared = False
        self.live_instances = 1
        """One process owns the file: recovery runs at start only, and this instance is the leader."""
        self._results_pending = PendingResults()
        """Per alert id, its `record_results` write handed over and not committed yet (`tvbridge/store/pending.py`)."""
        self._recent_keys = RecentKeys()
        """The dedupe keys recorded lately: "never" without a query (`tvbridge/recentkeys.py`)."""
        self._logged: list[str] = []
        """Alerts finished in their own commit whose order log rows are written since: their mark
        (`order_log_pending`) is cleared by the next write's transaction (`_write`), no commit of its own."""
        self._flushing: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            await self._db.start()
            await self._db.write(_create)
            keys = await self._db.read(
                lambda conn: conn.execute("SELECT dedupe_key FROM alerts WHERE dedupe_key IS NOT NULL").fetchall()
            )
            for (key,) in keys:  # recorded before this start: a repeat of one of them must find it
                self._recent_keys.add(key)
            wal = self.path.with_name(f"{self.path.name}-wal")
            # the WAL too (SQLite keeps it while a connection is open), when the file system gave us one
            self._files = (FileIdentity.of(self.path), *([FileIdentity.of(wal)] if wal.exists() else []))
        except Exception as e:
            raise JournalError(f"journal {self.path} cannot be opened: {e}") from e

    @property
    def database(self) -> InlineSqlite | SqliteWorker:
        """The journal's database, for a broker that joins its transactions (`JournalJoiner.join_journal`)."""
        return self._db

    def problem(self) -> str:
        """Empty while the journal's file and its WAL are the ones opened; else what happened to them (a
        journal deleted under the server keeps taking writes into a file the next start never sees)."""
        for identity in self._files:
            problem = identity.problem()
            if problem:
                return f"journal {problem}"
        return ""

    async def close(self) -> None:
        await self._results_pending.drain()
        if self._flushing is not None:
            await self._flushing
        if self._logged:  # a clean stop leaves no mark behind (the next start has no rows to look for)
            with contextlib.suppress(JournalError):
                await self._write(_nothing)
        await self._db.close()

    async def settle(self) -> None:
        """Wait until every `record_results` handed over so far is committed (or failed, and logged); later
        ones are not waited for, so a steady stream of alerts cannot keep a reader waiting. So is a commit of
        order log marks under way (`order_log_written`, when many waited)."""
        await self._results_pending.settle()
        if self._flushing is not None:
            await self._flushing

    def observe_commits(self, observer: Callable[[float], None]) -> None:
        """Report the seconds each write took to be committed, waiting for its group commit included, to
        `observer` (metrics: that wait is part of every answer's 3-second budget)."""
        self._on_commit = observer

    async def _write(self, fn: Any) -> Any:
        started = time.perf_counter()
        marks, self._logged = self._logged, []
        try:
            result = await self._db.write(_clearing(marks, fn) if marks else fn)
        except sqlite3.IntegrityError as e:  # a bad row, not a bad disk: the journal itself is fine
            self._logged.extend(marks)  # still set in the file (or cleared already: clearing twice is harmless)
            raise JournalError(f"journal refused the write: {e}") from e
        except Exception as e:
            self._logged.extend(marks)
            self.healthy = False
            self.last_error = f"{type(e).__name__}: {e}"
            raise JournalError("journal unwritable: the alert was not recorded") from e
        except BaseException:
            self._logged.extend(marks)
            raise
        self.healthy = True
        if self._on_commit is not None:
            self._on_commit(time.perf_counter() - started)
        return result

    async def record_plan(
        self, entry: AlertEntry, *, join: Callable[[sqlite3.Connection], object] | None = None
    ) -> None:
        """The alert, its planned legs and `join`'s rows in one transaction, group-committed with concurrent
        alerts; `JournalError` if it fails (see `tvbridge.alerts.records`). A `join` that returns a `Finished`
        (the alert settled inside this transaction) has it written here too, as `finish_alert` writes it, and the
        alert marked "order log row pending" (`order_log_written` clears the mark). A `SettlingJoin` runs first
        and the rows are then inserted as it settled them (one INSERT per row, no UPDATE after)."""
        stored = json.dumps({k: v for k, v in entry.payload.items() if k != "secret"}, default=str)
        now = _now()
        alert_id = entry.alert_id
        if entry.dedupe_key is not None:  # before the write is even queued: a repeat looking now asks the file
            self._recent_keys.add(entry.dedupe_key)

        def insert(conn: sqlite3.Connection) -> None:
            if isinstance(join, SettlingJoin):
                settled = join(conn)
                _insert_alert(conn, join.settled(entry), stored, now, settled)
                return
            _insert_alert(conn, entry, stored, now, None)
            if join is not None:
                finished = join(conn)
                if isinstance(finished, Finished):
                    _write_results(
                        conn,
                        alert_id,
                        finished.status,
                        json.dumps(finished.response, default=str),
                        finished.results,
                        order_log_pending=True,
                    )

        await self._write(insert)

    def order_log_written(self, alert_id: str) -> None:
        """The order log rows of `alert_id`, finished in its own commit (`record_plan` with a `Finished`), are
        written: its mark is cleared by the next write's transaction, which carries it without a commit of its
        own. A crash before then leaves the mark, and recovery finds the rows in the log (`pending_order_log`)."""
        self._logged.append(alert_id)
        if len(self._logged) >= MAX_MARKS_WAITING and self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_marks())

    async def _flush_marks(self) -> None:
        """Many marks and no write to carry them: one commit for all of them."""
        try:
            await self._write(_nothing)
        except JournalError:
            log.warning("journal.order_log_marks_kept", waiting=len(self._logged))
        finally:
            self._flushing = None

    async def pending_order_log(self) -> list[dict[str, Any]]:
        """Alerts finished in their own commit whose order log rows may not be written (a crash between the commit
        and the rows, or after the rows and before the mark's clearing): crash recovery's second list, oldest
        first, each as `get_alert` gives it plus its `order_log_offset`."""

        def fetch(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            marked = conn.execute(
                "SELECT * FROM alerts WHERE order_log_pending IS NOT NULL ORDER BY received_at"
            ).fetchall()
            found = []
            for row in marked:
                legs = conn.execute(
                    "SELECT account, leg_number, client_order_id, state, order_id, order_state, filled_quantity,"
                    " average_price, order_message, order_updated_at, message, result, updated_at, bracket"
                    " FROM legs WHERE alert_id = ? ORDER BY account, leg_number",
                    (row["alert_id"],),
                ).fetchall()
                found.append({**alert_record(row, legs), "order_log_offset": row["order_log_offset"]})
            return found

        return await self._db.read(fetch)

    async def clear_order_log_marks(self, alert_ids: Sequence[str]) -> None:
        """Recovery wrote (or found) the rows of these alerts: their marks go, in one commit."""
        if alert_ids:
            await self._write(_clearing(list(alert_ids), _nothing))

    def record_results(
        self, alert_id: str, status: str, response: Mapping[str, Any], results: Sequence[LegResult] = ()
    ) -> asyncio.Task[bool]:
        """Hand over an alert's outcome (`finish_alert`) without waiting for its commit: it joins the next group.
        The task's result is True once committed; False when it failed, which is logged (`journal.finish_failed`)
        and leaves the alert `accepted` for crash recovery. Writes for one alert commit in the order they were
        handed over (a mixed plan's combined answer after the executor's part), each after the one before."""
        return self._results_pending.hand_over(alert_id, lambda: self.finish_alert(alert_id, status, response, results))

    async def record_alert(
        self,
        *,
        alert_id: str,
        alert_type: str,
        payload: Mapping[str, Any],
        dedupe_key: str | None,
        source: str | None,
        legs: Sequence[PlannedLeg],
        status: str = UNFINISHED,
        also: Callable[[sqlite3.Connection], object] | None = None,
        order_log_offset: int | None = None,
        strategy: str | None = None,
    ) -> None:
        """Record an accepted alert and its pending legs in one transaction; `JournalError` if it fails.

        `record_plan` with every leg `pending` (flatten and the tests use it). `also` runs in the same
        transaction (`record_plan`'s `join`). `order_log_offset` is the order log's size now: this alert's rows
        can only be after it, which is where crash recovery looks for rows written before a crash (so it never
        writes them twice). `strategy`: the strategy it runs under, by default the running one."""
        entry = pending_entry(
            alert_id=alert_id,
            alert_type=alert_type,
            payload=payload,
            dedupe_key=dedupe_key,
            source=source,
            legs=legs,
            status=status,
            order_log_offset=order_log_offset,
            strategy=strategy,
        )
        await self.record_plan(entry, join=also)

    async def record_leg(self, alert_id: str, result: LegResult) -> None:
        await self._write(lambda conn: _update_leg(conn, alert_id, result))

    async def mark_sending(self, alert_id: str, account: str, leg_number: int, done: LegResult | None) -> None:
        """Commit `sending` for a leg before its broker call, with the previous leg's result (`done`) in the
        same transaction: one commit per leg, and recovery knows exactly which leg may be at the broker."""

        def mark(conn: sqlite3.Connection) -> None:
            if done is not None:
                _update_leg(conn, alert_id, done)
            conn.execute(
                "UPDATE legs SET state = 'sending', updated_at = ?"
                " WHERE alert_id = ? AND account = ? AND leg_number = ?",
                (_now(), alert_id, account, leg_number),
            )

        await self._write(mark)

    async def probe(self) -> bool:
        """Whether the journal can take an alert's write now (for `/health`): a committed row as large as the
        largest alert (`probe_bytes`), so a nearly full disk that refuses an alert refuses the probe too (a
        one-page heartbeat still fitted where an alert no longer did). A journal file deleted or replaced
        fails it as well. A success is a real write, so it also clears an earlier failure."""
        problem = self.problem()
        if problem:
            self.healthy = False
            self.last_error = problem
            return False
        try:
            await self._write(
                lambda conn: conn.execute(
                    "INSERT OR REPLACE INTO probe (id, at, filler) VALUES (1, ?, randomblob(?))",
                    (_now(), self._probe_bytes),
                )
            )
        except JournalError:
            return False
        return True

    async def finish_alert(
        self, alert_id: str, status: str, response: Mapping[str, Any], results: Sequence[LegResult] = ()
    ) -> None:
        """Store the final status, the answer given (or that would have been) and the legs' results."""
        text = json.dumps(response, default=str)
        await self._write(lambda conn: _write_results(conn, alert_id, status, text, results))

    async def set_order_state(self, alert_id: str, account: str, leg_number: int, order: OrderStateRecord) -> None:
        """Record what the broker now says about a leg's order (order follow-up), and touch the alert's
        `updated_at` so the status page's stream sees the change."""
        now = _now()

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE legs SET order_state = ?, filled_quantity = ?, average_price = ?, order_message = ?,"
                " order_updated_at = ?, bracket = COALESCE(?, bracket)"
                " WHERE alert_id = ? AND account = ? AND leg_number = ?",
                (
                    order.state,
                    order.filled_quantity,
                    order.average_price,
                    order.message,
                    now,
                    _bracket_json(order.bracket),
                    alert_id,
                    account,
                    leg_number,
                ),
            )
            conn.execute("UPDATE alerts SET updated_at = ? WHERE alert_id = ?", (now, alert_id))

        await self._write(update)

    async def followed_orders(self) -> list[dict[str, Any]]:
        """Placed legs whose order is not final yet, oldest first: order follow-up's work list at start.

        Alerts still `accepted` are left out: crash recovery runs them again and hands their legs over."""
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT legs.alert_id, legs.account, legs.leg_number, legs.client_order_id, legs.order_id,"
                " legs.order_state, legs.filled_quantity, legs.average_price, legs.bracket, legs.result FROM legs"
                " JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE (legs.order_state IN ('pending', 'open', 'trigger_pending', 'partially_filled')"
                " OR (legs.bracket IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(legs.bracket)"
                " WHERE json_extract(json_each.value, '$.state') IN"
                " ('pending', 'open', 'trigger_pending', 'partially_filled'))))"
                " AND legs.state = 'placed' AND legs.client_order_id IS NOT NULL AND alerts.status != ?"
                " ORDER BY alerts.received_at, legs.account, legs.leg_number",
                (UNFINISHED,),
            ).fetchall()
        )
        return [leg_record(row) for row in rows]

    async def get_alert(self, alert_id: str) -> dict[str, Any] | None:
        await self._results_pending.of(alert_id)  # read-your-writes: an outcome handed over is part of the record

        def fetch(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT * FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
            if row is None:
                return None
            legs = conn.execute(
                "SELECT account, leg_number, client_order_id, state, order_id, order_state, filled_quantity,"
                " average_price, order_message, order_updated_at, message, result, updated_at, bracket"
                " FROM legs WHERE alert_id = ? ORDER BY account, leg_number",
                (alert_id,),
            ).fetchall()
            return alert_record(row, legs)

        return await self._db.read(fetch)

    async def find_by_dedupe_key(self, dedupe_key: str, since: str) -> dict[str, Any] | None:
        """The first alert recorded with `dedupe_key` at or after `since` (ISO UTC): alert_id, status, response.

        Read-your-writes: when that alert's results were handed over (`record_results`) and are not committed
        yet, it waits for them and reads again, so a repeat gets the first copy's results, not "running".
        A key this process never recorded (nor found at start) is answered None without a query
        (`tvbridge/recentkeys.py`): the usual answer, for nearly every alert."""
        if not self._recent_keys.maybe_since(dedupe_key, since):
            self._db.ensure_open()  # a closed journal cannot say, with or without a query
            return None

        def find(conn: sqlite3.Connection) -> sqlite3.Row | None:
            row: sqlite3.Row | None = conn.execute(
                "SELECT alert_id, status, response FROM alerts WHERE dedupe_key = ? AND received_at >= ?"
                " ORDER BY received_at LIMIT 1",
                (dedupe_key, since),
            ).fetchone()
            return row

        row = await self._results_pending.read_after(lambda: self._db.read(find), lambda found: str(found["alert_id"]))
        if row is None:
            return None
        return dedupe_record(row)

    async def claim_dedupe(self, dedupe_key: str, alert_id: str, since: str) -> str | None:  # noqa: ARG002 - the Store interface
        """One process owns this file, so the in-process claim (`middlewares/dedupe.py`) is the claim; the
        journal adds the copy recorded before a restart."""
        record = await self.find_by_dedupe_key(dedupe_key, since)
        return None if record is None else str(record["alert_id"])

    async def release_dedupe(self, dedupe_key: str, alert_id: str) -> None:
        """Nothing to release: the key is journaled only with an accepted alert."""

    async def is_leader(self) -> bool:
        return True

    async def get_refusal(self, alert_id: str) -> dict[str, Any] | None:
        return await get_refusal(self, alert_id)

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        rows: list[Any] = await self.read(lambda conn: conn.execute(sql, args).fetchall())
        return rows

    async def run(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        await self.write(lambda conn: [conn.execute(sql, tuple(args)) for sql, args in statements])

    async def shared_halts(self) -> dict[str, tuple[int, Halt | None]]:
        return {}

    async def share_halt(self, halt: Halt | None, *, expected: int, switch: str = "") -> int | None:  # noqa: ARG002 - the Store interface
        return 0

    async def ensure_tables(self, create: Callable[[sqlite3.Connection], object]) -> None:
        await self.write(create)

    async def prune_dedupe_keys(self, before: str) -> int:
        """Clear the dedupe keys of alerts received before `before` (ISO UTC); the alerts themselves stay."""
        return int(
            await self._write(
                lambda conn: (
                    conn.execute(
                        "UPDATE alerts SET dedupe_key = NULL WHERE dedupe_key IS NOT NULL AND received_at < ?",
                        (before,),
                    ).rowcount
                )
            )
        )

    async def unfinished(self) -> list[str]:
        """Ids of alerts accepted but not finished (crash recovery's work list), oldest first."""
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT alert_id FROM alerts WHERE status = ? ORDER BY received_at", (UNFINISHED,)
            ).fetchall()
        )
        return [row["alert_id"] for row in rows]

    async def order_log_start(self) -> int:
        """Where in the order log the rows of the unfinished alerts can begin: the smallest offset journaled
        with them (0, the whole log, when one was journaled without an offset)."""

        def smallest(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT COUNT(*), COUNT(order_log_offset), MIN(order_log_offset) FROM alerts WHERE status = ?",
                (UNFINISHED,),
            ).fetchone()
            return int(row[2]) if row[0] and row[0] == row[1] else 0

        return await self._db.read(smallest)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the journal's connection (for modules that keep their own tables in the journal file)."""
        return await self._db.read(fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a committed transaction; `JournalError` if it fails."""
        result: T = await self._write(fn)
        return result

    async def count_orders(self, account: str, *, since: datetime) -> int:
        """Legs of `account` that reached (or may have reached) the broker since `since`: the daily risk count."""
        stamp = since.astimezone(UTC).isoformat()
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT COUNT(*) FROM legs WHERE account = ? AND updated_at >= ? AND client_order_id IS NOT NULL"
                " AND (order_id IS NOT NULL OR state IN ('success', 'placed', 'unknown', 'test_mode', 'sending'))",
                (account, stamp),
            ).fetchone()
        )
        return int(row[0])

    async def count_strategy_orders(self, strategy: str, *, since: datetime) -> int:
        """Legs of `strategy`'s alerts, on any account, that reached (or may have reached) the broker since
        `since`: the strategy's own `max_orders_per_day`."""
        stamp = since.astimezone(UTC).isoformat()
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT COUNT(*) FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE COALESCE(alerts.strategy, ?) = ? AND legs.updated_at >= ? AND legs.client_order_id IS NOT NULL"
                " AND (legs.order_id IS NOT NULL OR legs.state IN ('success', 'placed', 'unknown', 'test_mode',"
                " 'sending'))",
                (DEFAULT_STRATEGY, strategy, stamp),
            ).fetchone()
        )
        return int(row[0])

    async def fills(self, account: str, position_key: str | None = None) -> list[StrategyFill]:
        """What tvbridge's own orders on `account` filled, per strategy: the store behind each strategy's own
        position (`positions.book`). `position_key` narrows it to one contract and product. Results handed over
        and not committed yet are waited for: an exit right after its entry must see the entry's fill."""
        await self.settle()

        def fetch(conn: sqlite3.Connection) -> list[StrategyFill]:
            rows = conn.execute(
                "SELECT COALESCE(alerts.strategy, ?) AS strategy, json_extract(legs.result, '$.position_key') AS key,"
                " json_extract(legs.result, '$.transaction') AS side, legs.filled_quantity AS filled, legs.bracket,"
                " alerts.received_at, alerts.alert_type"
                " FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE legs.account = ? AND legs.filled_quantity > 0"
                " AND json_extract(legs.result, '$.position_key') IS NOT NULL"
                " AND (? IS NULL OR json_extract(legs.result, '$.position_key') = ?)"
                " ORDER BY alerts.received_at, legs.leg_number",
                (DEFAULT_STRATEGY, account, position_key, position_key),
            ).fetchall()
            return [strategy_fill(row) for row in rows]

        return await self._db.read(fetch)

    async def unsettled(self, account: str, position_key: str | None = None) -> set[str]:
        """Client order ids of tvbridge's legs on `account` in one contract (`position_key`) whose order is not
        final yet (or a bracket part is not): their fills may not be journaled yet (order follow-up settles them
        before a strategy's share is read)."""

        def fetch(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(
                "SELECT client_order_id FROM legs WHERE account = ? AND client_order_id IS NOT NULL"
                " AND json_extract(result, '$.position_key') IS NOT NULL"
                " AND (? IS NULL OR json_extract(result, '$.position_key') = ?)"
                " AND (order_state IN ('pending', 'open', 'trigger_pending', 'partially_filled')"
                " OR (bracket IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(bracket)"
                " WHERE json_extract(json_each.value, '$.state') IN"
                " ('pending', 'open', 'trigger_pending', 'partially_filled'))))",
                (account, position_key, position_key),
            ).fetchall()
            return {row[0] for row in rows}

        return await self._db.read(fetch)

    async def strategy_orders(self, strategy: str, account: str) -> set[str]:
        """Client order ids of `strategy`'s legs on `account` whose order may still be open (square-off cancels
        those, and only those). Waits for results handed over, like `fills`."""
        await self.settle()

        def fetch(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(
                "SELECT legs.client_order_id FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE COALESCE(alerts.strategy, ?) = ? AND legs.account = ?"
                " AND legs.order_state IN ('pending', 'open', 'trigger_pending', 'partially_filled')"
                " AND legs.client_order_id IS NOT NULL",
                (DEFAULT_STRATEGY, strategy, account),
            ).fetchall()
            return {row[0] for row in rows}

        return await self._db.read(fetch)

    async def open_brackets(self, strategy: str, account: str, position_key: str) -> list[str]:
        """Order ids of `strategy`'s bracket legs on `account` in one contract (`position_key`) with a part still
        open: what EXIT_ALL under a strategy cancels (never another strategy's stops)."""

        def fetch(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT legs.order_id FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE COALESCE(alerts.strategy, ?) = ? AND legs.account = ? AND legs.order_id IS NOT NULL"
                " AND json_extract(legs.result, '$.position_key') = ? AND legs.bracket IS NOT NULL"
                " AND EXISTS (SELECT 1 FROM json_each(legs.bracket) WHERE json_extract(json_each.value, '$.state')"
                " IN ('pending', 'open', 'trigger_pending', 'partially_filled'))"
                " ORDER BY alerts.received_at",
                (DEFAULT_STRATEGY, strategy, account, position_key),
            ).fetchall()
            return [row[0] for row in rows]

        return await self._db.read(fetch)

    async def order_strategies(self, account: str, order_id: str) -> set[str]:
        """The strategies whose legs on `account` placed order `order_id` (a bracket's target or stop-loss
        included); empty when tvbridge never placed it. A strategy's `cancel_order` by order id checks it."""

        def fetch(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(
                "SELECT DISTINCT COALESCE(alerts.strategy, ?) FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE legs.account = ? AND (legs.order_id = ? OR (legs.bracket IS NOT NULL AND EXISTS"
                " (SELECT 1 FROM json_each(legs.bracket) WHERE json_extract(json_each.value, '$.order_id') = ?)))",
                (DEFAULT_STRATEGY, account, order_id, order_id),
            ).fetchall()
            return {row[0] for row in rows}

        return await self._db.read(fetch)

    async def bracket_entries(self, strategy: str, account: str) -> list[tuple[str, str, str, int]]:
        """`strategy`'s bracket legs on `account` with a part still open, in every contract, as (order id,
        position key, side, quantity): what square-off cancels by entry order id (a filled entry's stop and
        target are not open orders of the strategy's own, and would otherwise stay resting)."""

        def fetch(conn: sqlite3.Connection) -> list[tuple[str, str, str, int]]:
            rows = conn.execute(
                "SELECT legs.order_id, json_extract(legs.result, '$.position_key'),"
                " json_extract(legs.result, '$.transaction'), json_extract(legs.result, '$.quantity')"
                " FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE COALESCE(alerts.strategy, ?) = ? AND legs.account = ? AND legs.order_id IS NOT NULL"
                " AND json_extract(legs.result, '$.position_key') IS NOT NULL AND legs.bracket IS NOT NULL"
                " AND EXISTS (SELECT 1 FROM json_each(legs.bracket) WHERE json_extract(json_each.value, '$.state')"
                " IN ('pending', 'open', 'trigger_pending', 'partially_filled'))"
                " ORDER BY alerts.received_at",
                (DEFAULT_STRATEGY, strategy, account),
            ).fetchall()
            return [(row[0], row[1], row[2], int(row[3] or 0)) for row in rows]

        return await self._db.read(fetch)

    async def open_orders_of(
        self, strategy: str, account: str, *, symbol: str, exchange: str | None, side: str | None
    ) -> list[str]:
        """Order ids of `strategy`'s orders on `account` for `symbol` (and `exchange`, `side`) that may still be
        open, a bracket's entry included while a part is: what its `cancel_order` by symbol cancels."""

        def fetch(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT legs.order_id FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE COALESCE(alerts.strategy, ?) = ? AND legs.account = ? AND legs.order_id IS NOT NULL"
                " AND legs.client_order_id IS NOT NULL"
                " AND upper(json_extract(legs.result, '$.symbol')) = upper(?)"
                " AND (? IS NULL OR json_extract(legs.result, '$.exchange') = ?)"
                " AND (? IS NULL OR json_extract(legs.result, '$.transaction') = ?)"
                " AND (legs.order_state IN ('pending', 'open', 'trigger_pending', 'partially_filled')"
                " OR (legs.bracket IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(legs.bracket)"
                " WHERE json_extract(json_each.value, '$.state') IN"
                " ('pending', 'open', 'trigger_pending', 'partially_filled'))))"
                " ORDER BY alerts.received_at",
                (DEFAULT_STRATEGY, strategy, account, symbol, exchange, exchange, side, side),
            ).fetchall()
            return [row[0] for row in rows]

        return await self._db.read(fetch)

    async def has_run(self, *, strategy: str, source: str, account: str) -> bool:
        """Whether a flatten-type run of `strategy` from `source` (the daily square-off names its exchange day
        there: `square_off 2026-12-07`) on `account` was journaled, finished or not: what keeps it to one run a
        day across restarts."""
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT 1 FROM alerts WHERE COALESCE(strategy, ?) = ? AND source = ?"
                " AND json_extract(payload, '$.flatten.account') = ? LIMIT 1",
                (DEFAULT_STRATEGY, strategy, source, account),
            ).fetchone()
        )
        return row is not None

    async def integrity_ok(self) -> bool:
        row = await self._db.read(lambda conn: conn.execute("PRAGMA quick_check").fetchone())
        return bool(row and row[0] == "ok")


def _create(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(alerts)")}
    if "order_log_offset" not in columns:  # a journal from before it existed: recovery reads the whole log
        conn.execute("ALTER TABLE alerts ADD COLUMN order_log_offset INTEGER")
    if "strategy" not in columns:  # a journal from before strategies: its alerts were all `default`'s
        conn.execute("ALTER TABLE alerts ADD COLUMN strategy TEXT")
    if "order_log_pending" not in columns:  # before one-commit alerts: none is marked
        conn.execute("ALTER TABLE alerts ADD COLUMN order_log_pending INTEGER")
    # recovery's look-up at start; only the few marked alerts are in it (the mark is cleared soon after its commit)
    conn.execute(
        "CREATE INDEX IF NOT EXISTS alerts_order_log_pending ON alerts (order_log_pending)"
        " WHERE order_log_pending IS NOT NULL"
    )
    _add_order_columns(conn)


def _add_order_columns(conn: sqlite3.Connection) -> None:
    """Give a journal from before order follow-up its columns, filled from each placed leg's stored result (so
    orders left open by the old version are followed too), and the index follow-up's start reads."""
    present = {row["name"] for row in conn.execute("PRAGMA table_info(legs)")}
    missing = [name for name in ORDER_COLUMNS if name not in present]
    for name in missing:
        conn.execute(f"ALTER TABLE legs ADD COLUMN {name} {ORDER_COLUMNS[name]}")
    if "order_state" in missing:
        conn.execute(
            "UPDATE legs SET order_state = json_extract(result, '$.order_state')"
            " WHERE result IS NOT NULL AND json_valid(result)"
        )
    marks = ",".join(f"'{state}'" for state in FOLLOWED_STATES)
    conn.execute(f"CREATE INDEX IF NOT EXISTS legs_followed ON legs (order_state) WHERE order_state IN ({marks})")
    # the strategies' own positions are summed from these rows (`Journal.fills`), per account
    conn.execute("CREATE INDEX IF NOT EXISTS legs_filled ON legs (account) WHERE filled_quantity > 0")


def _write_results(
    conn: sqlite3.Connection,
    alert_id: str,
    status: str,
    response: str,
    results: Sequence[LegResult],
    *,
    order_log_pending: bool = False,
) -> None:
    """The alert's outcome: each leg's result, the final status and the answer (`finish_alert`, and `record_plan`
    for an alert finished in its own commit, which is also marked "order log row pending")."""
    for result in results:
        _update_leg(conn, alert_id, result)
    conn.execute(
        "UPDATE alerts SET status = ?, response = ?, updated_at = ?, order_log_pending = ? WHERE alert_id = ?",
        (status, response, _now(), 1 if order_log_pending else None, alert_id),
    )


_INSERT_ALERT: Final = (
    "INSERT INTO alerts (alert_id, received_at, alert_type, dedupe_key, source, payload, status, response,"
    " updated_at, order_log_offset, strategy, order_log_pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_PLANNED_LEG: Final = (
    "INSERT INTO legs (alert_id, account, leg_number, client_order_id, state, message, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_LEG_RESULT: Final = (
    "INSERT INTO legs (alert_id, account, leg_number, client_order_id, state, order_id, message, result,"
    " updated_at, order_state, filled_quantity, average_price, bracket) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert_alert(
    conn: sqlite3.Connection, entry: AlertEntry, stored: str, now: str, finished: Finished | None
) -> None:
    """The alert's row and its legs' (`record_plan`): as planned, or, settled in this transaction (`finished`), with
    the final status, the answer, the "order log row pending" mark and each leg's result, as `_write_results` would
    write them over the planned rows (a result's client order id, when it has none, is the planned leg's)."""
    results = {(r.account, r.leg_number): r for r in finished.results} if finished is not None else {}
    settled_at = now if finished is None else _now()  # as `_write_results` stamps it: when it was settled
    conn.execute(
        _INSERT_ALERT,
        (
            entry.alert_id,
            now,
            entry.alert_type,
            entry.dedupe_key,
            entry.source,
            stored,
            entry.status if finished is None else finished.status,
            None if finished is None else json.dumps(finished.response, default=str),
            settled_at,
            entry.order_log_offset,
            entry.strategy,
            None if finished is None else 1,
        ),
    )
    planned = [
        (entry.alert_id, leg.account, leg.leg_number, leg.client_order_id, leg.state, leg.message, now)
        for leg in entry.legs
        if (leg.account, leg.leg_number) not in results
    ]
    if planned:
        conn.executemany(_INSERT_PLANNED_LEG, planned)
    if results:
        client_ids = {(leg.account, leg.leg_number): leg.client_order_id for leg in entry.legs}
        conn.executemany(
            _INSERT_LEG_RESULT,
            [
                _leg_row(entry.alert_id, r, r.client_order_id or client_ids.get((r.account, r.leg_number)), settled_at)
                for r in results.values()
            ],
        )


def _leg_row(alert_id: str, result: LegResult, client_order_id: str | None, now: str) -> tuple[object, ...]:
    """A leg's row from its result (`_INSERT_LEG_RESULT`'s columns)."""
    return (
        alert_id,
        result.account,
        result.leg_number,
        client_order_id,
        leg_state(result),
        result.order_id,
        result.message,
        json.dumps(attrs.asdict(result, recurse=False)),  # flat: str, int and a StrEnum
        now,
        result.order_state,
        result.filled_quantity,
        result.average_price,
        _bracket_json(result.bracket),
    )


def _nothing(conn: sqlite3.Connection) -> None:  # noqa: ARG001 - a write that only carries the marks' clearing
    return None


def _clearing(alert_ids: list[str], fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """`fn`, preceded in its transaction by the clearing of these alerts' order log marks (their rows are written)."""

    def both(conn: sqlite3.Connection) -> T:
        conn.executemany("UPDATE alerts SET order_log_pending = NULL WHERE alert_id = ?", [(a,) for a in alert_ids])
        return fn(conn)

    return both


def _bracket_json(parts: Sequence[Mapping[str, str | None]]) -> str | None:
    return json.dumps([dict(part) for part in parts]) if parts else None


def _update_leg(conn: sqlite3.Connection, alert_id: str, result: LegResult) -> None:
    state = leg_state(result)
    payload = json.dumps(attrs.asdict(result, recurse=False))  # flat: str, int and a StrEnum
    # the order columns take the placement's answer once; after that order follow-up owns them, so a result
    # written again later (the alert's final write, a combined closed-market answer) never turns them back
    updated = conn.execute(
        "UPDATE legs SET state = ?, order_id = ?, message = ?, result = ?, client_order_id = COALESCE(?,"
        " client_order_id), updated_at = ?,"
        " filled_quantity = CASE WHEN order_state IS NULL THEN ? ELSE filled_quantity END,"
        " average_price = CASE WHEN order_state IS NULL THEN ? ELSE average_price END,"
        " bracket = CASE WHEN order_state IS NULL THEN ? ELSE bracket END,"
        " order_state = COALESCE(order_state, ?)"
        " WHERE alert_id = ? AND account = ? AND leg_number = ?",
        (
            state,
            result.order_id,
            result.message,
            payload,
            result.client_order_id,
            _now(),
            result.filled_quantity,
            result.average_price,
            _bracket_json(result.bracket),
            result.order_state,
            alert_id,
            result.account,
            result.leg_number,
        ),
    )
    if updated.rowcount == 0:
        conn.execute(_INSERT_LEG_RESULT, _leg_row(alert_id, result, result.client_order_id, _now()))


async def journal_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open the store (`[journal]`: this SQLite journal, or PostgreSQL) before the first request,
    close it after the last."""
    from tvbridge.keys import CONFIG, JOURNAL  # noqa: PLC0415 - keys imports this module's types
    from tvbridge.store import open_store  # noqa: PLC0415 - the store imports this module

    journal = open_store(app[CONFIG])
    with contextlib.ExitStack() as owned:
        if isinstance(journal, Journal):
            owned.enter_context(_serving(journal.path))
        await journal.open()
        app[JOURNAL] = journal
        yield
        await journal.close()


@contextlib.contextmanager
def _serving(path: Path) -> Iterator[None]:
    """One server per SQLite journal: an exclusive lock on `<journal>.lock` for as long as it serves.

    A second `tvbridge serve` on the same file (another port, an overlapping restart) would run crash recovery
    on the first one's alerts in flight, and the dedupe filter (`recentkeys.py`) knows only the keys its own
    process recorded: a resend landing on the other server could be placed twice. So it refuses to start. The
    lock goes with the process (kill -9 included); the CLI's commands do not take it. PostgreSQL is the store for
    several servers (docs/postgresql.md)."""
    lock_path = path.with_name(f"{path.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            msg = (
                f"another tvbridge server is using the journal {path} (it holds {lock_path.name}): stop it first;"
                " several servers share a PostgreSQL store, never a SQLite file"
            )
            raise JournalError(msg) from None
        yield
    finally:
        os.close(fd)
