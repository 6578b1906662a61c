"""The journal's write interface for the alert path: what a store must do, in two calls, and nothing more.

An alert meets the store twice (issue 22):

1. `record_plan(entry, join=...)`: ONE transaction holding the alert (its payload without the secret, its dedupe
   key, its status), every leg of its plan in its planned state (`pending`, `sending` for the first leg of each
   account that sends now, `queued`, `failed` for a refusal) and whatever `join` writes. It is committed before
   any broker call and before any 2xx answer; concurrent alerts share the commit (group commit). A failure raises
   `JournalError`, and nothing was recorded (the webhook answers 503: a resend is welcome).
2. `record_results(alert_id, status, response, results)`: the final status, the answer given and each leg's
   result, grouped with other alerts' writes. It returns an awaitable, and the answer does NOT wait for it: a
   crash before it commits leaves the alert `accepted` with legs `sending`, and crash recovery (`recovery.py`)
   settles them by client order id, as for any crash after a send. Reads of the same store that answer users
   (`find_by_dedupe_key`, `get_alert`) see results handed over before them (read-your-writes).

`join`: a function of the store's own connection that runs inside the transaction of `record_plan`, after the
alert's rows (a `SettlingJoin`, the paper book's, runs before them: the alert's rows are then inserted already
settled); it is how rows that must never exist without the alert (or the other way round) share its commit:
the closed-market queue's entries (`alertqueue.inserter`), and an in-process broker's order (the `paper` book,
joined to the SQLite journal: `alerts/joined.py`, `JournalJoiner` in `tvbridge/broker.py`).

A join that settles the whole alert inside the transaction (every leg a joined first leg with a definite
outcome: booked, refused by the book, halted, refused by the checks) returns a `Finished`: the SQLite journal then
writes, in that same transaction, exactly what `record_results` would have (the legs' results, the final status,
the answer) and marks the alert "order log row pending" (`alerts.order_log_pending`). Such an alert costs ONE
commit in all, and the executor does not call `record_results` for it (`Executor._run`). Its order log row is
written after the commit; then `order_log_written(alert_id)` queues the mark's clearing, which rides on the next
write's transaction (no commit of its own; flushed at `close()` and when many wait). A crash between the commit
and the row leaves the mark: at start, `recovery.write_pending_rows` writes the rows not in the log after the
alert's `order_log_offset`, once, and clears the marks; nothing is placed for such an alert (it is finished).
A remote broker never joins: it is called only after `record_plan` returned (journal before send). A store whose
connection is not SQLite's (PostgreSQL, issue 20) passes its own connection; a joiner that needs SQLite checks
the type it gets and raises `TypeError`, which fails the write like any other error.

`tvbridge.journal.Journal` is the SQLite implementation; a second store implements `AlertJournal` alongside it.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import attrs

from tvbridge.models import LegResult
from tvbridge.strategies import current_strategy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tvbridge.journal import PlannedLeg

PlannedState = Literal["pending", "sending", "queued", "failed"]
"""A leg's state as `record_plan` writes it (the journal's `LEG_STATES` has the rest)."""


@attrs.frozen(kw_only=True)
class LegEntry:
    """One leg of one account, as planned: recovery reads `state` and `client_order_id` after a crash."""

    account: str
    leg_number: int
    client_order_id: str | None
    state: PlannedState = "pending"
    message: str | None = None


@attrs.frozen(kw_only=True)
class AlertEntry:
    """An accepted alert and its plan, written by `record_plan` in one transaction."""

    alert_id: str
    alert_type: str
    payload: Mapping[str, Any]
    """The alert as received; the store drops `secret` before writing it."""
    dedupe_key: str | None
    source: str | None
    status: str = "accepted"
    """`accepted` (crash recovery runs it again until results are recorded), `queued` or a final status."""
    order_log_offset: int | None = None
    """The order log's size now: this alert's rows can only be after it (recovery writes missing rows once)."""
    legs: Sequence[LegEntry] = ()
    strategy: str = attrs.field(factory=current_strategy)
    """The strategy it runs under (`tvbridge/strategies.py`): by default the running one, which `auth` set."""


@attrs.frozen(kw_only=True)
class Finished:
    """An alert settled inside its own `record_plan` transaction (returned by its `join`): what `record_results`
    would write, written in that transaction instead (see the module docstring)."""

    status: str
    response: Mapping[str, Any]
    """The answer, as the webhook gives it (`alerts/answer.response_body`)."""
    results: tuple[LegResult, ...]


class SettlingJoin(abc.ABC):
    """A `join` whose rows need none of the alert's (the paper book's, `alerts/joined.py`). The SQLite journal runs
    it BEFORE the alert's rows and then inserts the alert and each leg as it settled them: the final status, the
    answer and each leg's result when it returns a `Finished`, and its refusals (`settled`) as `failed`. One
    INSERT per row, where a join run after the rows made each of them an INSERT and then an UPDATE (issue 22:
    ~30 us per alert). Nothing else changes: the same transaction, the same rows once committed."""

    @abc.abstractmethod
    def __call__(self, conn: Any) -> Finished | None:
        """Inside the transaction, before the alert's rows: book, and the alert's outcome when it is settled."""

    @abc.abstractmethod
    def settled(self, entry: AlertEntry) -> AlertEntry:
        """`entry` with each leg this join's last run refused (a halt, the book) `failed`, with the reason."""


def pending_entry(
    *,
    alert_id: str,
    alert_type: str,
    payload: Mapping[str, Any],
    dedupe_key: str | None,
    source: str | None,
    legs: Sequence[PlannedLeg],
    status: str,
    order_log_offset: int | None,
    strategy: str | None,
) -> AlertEntry:
    """An alert with every leg `pending`: what each store's `record_alert` (flatten, the tests) records through
    `record_plan`; `strategy` by default the running one."""
    return AlertEntry(
        alert_id=alert_id,
        alert_type=alert_type,
        payload=payload,
        dedupe_key=dedupe_key,
        source=source,
        status=status,
        order_log_offset=order_log_offset,
        strategy=strategy or current_strategy(),
        legs=tuple(
            LegEntry(account=leg.account, leg_number=leg.leg_number, client_order_id=leg.client_order_id)
            for leg in legs
        ),
    )


class AlertJournal(Protocol):
    """The alert path's two writes (see the module docstring). `tvbridge.journal.Journal` implements it."""

    async def record_plan(self, entry: AlertEntry, *, join: Callable[[Any], object] | None = None) -> None:
        """The alert, its plan and `join`'s rows in one committed transaction; `JournalError` if it fails. A
        store that cannot write a `Finished` in it (PostgreSQL) refuses joiners other than its own queue's."""
        ...

    def record_results(
        self, alert_id: str, status: str, response: Mapping[str, Any], results: Sequence[LegResult]
    ) -> Awaitable[bool]:
        """Hand over the alert's outcome; grouped with other writes and committed soon. Awaiting it gives True
        once committed, False when it failed; the store logs a failure (`journal.finish_failed`) either way."""
        ...

    def order_log_written(self, alert_id: str) -> None:
        """The order log rows of an alert finished in its own commit (`record_plan` with a `Finished`) are written:
        its "row pending" mark may go, with a later write (no commit of its own). A store that never marks one
        (it refuses such joins) does nothing."""
        ...
