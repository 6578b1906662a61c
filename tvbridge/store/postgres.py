"""`tvbridge.store.Store` on PostgreSQL, through asyncpg: the state several tvbridge instances share (issue 20).

Each operation is one transaction on a pooled connection, bounded by `OPERATION_TIMEOUT_S`: a database that is
down, unreachable or read-only fails the operation within that time with `JournalError` (503, nothing recorded,
TradingView resends), `/health` says so, and the first operation that succeeds once it is back clears it, with
no restart (the pool replaces the connections the outage broke).

The statements mirror `tvbridge/journal.py` and `tvbridge/alertqueue.py` column for column; what differs is
PostgreSQL's: `$n` parameters, `ON CONFLICT` for the dedupe claim (a unique row: exactly one of two instances
claiming a key at the same moment inserts it), `FOR UPDATE SKIP LOCKED` so two schedulers never claim one queue
row, `jsonb` for the bracket's parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import asyncpg
import attrs
import structlog

from tvbridge.alertqueue import QueueInsert, entry_of
from tvbridge.alerts.records import AlertEntry, pending_entry
from tvbridge.config import DEFAULT_STRATEGY
from tvbridge.errors import JournalError
from tvbridge.halt import Halt
from tvbridge.journal import FOLLOWED_STATES, UNFINISHED, leg_state
from tvbridge.refusal_journal import get_refusal
from tvbridge.store import connect_failure
from tvbridge.store.migrations import migrate
from tvbridge.store.pending import PendingResults
from tvbridge.store.rows import alert_record, dedupe_record, leg_record, strategy_fill

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

    from tvbridge.alertqueue import QueueEntry
    from tvbridge.journal import OrderStateRecord, PlannedLeg
    from tvbridge.models import LegResult
    from tvbridge.positions import StrategyFill

log = structlog.get_logger()
T = TypeVar("T")
Conn = asyncpg.pool.PoolConnectionProxy  # what the pool lends; the Connection's methods
OPERATION_TIMEOUT_S: Final = 2.0
"""Longest one store operation may take, connecting included: within TradingView's 3 s a failed write still
leaves time to answer 503, which TradingView resends, rather than nothing, which it never resends."""
RESULTS_TIMEOUT_S: Final = 10.0
"""The bound on an alert's results handed over after its answer (`record_results`): nothing waits on them but
the repeat's look-up, so a busy database gets longer than on the answer's path before they are given up."""
POOL_SIZE: Final = 10
DATABASE_TROUBLE: Final = "the PostgreSQL database cannot be reached or refused the operation"
CLAIM_STALE_S: Final = 10.0
"""A dedupe claim whose alert is still unrecorded after this long was left by a copy that failed: taken over."""
FOLLOWED: Final = tuple(FOLLOWED_STATES)
LEADER_LOCK: Final = 0x7476_6272_6467_0002
LEADER_LOCK_PARTS: Final = (LEADER_LOCK >> 32, LEADER_LOCK & 0xFFFF_FFFF)
"""A bigint advisory lock as `pg_locks` shows it: its high half as `classid`, its low half as `objid`."""
HOLDS_LEADER_LOCK: Final = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
    " AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1)"
)
"""The advisory lock the leader holds for the scheduled work (a session lock: it goes with its connection)."""


class ClaimLostError(JournalError):
    """This copy's dedupe claim was taken over (it had stayed unrecorded too long): it must not be recorded."""


class LeaseLostError(JournalError):
    """Another instance took this alert over (this one's lease had expired): it must not send or record more."""


class StoreUnsupportedError(JournalError):
    """A SQLite-only operation (a module's own tables in the SQLite file) asked of the PostgreSQL store."""


def numbered_placeholders(sql: str) -> str:
    """SQLite's `?` placeholders as PostgreSQL's `$1, $2, ...` (outside quoted literals), so a module's portable
    SQL is written once for both stores."""
    parts = sql.split("'")
    count = 0
    for i in range(0, len(parts), 2):  # the even parts are outside quotes
        pieces = parts[i].split("?")
        numbered = [pieces[0]]
        for piece in pieces[1:]:
            count += 1
            numbered.append(f"${count}{piece}")
        parts[i] = "".join(numbered)
    return "'".join(parts)


def db_time(expression: str) -> str:
    """SQL for the timestamptz `expression` as the ISO text the tables keep (the form `_now()` writes)."""
    return f"to_char(({expression}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"


DB_NOW: Final = db_time("clock_timestamp()")
"""The database's clock, as ISO text: what leases and claims are stamped with (one clock for every instance)."""
LEASE_ALIVE: Final = "instances.lease_until::timestamptz > clock_timestamp()"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _bracket_json(parts: Sequence[Mapping[str, str | None]]) -> str | None:
    return json.dumps([dict(part) for part in parts]) if parts else None


