"""The store: one interface over the durable state, two implementations.

`Store` is what the rest of tvbridge may ask of the durable state: the journal (alerts, their planned legs, the
legs' results and order states, dedupe look-ups), the cross-instance dedupe claim, and the closed-market queue
(`QueueStore`). `tvbridge.journal.Journal` implements it on one SQLite file (the embedded default, one instance);
`tvbridge.store.postgres.PostgresStore` implements it on a PostgreSQL database shared by several instances
(issue 20). Callers hold a `Store` (`keys.JOURNAL`) and never know which: the logic is written once, only the SQL
differs. `open_store(config)` picks one from `[journal] url`.

The contract each implementation keeps (tests/test_store.py runs the same tests against both):

- every write is committed before it returns; a write that fails raises `JournalError` (503: nothing recorded),
  and sets `healthy` false with the reason in `last_error` until a write succeeds again;
- `record_alert` writes the alert, its `pending` legs and its queue rows (`also`) in one transaction;
- `claim_dedupe` is atomic across every process sharing the store: of two copies claiming one key at the same
  moment, exactly one gets None (it runs), the other the first one's alert id;
- `unfinished` lists the alerts this instance must finish: on SQLite every unfinished one (at start nothing else
  runs); on PostgreSQL those of instances whose lease expired, taken over for this one, which from then on is
  the only one that may mark their legs `sending` or record their results (fencing);
- `is_leader` is true on exactly one of the instances sharing the store at a time (SQLite: the only one);
- `fetch`/`run` take portable SQL with `?` placeholders (the PostgreSQL store numbers them): modules that keep
  their own tables in the store (refusals, status actions, the status page) write their SQL once for both;
- `read`/`write` run a function on the SQLite connection (SQLite-only code); the PostgreSQL store refuses them
  with `StoreUnsupportedError`, and `ensure_tables` is a no-op there (its schema is versioned by
  `tvbridge.store.migrations`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from tvbridge.alerts.records import AlertJournal
from tvbridge.errors import ConfigError

if TYPE_CHECKING:
    import asyncio
    import sqlite3
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from datetime import datetime

    from tvbridge.alertqueue import QueueEntry, QueueInsert
    from tvbridge.config import Config
    from tvbridge.halt import Halt
    from tvbridge.journal import OrderStateRecord, PlannedLeg
    from tvbridge.models import LegResult
    from tvbridge.positions import StrategyFill


class QueueStore(Protocol):
    """The closed-market queue's rows (`tvbridge/alertqueue.py` says what they mean)."""

    async def entries(self, *, include_done: bool = False) -> list[QueueEntry]:
        """Rows still `queued` or `sending` (all rows with `include_done`), by due time."""
        ...

    async def cancel(self, alert_id: str, account: str | None = None) -> list[QueueEntry]:
        """Cancel an alert's still-queued rows (one account, or all) with their legs; returns what was cancelled."""
        ...

    async def claim_due(self, now: datetime, *, halted: Sequence[str] = ()) -> list[QueueEntry]:
        """Mark every row due at `now` `sending` and return them: of two claims, only one gets a row. Rows of
        the `halted` strategies' alerts are left queued (they go when the strategy is resumed)."""
        ...

    async def requeue(self, alert_id: str, account: str, moment: datetime, reason: str) -> None: ...

    async def mark(self, alert_id: str, accounts: Iterable[str], state: str) -> None: ...

    async def next_due(self, *, halted: Sequence[str] = ()) -> datetime | None: ...

    async def after_crash(self) -> None:
        """Rows a crash left `sending`: queued again while their legs were not handed over, else `sent`."""
        ...

    async def hand_over(self, alert_id: str, accounts: Sequence[str]) -> None:
        """The alert becomes `accepted` and the accounts' legs `pending`: from here crash recovery owns them."""
        ...