class PostgresStore:
    """The journal, dedupe claims and closed-market queue in one PostgreSQL database."""

    def __init__(self, url: str, *, probe_bytes: int = 65536, lease_s: float = 10.0) -> None:
        self._url = url
        self._pool: asyncpg.Pool | None = None
        self._probe_bytes = probe_bytes
        self._on_commit: Callable[[float], None] | None = None
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        """This process among those sharing the database: its lease, its probe row, the alerts it runs."""
        self.lease_s = lease_s
        self.shared = True
        self.live_instances = 1
        """Instances whose lease was alive at this one's last renewal (this one included)."""
        """Several instances share this store: unfinished alerts are recovered by lease, scheduled work by one
        leader (`is_leader`)."""
        self.healthy = True
        self.last_error = ""
        self.queue = PostgresQueue(self)
        self._lease_task: asyncio.Task[None] | None = None
        self._results_pending = PendingResults()
        """Per alert id, its `record_results` write handed over and not committed yet (`tvbridge/store/pending.py`)."""
        self._leader: asyncpg.Connection | None = None
        self._leading = False
        self._leader_lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT_S * 5):
                self._pool = await asyncpg.create_pool(
                    self._url, min_size=1, max_size=POOL_SIZE, timeout=OPERATION_TIMEOUT_S
                )
                async with self._pool.acquire() as conn:
                    await migrate(conn)
                await self._renew_lease()
        except JournalError:
            await self.close()
            raise
        except Exception as e:
            await self.close()
            # never the URL, nor a parse error's text: either may carry the password
            raise JournalError(f"the PostgreSQL journal cannot be opened: {connect_failure(e)}") from e

        self._lease_task = asyncio.create_task(self._keep_lease(), name="store-lease")

    async def close(self) -> None:
        await self._results_pending.drain()
        task, self._lease_task = self._lease_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._leader_lock:
            await self._hand_leadership_over()
        if self._pool is not None:
            # a clean stop hands its leftovers over at once
            with contextlib.suppress(JournalError):
                await self._write(
                    lambda conn: conn.execute("DELETE FROM instances WHERE instance_id = $1", self.instance)
                )
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(OPERATION_TIMEOUT_S):
                    await pool.close()
            except TimeoutError:
                pool.terminate()

    def problem(self) -> str:
        return ""

    async def _renew_lease(self) -> None:
        """The lease runs on the database's clock, set and compared there (`DB_NOW`, `LEASE_ALIVE`): a machine
        whose clock runs fast must not see a living instance's lease as expired and take its alerts over."""

        async def renew(conn: Conn) -> int:
            await conn.execute(
                f"INSERT INTO instances (instance_id, started_at, lease_until) VALUES ($1, {DB_NOW},"  # noqa: S608 - constants
                f" {db_time('clock_timestamp() + make_interval(secs => $2)')})"
                " ON CONFLICT (instance_id) DO UPDATE SET lease_until = EXCLUDED.lease_until",
                self.instance,
                self.lease_s,
            )
            alive = await conn.fetchval(f"SELECT COUNT(*) FROM instances WHERE {LEASE_ALIVE}")  # noqa: S608 - constants
            return int(alive or 1)

        self.live_instances = await self._run(renew, write=True, observe=False)

    async def _keep_lease(self) -> None:
        """Renew this instance's lease three times per `lease_s`: one missed renewal is not yet a death."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self._renew_lease()
            except JournalError:
                log.warning("store.lease_not_renewed", error=self.last_error)

    async def is_leader(self) -> bool:
        """Whether this instance runs the scheduled work now: it holds the leader's advisory lock on a connection
        of its own. The lock goes with the connection, so a leader that dies (or loses the database) frees it, and
        the next instance to ask takes it; TCP keepalives bound how long a silently dead leader keeps it.

        The queue loop and the square-off loop ask concurrently: one question at a time (`_leader_lock`), or two
        would share the connection ("another operation is in progress"), or each open one and orphan a lock."""
        async with self._leader_lock:
            return await self._ask_leadership()

    async def _ask_leadership(self) -> bool:
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT_S):
                if self._leader is None or self._leader.is_closed():
                    self._drop_leadership()
                    probe_s = str(max(1, int(self.lease_s / 3)))
                    self._leader = await asyncpg.connect(
                        self._url,
                        timeout=OPERATION_TIMEOUT_S,
                        server_settings={
                            "application_name": f"tvbridge leader {self.instance}"[:63],
                            "tcp_keepalives_idle": probe_s,
                            "tcp_keepalives_interval": probe_s,
                            "tcp_keepalives_count": "2",
                        },
                    )
                if self._leading:  # still holding it? (this backend, not merely a live connection)
                    self._leading = bool(await self._leader.fetchval(HOLDS_LEADER_LOCK, *LEADER_LOCK_PARTS))
                    if not self._leading:
                        log.warning("store.leader_lost", instance=self.instance)
                else:
                    self._leading = bool(await self._leader.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK))
                    if self._leading:
                        log.info("store.leader", instance=self.instance)
        except Exception:  # noqa: BLE001 - no database, no leadership; asked again on the next round
            self._drop_leadership()
        return self._leading

    async def _hand_leadership_over(self) -> None:
        """A clean stop unlocks before it goes, so the next leader need not wait for the server to notice."""
        leader = self._leader
        if leader is not None and self._leading and not leader.is_closed():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(OPERATION_TIMEOUT_S):
                    await leader.execute("SELECT pg_advisory_unlock_all()")
        self._drop_leadership(stopping=True)

    def _drop_leadership(self, *, stopping: bool = False) -> None:
        if self._leading and not stopping:
            log.warning("store.leader_lost", instance=self.instance)
        self._leading = False
        leader, self._leader = self._leader, None
        if leader is not None and not leader.is_closed():
            leader.terminate()  # the lock goes with the connection

    def observe_commits(self, observer: Callable[[float], None]) -> None:
        self._on_commit = observer

    async def _run(
        self,
        fn: Callable[[Conn], Awaitable[T]],
        *,
        write: bool,
        observe: bool = True,
        timeout_s: float = OPERATION_TIMEOUT_S,
    ) -> T:
        """`fn` in one transaction on a pooled connection, within `timeout_s`."""
        if self._pool is None:
            raise JournalError("journal unwritable: the database is not open")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s), self._pool.acquire() as conn, conn.transaction():
                result = await fn(conn)
        except JournalError:  # decided by the operation itself (a dedupe claim taken over): the database is fine
            raise
        except asyncpg.IntegrityConstraintViolationError as e:  # a bad row, not a bad database
            raise JournalError(f"journal refused the write: {e}") from e
        except Exception as e:
            self.healthy = False
            # /health shows it to whoever asks: the driver's text names the host, port and user, so it stays in
            # the log (for the operator) and the answer says only what kind of trouble it is
            self.last_error = DATABASE_TROUBLE
            log.warning("store.database_error", error=connect_failure(e))
            if write:
                raise JournalError("journal unwritable: the alert was not recorded") from e
            raise JournalError("journal unreadable: the database cannot be reached") from e
        self.healthy = True
        if write and observe and self._on_commit is not None:
            self._on_commit(time.perf_counter() - started)
        return result

    async def _write(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        return await self._run(fn, write=True)

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        return await self._run(fn, write=False)

    async def record_plan(self, entry: AlertEntry, *, join: Callable[[Any], object] | None = None) -> None:
        """The alert, its planned legs and the queue rows of `join` (a `QueueInsert`: any other joiner needs
        SQLite, and is a bug here) in one transaction; `JournalError` if it fails (`tvbridge.alerts.records`).

        With a dedupe key, the claim is checked in the same transaction: a copy whose claim another copy took
        over (`claim_dedupe`) is refused, so the alert is never recorded twice. The alert belongs to this
        instance (`owner`) until its results are recorded or another instance takes it over (`unfinished`)."""
        if join is not None and not isinstance(join, QueueInsert):
            raise TypeError(f"the PostgreSQL store cannot run {join!r} in its transaction (a SQLite joiner)")
        stored = json.dumps({k: v for k, v in entry.payload.items() if k != "secret"}, default=str)
        now = _now()
        alert_id = entry.alert_id

        async def insert(conn: Conn) -> None:
            if entry.dedupe_key is not None:  # still ours? (a claim left stale is taken over: `claim_dedupe`)
                holder = await conn.fetchval(
                    f"INSERT INTO dedupe_claims (dedupe_key, alert_id, claimed_at) VALUES ($1, $2, {DB_NOW})"  # noqa: S608 - constants
                    " ON CONFLICT (dedupe_key) DO UPDATE SET dedupe_key = EXCLUDED.dedupe_key RETURNING alert_id",
                    entry.dedupe_key,
                    alert_id,
                )
                if holder != alert_id:
                    raise ClaimLostError(f"an identical alert ({holder}) is being accepted elsewhere; resend later")
            await conn.execute(
                "INSERT INTO alerts (alert_id, received_at, alert_type, dedupe_key, source, payload, status,"
                " updated_at, order_log_offset, owner, strategy)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                alert_id,
                now,
                entry.alert_type,
                entry.dedupe_key,
                entry.source,
                stored,
                entry.status,
                now,
                entry.order_log_offset,
                self.instance,
                entry.strategy,
            )
            if entry.legs:
                await conn.executemany(
                    "INSERT INTO legs (alert_id, account, leg_number, client_order_id, state, message, updated_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    [
                        (alert_id, leg.account, leg.leg_number, leg.client_order_id, leg.state, leg.message, now)
                        for leg in entry.legs
                    ],
                )
            if join is not None:
                await conn.executemany(
                    "INSERT INTO queue (alert_id, account, not_before, reason, state, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, 'queued', $5, $5)",
                    [(*row, now) for row in join.rows()],
                )
                await conn.executemany(
                    "UPDATE legs SET state = $1, message = $2 WHERE alert_id = $3 AND account = $4",
                    [(state, message, join.alert_id, account) for account, state, message in join.leg_states],
                )

        await self._write(insert)

    def record_results(
        self, alert_id: str, status: str, response: Mapping[str, Any], results: Sequence[LegResult] = ()
    ) -> asyncio.Task[bool]:
        """Hand over an alert's outcome (`finish_alert`) without waiting for its commit, as the SQLite journal
        does; reads that answer users (`get_alert`, `find_by_dedupe_key`) wait for what was handed over. Writes for
        one alert commit in the order they were handed over, each after the one before (see the SQLite journal)."""
        return self._results_pending.hand_over(
            alert_id, lambda: self.finish_alert(alert_id, status, response, results, timeout_s=RESULTS_TIMEOUT_S)
        )

    async def settle(self) -> None:
        """Wait until every `record_results` handed over so far is committed (or failed, and logged)."""
        await self._results_pending.settle()

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
        also: QueueInsert | None = None,
        order_log_offset: int | None = None,
        strategy: str | None = None,
    ) -> None:
        """`record_plan` with every leg `pending` (flatten and the tests use it); `strategy` by default the
        running one."""
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

    async def _own(self, conn: Conn, alert_id: str) -> None:
        """Fencing: `LeaseLostError` unless this instance still owns the alert (locked to the end of the
        transaction, so an instance taking it over waits for this write, then sees it)."""
        owner = await conn.fetchval("SELECT owner FROM alerts WHERE alert_id = $1 FOR UPDATE", alert_id)
        if owner is not None and owner != self.instance:
            raise LeaseLostError(f"alert {alert_id} was taken over by instance {owner}: not sent or recorded here")

    async def record_leg(self, alert_id: str, result: LegResult) -> None:
        async def record(conn: Conn) -> None:
            await self._own(conn, alert_id)
            await _update_leg(conn, alert_id, result)

        await self._write(record)

    async def mark_sending(self, alert_id: str, account: str, leg_number: int, done: LegResult | None) -> None:
        """Fenced: an instance whose alert was taken over by another, or whose lease has expired (another may
        take it over at any moment), cannot mark a leg `sending`, so it never sends it. In the same transaction
        the lease is extended to at least `lease_s` from now: the broker call that follows (bounded by
        `broker_timeout_s`, which the config keeps below `leader_lease_s`) ends before anyone can take over."""

        async def mark(conn: Conn) -> None:
            await self._own(conn, alert_id)
            extended = await conn.execute(
                "UPDATE instances SET lease_until ="  # noqa: S608 - constants
                f" {db_time('greatest(lease_until::timestamptz, clock_timestamp() + make_interval(secs => $2))')}"
                f" WHERE instance_id = $1 AND {LEASE_ALIVE}",
                self.instance,
                self.lease_s,
            )
            if extended == "UPDATE 0":
                raise LeaseLostError(f"this instance's lease has expired: alert {alert_id} is not sent from here")
            if done is not None:
                await _update_leg(conn, alert_id, done)
            await conn.execute(
                "UPDATE legs SET state = 'sending', updated_at = $1"
                " WHERE alert_id = $2 AND account = $3 AND leg_number = $4",
                _now(),
                alert_id,
                account,
                leg_number,
            )

        await self._write(mark)

    async def probe(self) -> bool:
        """A committed row as large as the largest alert, one per instance (so instances never wait on each
        other's probe)."""
        try:
            await self._write(
                lambda conn: conn.execute(
                    "INSERT INTO probe (instance, at, filler) VALUES ($1, $2, $3) ON CONFLICT (instance)"
                    " DO UPDATE SET at = EXCLUDED.at, filler = EXCLUDED.filler",
                    self.instance,
                    _now(),
                    os.urandom(self._probe_bytes),
                )
            )
        except JournalError:
            return False
        return True

    def order_log_written(self, alert_id: str) -> None:
        """Nothing to clear: no alert is finished in its own commit here (`record_plan` refuses SQLite joiners)."""

    async def finish_alert(
        self,
        alert_id: str,
        status: str,
        response: Mapping[str, Any],
        results: Sequence[LegResult] = (),
        *,
        timeout_s: float = OPERATION_TIMEOUT_S,
    ) -> None:
        text = json.dumps(response, default=str)

        async def finish(conn: Conn) -> None:
            await self._own(conn, alert_id)
            for result in results:
                await _update_leg(conn, alert_id, result)
            await conn.execute(
                "UPDATE alerts SET status = $1, response = $2, updated_at = $3 WHERE alert_id = $4",
                status,
                text,
                _now(),
                alert_id,
            )

        await self._run(finish, write=True, timeout_s=timeout_s)

    async def set_order_state(self, alert_id: str, account: str, leg_number: int, order: OrderStateRecord) -> None:
        now = _now()

        async def update(conn: Conn) -> None:
            await conn.execute(
                "UPDATE legs SET order_state = $1, filled_quantity = $2, average_price = $3, order_message = $4,"
                " order_updated_at = $5, bracket = COALESCE($6, bracket)"
                " WHERE alert_id = $7 AND account = $8 AND leg_number = $9",
                order.state,
                order.filled_quantity,
                order.average_price,
                order.message,
                now,
                _bracket_json(order.bracket),
                alert_id,
                account,
                leg_number,
            )
            await conn.execute("UPDATE alerts SET updated_at = $1 WHERE alert_id = $2", now, alert_id)

        await self._write(update)

    async def followed_orders(self) -> list[dict[str, Any]]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT legs.alert_id, legs.account, legs.leg_number, legs.client_order_id, legs.order_id,"
                " legs.order_state, legs.filled_quantity, legs.average_price, legs.bracket, legs.result FROM legs"
                " JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE (legs.order_state = ANY($1::text[])"
                " OR (legs.bracket IS NOT NULL AND EXISTS (SELECT 1 FROM jsonb_array_elements(legs.bracket::jsonb)"
                " AS part WHERE part ->> 'state' = ANY($1::text[]))))"
                " AND legs.state = 'placed' AND legs.client_order_id IS NOT NULL AND alerts.status != $2"
                " ORDER BY alerts.received_at, legs.account, legs.leg_number",
                list(FOLLOWED),
                UNFINISHED,
            )
        )
        return [leg_record(row) for row in rows]

    async def get_alert(self, alert_id: str) -> dict[str, Any] | None:
        await self._results_pending.of(alert_id)  # read-your-writes: an outcome handed over is part of the record

        async def fetch(conn: Conn) -> dict[str, Any] | None:
            row = await conn.fetchrow("SELECT * FROM alerts WHERE alert_id = $1", alert_id)
            if row is None:
                return None
            legs = await conn.fetch(
                "SELECT account, leg_number, client_order_id, state, order_id, order_state, filled_quantity,"
                " average_price, order_message, order_updated_at, message, result, updated_at, bracket"
                " FROM legs WHERE alert_id = $1 ORDER BY account, leg_number",
                alert_id,
            )
            return alert_record(row, legs)

        return await self._read(fetch)

    async def find_by_dedupe_key(self, dedupe_key: str, since: str) -> dict[str, Any] | None:
        """As the SQLite journal's: when that alert's results were handed over here and are not committed yet,
        wait for them and read again, so a repeat gets the first copy's results, not "running"."""

        async def find(conn: Conn) -> Any:
            return await conn.fetchrow(
                "SELECT alert_id, status, response FROM alerts WHERE dedupe_key = $1 AND received_at >= $2"
                " ORDER BY received_at LIMIT 1",
                dedupe_key,
                since,
            )

        row = await self._results_pending.read_after(lambda: self._read(find), lambda found: str(found["alert_id"]))
        if row is None:
            return None
        return dedupe_record(row)

    async def claim_dedupe(self, dedupe_key: str, alert_id: str, since: str) -> str | None:
        """The claim is the row: `INSERT ... ON CONFLICT` lets exactly one of two concurrent claims through.
        A claim older than `since` is out of the window, and one older than `CLAIM_STALE_S` whose alert was
        never recorded belongs to a copy that failed without releasing it (its instance died, or lost the
        database): both are taken over. The old holder cannot record its alert after that (`record_alert`
        checks the claim in its transaction)."""

        async def claim(conn: Conn) -> str | None:  # staleness on the database's clock, as leases
            won = await conn.fetchval(
                f"INSERT INTO dedupe_claims (dedupe_key, alert_id, claimed_at) VALUES ($1, $2, {DB_NOW})"  # noqa: S608 - constants
                " ON CONFLICT (dedupe_key) DO UPDATE SET alert_id = EXCLUDED.alert_id,"
                " claimed_at = EXCLUDED.claimed_at WHERE dedupe_claims.claimed_at < $3 OR"
                " (dedupe_claims.claimed_at::timestamptz < clock_timestamp() - make_interval(secs => $4)"
                " AND NOT EXISTS (SELECT 1 FROM alerts WHERE alerts.dedupe_key = $1)) RETURNING alert_id",
                dedupe_key,
                alert_id,
                since,
                CLAIM_STALE_S,
            )
            if won is not None:
                return None
            holder = await conn.fetchval("SELECT alert_id FROM dedupe_claims WHERE dedupe_key = $1", dedupe_key)
            return str(holder) if holder is not None else None

        return await self._write(claim)

    async def release_dedupe(self, dedupe_key: str, alert_id: str) -> None:
        """Give back the claim of a copy that was refused before it was recorded. A recorded alert keeps its claim
        whatever it answered: one that failed after its orders went out (a 503 when its results could not be
        written) would otherwise let TradingView's resend win a fresh claim and place them again; kept, the resend
        finds the journaled alert and is answered as a duplicate, as on SQLite. An alert recorded as a refusal
        (stale, invalid) is journaled without its key: its claim goes, so the corrected resend runs."""
        await self._write(
            lambda conn: conn.execute(
                "DELETE FROM dedupe_claims WHERE dedupe_key = $1 AND alert_id = $2"
                " AND NOT EXISTS (SELECT 1 FROM alerts WHERE alerts.alert_id = $2 AND alerts.dedupe_key = $1)",
                dedupe_key,
                alert_id,
            )
        )

    async def prune_dedupe_keys(self, before: str) -> int:
        async def prune(conn: Conn) -> int:
            await conn.execute("DELETE FROM dedupe_claims WHERE claimed_at < $1", before)
            status = await conn.execute(
                "UPDATE alerts SET dedupe_key = NULL WHERE dedupe_key IS NOT NULL AND received_at < $1", before
            )
            return int(status.split()[-1])

        return await self._write(prune)

    async def unfinished(self) -> list[str]:
        """The unfinished alerts this instance must finish now, oldest first: those of instances whose lease has
        expired (killed, or cut off from the database), taken over in one statement so two living instances
        never take the same one. This instance's own running alerts are never in it."""
        rows = await self._write(
            lambda conn: conn.fetch(
                "UPDATE alerts SET owner = $1 WHERE status = $2 AND (owner IS NULL OR (owner <> $1 AND NOT EXISTS"  # noqa: S608 - constants
                f" (SELECT 1 FROM instances WHERE instances.instance_id = alerts.owner AND {LEASE_ALIVE})))"
                " RETURNING alert_id, received_at",
                self.instance,
                UNFINISHED,
            )
        )
        return [row["alert_id"] for row in sorted(rows, key=lambda row: (row["received_at"], row["alert_id"]))]

    async def order_log_start(self) -> int:
        row = await self._read(
            lambda conn: conn.fetchrow(
                "SELECT COUNT(*) AS n, COUNT(order_log_offset) AS known, MIN(order_log_offset) AS first"
                " FROM alerts WHERE status = $1",
                UNFINISHED,
            )
        )
        if row is None or not row["n"] or row["n"] != row["known"]:
            return 0
        return int(row["first"])

    async def count_orders(self, account: str, *, since: datetime) -> int:
        stamp = since.astimezone(UTC).isoformat()
        count = await self._read(
            lambda conn: conn.fetchval(
                "SELECT COUNT(*) FROM legs WHERE account = $1 AND updated_at >= $2 AND client_order_id IS NOT NULL"
                " AND (order_id IS NOT NULL OR state IN ('success', 'placed', 'unknown', 'test_mode', 'sending'))",
                account,
                stamp,
            )
        )
        return int(count or 0)

    async def count_strategy_orders(self, strategy: str, *, since: datetime) -> int:
        stamp = since.astimezone(UTC).isoformat()
        count = await self._read(
            lambda conn: conn.fetchval(
                "SELECT COUNT(*) FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE COALESCE(alerts.strategy, $1) = $2 AND legs.updated_at >= $3"
                " AND legs.client_order_id IS NOT NULL AND (legs.order_id IS NOT NULL"
                " OR legs.state IN ('success', 'placed', 'unknown', 'test_mode', 'sending'))",
                DEFAULT_STRATEGY,
                strategy,
                stamp,
            )
        )
        return int(count or 0)

    async def fills(self, account: str, position_key: str | None = None) -> list[StrategyFill]:
        await self.settle()  # an exit right after its entry must see the entry's fill (see the SQLite journal)
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT COALESCE(alerts.strategy, $1) AS strategy, legs.result::jsonb ->> 'position_key' AS key,"
                " legs.result::jsonb ->> 'transaction' AS side, legs.filled_quantity AS filled, legs.bracket,"
                " alerts.received_at, alerts.alert_type"
                " FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE legs.account = $2 AND legs.filled_quantity > 0"
                " AND legs.result::jsonb ->> 'position_key' IS NOT NULL"
                " AND ($3::text IS NULL OR legs.result::jsonb ->> 'position_key' = $3)"
                " ORDER BY alerts.received_at, legs.leg_number",
                DEFAULT_STRATEGY,
                account,
                position_key,
            )
        )
        return [strategy_fill(row) for row in rows]

    async def unsettled(self, account: str, position_key: str | None = None) -> set[str]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT client_order_id FROM legs WHERE account = $1 AND client_order_id IS NOT NULL"
                " AND result::jsonb ->> 'position_key' IS NOT NULL"
                " AND ($2::text IS NULL OR result::jsonb ->> 'position_key' = $2)"
                " AND (order_state = ANY($3::text[]) OR (bracket IS NOT NULL AND EXISTS"
                " (SELECT 1 FROM jsonb_array_elements(bracket::jsonb) AS part"
                " WHERE part ->> 'state' = ANY($3::text[]))))",
                account,
                position_key,
                list(FOLLOWED),
            )
        )
        return {row[0] for row in rows}

    async def bracket_entries(self, strategy: str, account: str) -> list[tuple[str, str, str, int]]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT legs.order_id, legs.result::jsonb ->> 'position_key' AS key,"
                " legs.result::jsonb ->> 'transaction' AS side, legs.result::jsonb ->> 'quantity' AS quantity"
                " FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE COALESCE(alerts.strategy, $1) = $2 AND legs.account = $3 AND legs.order_id IS NOT NULL"
                " AND legs.result::jsonb ->> 'position_key' IS NOT NULL AND legs.bracket IS NOT NULL"
                " AND EXISTS (SELECT 1 FROM jsonb_array_elements(legs.bracket::jsonb) AS part"
                " WHERE part ->> 'state' = ANY($4::text[])) ORDER BY alerts.received_at",
                DEFAULT_STRATEGY,
                strategy,
                account,
                list(FOLLOWED),
            )
        )
        return [(row["order_id"], row["key"], row["side"], int(row["quantity"] or 0)) for row in rows]

    async def order_strategies(self, account: str, order_id: str) -> set[str]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT DISTINCT COALESCE(alerts.strategy, $1) FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE legs.account = $2 AND (legs.order_id = $3 OR (legs.bracket IS NOT NULL AND EXISTS"
                " (SELECT 1 FROM jsonb_array_elements(legs.bracket::jsonb) AS part WHERE part ->> 'order_id' = $3)))",
                DEFAULT_STRATEGY,
                account,
                order_id,
            )
        )
        return {row[0] for row in rows}

    async def strategy_orders(self, strategy: str, account: str) -> set[str]:
        await self.settle()
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT legs.client_order_id FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE COALESCE(alerts.strategy, $1) = $2 AND legs.account = $3"
                " AND legs.order_state = ANY($4::text[]) AND legs.client_order_id IS NOT NULL",
                DEFAULT_STRATEGY,
                strategy,
                account,
                list(FOLLOWED),
            )
        )
        return {row[0] for row in rows}

    async def open_brackets(self, strategy: str, account: str, position_key: str) -> list[str]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT legs.order_id FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE COALESCE(alerts.strategy, $1) = $2 AND legs.account = $3 AND legs.order_id IS NOT NULL"
                " AND legs.result::jsonb ->> 'position_key' = $4 AND legs.bracket IS NOT NULL"
                " AND EXISTS (SELECT 1 FROM jsonb_array_elements(legs.bracket::jsonb) AS part"
                " WHERE part ->> 'state' = ANY($5::text[])) ORDER BY alerts.received_at",
                DEFAULT_STRATEGY,
                strategy,
                account,
                position_key,
                list(FOLLOWED),
            )
        )
        return [row[0] for row in rows]

    async def open_orders_of(
        self, strategy: str, account: str, *, symbol: str, exchange: str | None, side: str | None
    ) -> list[str]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT legs.order_id FROM legs JOIN alerts ON alerts.alert_id = legs.alert_id"
                " WHERE COALESCE(alerts.strategy, $1) = $2 AND legs.account = $3 AND legs.order_id IS NOT NULL"
                " AND legs.client_order_id IS NOT NULL"
                " AND upper(legs.result::jsonb ->> 'symbol') = upper($4)"
                " AND ($5::text IS NULL OR legs.result::jsonb ->> 'exchange' = $5)"
                " AND ($6::text IS NULL OR legs.result::jsonb ->> 'transaction' = $6)"
                " AND (legs.order_state = ANY($7::text[]) OR (legs.bracket IS NOT NULL AND EXISTS"
                " (SELECT 1 FROM jsonb_array_elements(legs.bracket::jsonb) AS part"
                " WHERE part ->> 'state' = ANY($7::text[])))) ORDER BY alerts.received_at",
                DEFAULT_STRATEGY,
                strategy,
                account,
                symbol,
                exchange,
                side,
                list(FOLLOWED),
            )
        )
        return [row[0] for row in rows]

    async def has_run(self, *, strategy: str, source: str, account: str) -> bool:
        found = await self._read(
            lambda conn: conn.fetchval(
                "SELECT 1 FROM alerts WHERE COALESCE(strategy, $1) = $2 AND source = $3"
                " AND payload::jsonb -> 'flatten' ->> 'account' = $4 LIMIT 1",
                DEFAULT_STRATEGY,
                strategy,
                source,
                account,
            )
        )
        return found is not None

    async def integrity_ok(self) -> bool:
        return bool(await self._read(lambda conn: conn.fetchval("SELECT 1")))

    async def get_refusal(self, alert_id: str) -> dict[str, Any] | None:
        return await get_refusal(self, alert_id)

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        """Read-your-writes: what this instance handed over (`record_results`) is committed first, as the SQLite
        journal's group commit has done by the time the status page reads (a network round trip is longer)."""
        await self.settle()
        numbered = numbered_placeholders(sql)
        rows: list[Any] = await self._read(lambda conn: conn.fetch(numbered, *args))
        return rows

    async def run(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        async def run(conn: Conn) -> None:
            for sql, args in statements:
                await conn.execute(numbered_placeholders(sql), *args)

        await self._write(run)

    async def shared_halts(self) -> dict[str, tuple[int, Halt | None]]:
        """The kill switches every instance shares, by switch ('' for all trading, else a strategy's name): (version,
        the halt or None). A switch never set has no row: (0, None)."""
        rows = await self._read(lambda conn: conn.fetch("SELECT * FROM halt"))
        return {
            row["strategy"]: (
                int(row["version"]),
                Halt(reason=row["reason"], since=row["since"], by=row["by_whom"]) if row["halted"] else None,
            )
            for row in rows
        }

    async def share_halt(self, halt: Halt | None, *, expected: int, switch: str = "") -> int | None:
        """Set the shared kill switch `switch` (halted, or not with None) if its version is still `expected` (0: no
        row yet); returns its new version, or None when another instance changed it first (compare-and-set:
        nothing overwritten)."""
        version = await self._write(
            lambda conn: conn.fetchval(
                "INSERT INTO halt AS h (id, strategy, version, halted, reason, since, by_whom)"
                " VALUES (CASE WHEN $6 = '' THEN 1 ELSE 0 END, $6, 1, $1, $2, $3, $4)"
                " ON CONFLICT (strategy) DO UPDATE SET version = h.version + 1, halted = EXCLUDED.halted,"
                " reason = EXCLUDED.reason, since = EXCLUDED.since, by_whom = EXCLUDED.by_whom"
                " WHERE h.version = $5 RETURNING h.version",
                halt is not None,
                halt.reason if halt else "",
                halt.since if halt else "",
                halt.by if halt else "",
                expected,
                switch,
            )
        )
        return None if version is None else int(version)

    async def ensure_tables(self, create: Callable[[sqlite3.Connection], object]) -> None:
        """Nothing: the PostgreSQL schema is migrated as a whole (`tvbridge.store.migrations`)."""

    async def read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:  # noqa: ARG002 - the Store interface
        raise StoreUnsupportedError("not available with the PostgreSQL journal yet (it needs the SQLite journal)")

    async def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:  # noqa: ARG002 - the Store interface
        raise StoreUnsupportedError("not available with the PostgreSQL journal yet (it needs the SQLite journal)")

    # the closed-market queue (`PostgresQueue`) runs its statements here
    async def run_write(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        return await self._write(fn)

    async def run_read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        return await self._read(fn)


async def _update_leg(conn: Conn, alert_id: str, result: LegResult) -> None:
    """`tvbridge.journal._update_leg`: the order columns take the placement's answer once, then follow-up owns them."""
    state = leg_state(result)
    payload = json.dumps(attrs.asdict(result, recurse=False))
    now = _now()
    updated = await conn.execute(
        "UPDATE legs SET state = $1, order_id = $2, message = $3, result = $4,"
        " client_order_id = COALESCE($5, client_order_id), updated_at = $6,"
        " filled_quantity = CASE WHEN order_state IS NULL THEN $7 ELSE filled_quantity END,"
        " average_price = CASE WHEN order_state IS NULL THEN $8 ELSE average_price END,"
        " bracket = CASE WHEN order_state IS NULL THEN $9 ELSE bracket END,"
        " order_state = COALESCE(order_state, $10)"
        " WHERE alert_id = $11 AND account = $12 AND leg_number = $13",
        state,
        result.order_id,
        result.message,
        payload,
        result.client_order_id,
        now,
        result.filled_quantity,
        result.average_price,
        _bracket_json(result.bracket),
        result.order_state,
        alert_id,
        result.account,
        result.leg_number,
    )
    if updated == "UPDATE 0":
        await conn.execute(
            "INSERT INTO legs (alert_id, account, leg_number, client_order_id, state, order_id, message, result,"
            " updated_at, order_state, filled_quantity, average_price, bracket)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            alert_id,
            result.account,
            result.leg_number,
            result.client_order_id,
            state,
            result.order_id,
            result.message,
            payload,
            now,
            result.order_state,
            result.filled_quantity,
            result.average_price,
            _bracket_json(result.bracket),
        )


class PostgresQueue:
    """`tvbridge.store.QueueStore` in the shared database: a due row is claimed by one instance only."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def entries(self, *, include_done: bool = False) -> list[QueueEntry]:
        where = "" if include_done else " WHERE state IN ('queued', 'sending')"
        rows = await self._store.run_read(
            lambda conn: conn.fetch(f"SELECT * FROM queue{where} ORDER BY not_before, id")  # noqa: S608 - a constant
        )
        return [entry_of(row) for row in rows]

    async def cancel(self, alert_id: str, account: str | None = None) -> list[QueueEntry]:
        async def cancel(conn: Conn) -> list[QueueEntry]:
            rows = await conn.fetch(
                "UPDATE queue SET state = 'cancelled', updated_at = $1 WHERE alert_id = $2 AND state = 'queued'"
                " AND ($3::text IS NULL OR account = $3) RETURNING *",
                _now(),
                alert_id,
                account,
            )
            entries = sorted((entry_of(row) for row in rows), key=lambda e: e.id)
            now = _now()
            for entry in entries:
                await conn.execute(
                    "UPDATE legs SET state = 'cancelled', message = 'removed from the queue', updated_at = $1"
                    " WHERE alert_id = $2 AND account = $3",
                    now,
                    entry.alert_id,
                    entry.account,
                )
            left = await conn.fetchval(
                "SELECT COUNT(*) FROM queue WHERE alert_id = $1 AND state IN ('queued', 'sending')", alert_id
            )
            if entries and not left:
                await conn.execute(
                    "UPDATE alerts SET status = 'cancelled', updated_at = $1 WHERE alert_id = $2 AND status = 'queued'",
                    now,
                    alert_id,
                )
            return entries

        return await self._store.run_write(cancel)

    async def claim_due(self, now: datetime, *, halted: Sequence[str] = ()) -> list[QueueEntry]:
        due = now.astimezone(UTC).isoformat()

        async def claim(conn: Conn) -> list[QueueEntry]:
            await _settle_dead_claims(conn)  # a leader that died mid-send: its rows come back (or are done)
            rows = await conn.fetch(
                "UPDATE queue SET state = 'sending', updated_at = $1, claimed_by = $4 WHERE id IN (SELECT id FROM"
                " queue WHERE state = 'queued' AND not_before <= $2"
                # not a halted strategy's: it stays queued until resumed
                " AND NOT EXISTS (SELECT 1 FROM alerts WHERE alerts.alert_id = queue.alert_id"
                " AND alerts.strategy = ANY($3::text[])) FOR UPDATE SKIP LOCKED)"
                " RETURNING id, alert_id, account, not_before, reason, 'queued' AS state, created_at",  # as SqliteQueue
                _now(),
                due,
                list(halted),
                self._store.instance,
            )
            return sorted((entry_of(row) for row in rows), key=lambda e: (e.not_before, e.id))

        return await self._store.run_write(claim)

    async def requeue(self, alert_id: str, account: str, moment: datetime, reason: str) -> None:
        await self._store.run_write(
            lambda conn: conn.execute(
                "UPDATE queue SET state = 'queued', not_before = $1, reason = $2, updated_at = $3"
                " WHERE alert_id = $4 AND account = $5",
                moment.astimezone(UTC).isoformat(),
                reason,
                _now(),
                alert_id,
                account,
            )
        )

    async def mark(self, alert_id: str, accounts: Iterable[str], state: str) -> None:
        """Only rows this instance claimed (or nobody did): a send refused at `hand_over` marks nothing of the
        instance that holds them now."""
        names = list(accounts)
        await self._store.run_write(
            lambda conn: conn.executemany(
                "UPDATE queue SET state = $1, updated_at = $2 WHERE alert_id = $3 AND account = $4"
                " AND (claimed_by IS NULL OR claimed_by = $5)",
                [(state, _now(), alert_id, account, self._store.instance) for account in names],
            )
        )

    async def next_due(self, *, halted: Sequence[str] = ()) -> datetime | None:
        first = await self._store.run_read(
            lambda conn: conn.fetchval(
                "SELECT MIN(not_before) FROM queue WHERE state = 'queued' AND NOT EXISTS (SELECT 1 FROM alerts"
                " WHERE alerts.alert_id = queue.alert_id AND alerts.strategy = ANY($1::text[]))",
                list(halted),
            )
        )
        return datetime.fromisoformat(first) if first else None

    async def after_crash(self) -> None:
        """As `tvbridge.alertqueue._after_crash`, run by an instance becoming the leader (`Scheduler.lead`), but
        only on rows whose claimer's lease has expired: a row the old leader is still sending (it lost the
        leader's lock, not its life) stays its own. `claim_due` settles the rest once their claimer's lease
        runs out."""
        await self._store.run_write(_settle_dead_claims)

    async def hand_over(self, alert_id: str, accounts: Sequence[str]) -> None:
        """The claimed rows become an alert this instance runs, only while they are still claimed by it (a new
        leader may have settled them since): otherwise `LeaseLostError`, and nothing is sent from here."""

        async def hand_over(conn: Conn) -> None:
            held = await conn.execute(
                "UPDATE queue SET updated_at = $1 WHERE alert_id = $2 AND account = ANY($3::text[])"
                " AND state = 'sending' AND claimed_by = $4",
                _now(),
                alert_id,
                list(accounts),
                self._store.instance,
            )
            if held == "UPDATE 0":
                raise LeaseLostError(f"queued alert {alert_id} is no longer claimed by this instance: not sent here")
            await conn.execute(
                "UPDATE alerts SET status = 'accepted', owner = $2 WHERE alert_id = $1", alert_id, self._store.instance
            )
            await conn.executemany(
                "UPDATE legs SET state = 'pending' WHERE alert_id = $1 AND account = $2",
                [(alert_id, name) for name in accounts],
            )

        await self._store.run_write(hand_over)


async def _settle_dead_claims(conn: Conn) -> None:
    """Rows left `sending` by an instance whose lease has expired (or by none): back to `queued` when their legs
    were never handed over, else `sent` (the alert is then unfinished, and `unfinished` recovers it)."""
    dead = (
        "state = 'sending' AND (claimed_by IS NULL OR NOT EXISTS (SELECT 1 FROM instances WHERE"  # noqa: S608 - constants
        f" instances.instance_id = queue.claimed_by AND {LEASE_ALIVE}))"
    )
    await conn.execute(
        f"UPDATE queue SET state = 'queued' WHERE {dead} AND EXISTS (SELECT 1 FROM legs WHERE"  # noqa: S608 - constants
        " legs.alert_id = queue.alert_id AND legs.account = queue.account AND legs.state = 'queued')"
    )
    await conn.execute(f"UPDATE queue SET state = 'sent' WHERE {dead}")  # noqa: S608 - constants


async def migrate_url(url: str) -> tuple[int, int]:
    """`tvbridge db migrate`: bring the database at `url` up to date; (version before, version after)."""
    conn = await asyncpg.connect(url, timeout=OPERATION_TIMEOUT_S * 5)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