class Store(AlertJournal, Protocol):
    """The durable state of one tvbridge (SQLite) or of several sharing one database (PostgreSQL). The alert
    path's two writes (`record_plan`, `record_results`) are `tvbridge.alerts.records.AlertJournal`'s."""

    healthy: bool
    last_error: str
    live_instances: int
    """Instances holding a live lease on the store, this one included (1 on SQLite): the rate limits' divisor."""
    shared: bool
    """True when several instances may share the store (PostgreSQL): crash recovery then also runs while
    serving, for the alerts of instances whose lease expired, and scheduled work runs on the leader only."""

    @property
    def queue(self) -> QueueStore: ...

    async def open(self) -> None:
        """Connect, create or migrate the schema; `JournalError` when the store cannot be used."""
        ...

    async def close(self) -> None: ...

    def problem(self) -> str:
        """Empty while the store is the one opened; else why it is not (a SQLite file deleted under us)."""
        ...

    def observe_commits(self, observer: Callable[[float], None]) -> None: ...

    async def record_alert(
        self,
        *,
        alert_id: str,
        alert_type: str,
        payload: Mapping[str, Any],
        dedupe_key: str | None,
        source: str | None,
        legs: Sequence[PlannedLeg],
        status: str = ...,
        also: QueueInsert | None = None,
        order_log_offset: int | None = None,
        strategy: str | None = None,
    ) -> None: ...

    def record_results(
        self, alert_id: str, status: str, response: Mapping[str, Any], results: Sequence[LegResult] = ()
    ) -> asyncio.Task[bool]: ...

    async def record_leg(self, alert_id: str, result: LegResult) -> None: ...

    async def mark_sending(self, alert_id: str, account: str, leg_number: int, done: LegResult | None) -> None: ...

    async def probe(self) -> bool:
        """Whether an alert could be written now (`/health`); a success clears an earlier failure."""
        ...

    async def finish_alert(
        self, alert_id: str, status: str, response: Mapping[str, Any], results: Sequence[LegResult] = ()
    ) -> None: ...

    async def set_order_state(self, alert_id: str, account: str, leg_number: int, order: OrderStateRecord) -> None: ...

    async def followed_orders(self) -> list[dict[str, Any]]: ...

    async def get_alert(self, alert_id: str) -> dict[str, Any] | None: ...

    async def find_by_dedupe_key(self, dedupe_key: str, since: str) -> dict[str, Any] | None: ...

    async def claim_dedupe(self, dedupe_key: str, alert_id: str, since: str) -> str | None:
        """Claim `dedupe_key` for `alert_id`: None when this copy is the first since `since` (ISO UTC), else the
        first copy's alert id. Atomic across every process sharing the store."""
        ...

    async def release_dedupe(self, dedupe_key: str, alert_id: str) -> None:
        """Give up a claim whose alert was not accepted (4xx/5xx), so a resend may run."""
        ...

    async def prune_dedupe_keys(self, before: str) -> int: ...

    async def unfinished(self) -> list[str]: ...

    async def order_log_start(self) -> int: ...

    async def count_orders(self, account: str, *, since: datetime) -> int: ...

    async def integrity_ok(self) -> bool: ...

    # strategies (issue 19): what each strategy placed and filled, read from the journal's rows
    async def count_strategy_orders(self, strategy: str, *, since: datetime) -> int: ...

    async def fills(self, account: str, position_key: str | None = None) -> list[StrategyFill]: ...

    async def unsettled(self, account: str, position_key: str | None = None) -> set[str]: ...

    async def bracket_entries(self, strategy: str, account: str) -> list[tuple[str, str, str, int]]: ...

    async def order_strategies(self, account: str, order_id: str) -> set[str]: ...

    async def strategy_orders(self, strategy: str, account: str) -> set[str]: ...

    async def open_brackets(self, strategy: str, account: str, position_key: str) -> list[str]: ...

    async def open_orders_of(
        self, strategy: str, account: str, *, symbol: str, exchange: str | None, side: str | None
    ) -> list[str]: ...

    async def has_run(self, *, strategy: str, source: str, account: str) -> bool: ...

    async def is_leader(self) -> bool:
        """Whether this instance runs the scheduled work (the queue at the open, ...) now: always on SQLite; on
        PostgreSQL the one instance holding the leader's lock, taken over by another when it dies."""
        ...

    async def get_refusal(self, alert_id: str) -> dict[str, Any] | None:
        """A refused request's record (`tvbridge/refusal_journal.py`), or None; PostgreSQL keeps none yet."""
        ...

    async def shared_halts(self) -> Mapping[str, tuple[int, Halt | None]]:
        """The kill switches all instances share, by switch ('' for all trading, else a strategy's name): (version,
        halt or None); a switch missing is (0, None). SQLite: none, nothing shared (the halt files are the
        switches, `tvbridge/halt.py`)."""
        ...

    async def share_halt(self, halt: Halt | None, *, expected: int, switch: str = "") -> int | None:
        """Set the shared kill switch `switch` if its version is still `expected`; returns its new version, None
        when another instance changed it first (`tvbridge/halt_sync.py`). SQLite: nothing, 0."""
        ...

    async def ensure_tables(self, create: Callable[[sqlite3.Connection], object]) -> None:
        """Create a module's own SQLite tables (a no-op on PostgreSQL, whose schema is migrated as a whole)."""
        ...

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        """The rows of one portable query (`?` placeholders, SQL both engines read alike), each indexable by
        column name and position: for modules that keep their own tables in the store (refusals, status page)."""
        ...

    async def run(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Portable statements (as `fetch`) in one committed transaction; `JournalError` if it fails."""
        ...

    async def read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any: ...

    async def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any: ...


def open_store(config: Config) -> Store:
    """The store `[journal]` asks for: PostgreSQL at `url` when set, else the SQLite file at `path`."""
    if config.journal.url:
        try:
            from tvbridge.store.postgres import PostgresStore  # noqa: PLC0415 - asyncpg is an optional extra
        except ImportError:
            from tvbridge.commands.db import missing_driver  # noqa: PLC0415 - only on this error

            raise ConfigError(missing_driver()) from None
        return PostgresStore(
            config.journal.url, probe_bytes=config.limits.max_body_bytes, lease_s=config.journal.leader_lease_s
        )
    from tvbridge.journal import Journal  # noqa: PLC0415 - journal imports this module's types

    return Journal(
        config.data_path(config.journal.path),
        synchronous=config.journal.synchronous,
        probe_bytes=config.limits.max_body_bytes,
    )


UNPARSABLE_URL = "journal.url cannot be parsed (percent-encode the password)"


def connect_failure(e: BaseException) -> str:
    """What an operator may read about a failure to reach the database at `journal.url`.

    The driver's URL parser quotes the pieces it chokes on (an unencoded `/` or `#` in the password turns the
    password into the "port"), so a `ValueError` (asyncpg's `ClientConfigurationError` is one) is named only as
    the URL being unparsable: the text would carry the password."""
    if isinstance(e, ValueError):
        return UNPARSABLE_URL
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
