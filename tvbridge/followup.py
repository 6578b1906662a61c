"""Order follow-up: every order a broker accepted is followed until it is final, and each change is journaled.

A placement answer is only a moment: a Dhan order answered `TRANSIT` may fill a second later, rest `open`, be
refused by the exchange or expire (since 2026 Dhan turns API market orders into protected limit orders that can
do all of these), and a paper limit order fills when a later alert's price reaches it. So every leg whose order
is not final after placement (`tvbridge.broker.OPEN_STATES`: pending, open, trigger_pending, partially_filled)
is followed here until it is filled, rejected, cancelled or expired.

One mechanism, the plugin interface's own `lookup(client_order_id)`: polled with backoff (the first look-up
`followup.first_interval_s` after placement, the wait doubling after every look-up that finds no change up to
`followup.max_interval_s`, starting over after a change), at most `followup.max_lookups_per_s` look-ups per
account, each bounded by `followup.lookup_timeout_s`. Polling is the guarantee; a broker's push stream (Dhan's
order-update WebSocket) would only make changes arrive sooner, and is not used. Each account has its own task,
so a slow broker never delays another account's look-ups.

A plugin may speed this up without any new method: an `OrderResult` from `place()` whose
`details["moved_orders"]` lists order ids of earlier orders that this placement changed (the paper broker fills
resting limit orders at a later alert's price that way) makes those orders due for a look-up at once.

What changes reaches the journal's order columns (`Journal.set_order_state`: `GET /alerts/<id>` and `/status`
show it), the metrics (`tvbridge_order_state_changes_total`, `tvbridge_orders_followed`), the log
(`order.state_changed`) and notifications (`order_filled`, `order_rejected`). Across restarts the work list is
read back from the journal at start (`Journal.followed_orders`); alerts that crash recovery runs again are
handed over by the executor when they finish, like any other alert.

Several instances on one PostgreSQL store (`Store.shared`): the look-ups are scheduled work and run on the
leader only (`Store.is_leader`, asked every `recheck_s`), so each order is looked up once, not once per
instance. Every `recheck_s` the leader adds the orders the other instances handed over (read from the store);
an instance that becomes the leader (the old one died) takes the list afresh from the store, so a change the
old leader already recorded is neither recorded nor notified again. A follower keeps the store's list too,
refreshed every `recheck_s`, for `settle()`: a strategy's look-up before it reads its share is the alert's own
work, not scheduled work, and runs on whichever instance has the alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from tvbridge.brackets import has_open_part, parts_of
from tvbridge.broker import OPEN_STATES, OrderState
from tvbridge.config import DEFAULT_STRATEGY
from tvbridge.errors import JournalError
from tvbridge.journal import OrderStateRecord
from tvbridge.models import LegStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence

    from aiohttp import web

    from tvbridge.broker import Broker, OrderResult
    from tvbridge.config import FollowupConfig
    from tvbridge.metrics import Metrics
    from tvbridge.models import LegResult
    from tvbridge.notify import Notifier
    from tvbridge.store import Store

log = structlog.get_logger()

_OPEN_VALUES = frozenset(state.value for state in OPEN_STATES)


@attrs.define(kw_only=True)
class Followed:
    """One order being followed, as last seen, and when to ask about it next (monotonic seconds)."""

    alert_id: str
    account: str
    leg_number: int
    client_order_id: str
    order_id: str | None
    state: str
    filled_quantity: int | None
    average_price: str | None
    what: str
    """`B 10 RELIANCE`: for notifications."""
    interval: float
    due: float
    missing: int = 0
    """Look-ups in a row that found no order (logged once)."""
    bracket: tuple[dict[str, str | None], ...] = ()
    """A bracket's parts as last seen: followed until the entry and every part are final."""
    strategy: str = DEFAULT_STRATEGY
    """The strategy the order was placed under: named on every log line about it (`tvbridge/strategies.py`)."""

    @property
    def is_open(self) -> bool:
        return self.state in _OPEN_VALUES or has_open_part(self.bracket)

    @property
    def key(self) -> tuple[str, int]:
        return self.alert_id, self.leg_number


def _what(transaction: object, quantity: object, symbol: object) -> str:
    return " ".join(str(part) for part in (transaction, quantity, symbol) if part)


class FollowUp:
    """Follows accepted orders per account; `follow()` and `nudge()` never block, the account tasks look up."""

    def __init__(
        self,
        *,
        journal: Store,
        brokers: Mapping[str, Broker],
        config: FollowupConfig,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        lead: Callable[[], Awaitable[bool]] | None = None,
        recheck_s: float = 5.0,
    ) -> None:
        """`lead`: on a shared store, whether this instance is the leader now (None: always, one instance);
        asked every `recheck_s`."""
        self._journal = journal
        self._brokers = brokers
        self._config = config
        self._metrics = metrics
        self._notifier = notifier
        self._clock = clock
        self._sleep = sleep
        self._orders: dict[str, dict[tuple[str, int], Followed]] = {account: {} for account in brokers}
        self._wake: dict[str, asyncio.Event] = {account: asyncio.Event() for account in brokers}
        self._last_lookup: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._lead = lead
        self._recheck_s = recheck_s
        self.leading = lead is None
        """Whether the account tasks look orders up now: always on one instance; on a shared store while this
        instance is the leader (`_keep_lead`)."""

    def followed(self, account: str | None = None) -> int:
        """How many orders are followed (on `account`, or on every account)."""
        if account is not None:
            return len(self._orders.get(account, {}))
        return sum(len(orders) for orders in self._orders.values())

    def orders(self, account: str) -> list[Followed]:
        """The orders followed on `account`, soonest due first."""
        return sorted(self._orders.get(account, {}).values(), key=lambda o: o.due)

    # handing orders over

    def follow(self, alert_id: str, results: Sequence[LegResult]) -> None:
        """Follow the legs of a finished alert whose order the broker accepted and that are not final yet."""
        if not self._config.enabled:
            return
        for result in results:
            if result.status is not LegStatus.SUCCESS:
                continue
            if result.order_state not in _OPEN_VALUES and not has_open_part(result.bracket):
                continue
            if result.client_order_id is None or result.account not in self._orders:
                continue
            self._add(
                Followed(
                    alert_id=alert_id,
                    account=result.account,
                    leg_number=result.leg_number,
                    client_order_id=result.client_order_id,
                    order_id=result.order_id,
                    strategy=result.strategy,
                    state=result.order_state or OrderState.PENDING.value,
                    filled_quantity=result.filled_quantity,
                    average_price=result.average_price,
                    what=_what(result.transaction, result.quantity, result.symbol),
                    interval=self._config.first_interval_s,
                    due=self._clock() + self._config.first_interval_s,
                    bracket=tuple(result.bracket),
                )
            )

    def nudge(self, account: str, order_ids: Iterable[str]) -> None:
        """The broker says these orders changed (`details["moved_orders"]` of a placement): look them up now."""
        wanted = set(order_ids)
        now = self._clock()
        found = False
        for order in self._orders.get(account, {}).values():
            if order.order_id in wanted:
                order.due = now
                order.interval = self._config.first_interval_s
                found = True
        if found:
            self._wake[account].set()

    async def settle(self, account: str, client_order_ids: Iterable[str]) -> None:
        """Look these followed orders up now, not at their next poll (a strategy's share is about to be read
        from the journal's fills: a fill Dhan already made must be in it, or the share is stale). A failed
        look-up leaves the order as it was (asked again at its next poll)."""
        wanted = set(client_order_ids)
        known = {o.client_order_id for o in self._orders.get(account, {}).values()}
        if self._lead is not None and not wanted <= known:
            # a shared store: another instance placed it, and this one's list takes it only at its next round
            # (`_keep_lead`); the strategy's share would be read without its fill
            await self.load()
        for order in [o for o in self._orders.get(account, {}).values() if o.client_order_id in wanted]:
            if self._orders[account].get(order.key) is not order:  # final meanwhile (the account's own poll)
                continue
            with structlog.contextvars.bound_contextvars(strategy=order.strategy):
                await self._check(order)

    async def load(self, *, replace: bool = False) -> int:
        """Follow what the journal says is still open (at start: the orders an earlier run was following). Orders
        followed already keep their state and schedule, unless `replace`: then the journal's list is the list."""
        rows = await self._journal.followed_orders()
        if replace:
            for orders in self._orders.values():
                orders.clear()
        now = self._clock()
        added = 0
        known = {(account, key) for account, orders in self._orders.items() for key in orders}
        for row in rows:
            if (row["account"], (row["alert_id"], row["leg_number"])) in known:
                continue
            if row["account"] not in self._orders:
                log.warning(
                    "followup.account_missing", alert_id=row["alert_id"], leg=row["leg_number"], account=row["account"]
                )
                continue
            result: Mapping[str, Any] = row["result"] if isinstance(row["result"], dict) else {}
            self._add(
                Followed(
                    alert_id=row["alert_id"],
                    account=row["account"],
                    leg_number=row["leg_number"],
                    client_order_id=row["client_order_id"],
                    order_id=row["order_id"],
                    state=row["order_state"],
                    filled_quantity=row["filled_quantity"],
                    average_price=row["average_price"],
                    what=_what(result.get("transaction"), result.get("quantity"), result.get("symbol")),
                    interval=self._config.first_interval_s,
                    due=now,  # an earlier run may have stopped long ago: ask at once
                    bracket=parts_of({"bracket": row.get("bracket") or []}),
                    strategy=str(result.get("strategy") or DEFAULT_STRATEGY),
                )
            )
            added += 1
        return added

    def _add(self, order: Followed) -> None:
        self._orders[order.account][order.key] = order
        self._count(order.account)
        self._wake[order.account].set()

    def _drop(self, order: Followed) -> None:
        orders = self._orders[order.account]
        if orders.get(order.key) is order:  # not a newer hand-over of the same leg (an alert run again)
            del orders[order.key]
        self._count(order.account)

    def _count(self, account: str) -> None:
        if self._metrics is not None:
            self._metrics.orders_followed.labels(account=account).set(len(self._orders[account]))

    # looking up

    async def check_due(self, account: str) -> float | None:
        """Look up every order of `account` that is due now, paced to `max_lookups_per_s`; returns the seconds
        until the next one is due, or None when the account has nothing to follow."""
        now = self._clock()
        due = sorted((o for o in self._orders[account].values() if o.due <= now), key=lambda o: o.due)
        gap_s = 1.0 / self._config.max_lookups_per_s
        for order in due:
            last = self._last_lookup.get(account)
            if last is not None and (wait := last + gap_s - self._clock()) > 0:
                await self._sleep(wait)
            self._last_lookup[account] = self._clock()
            with structlog.contextvars.bound_contextvars(strategy=order.strategy):
                await self._check(order)
        remaining = self._orders[account].values()
        if not remaining:
            return None
        return max(0.0, min(o.due for o in remaining) - self._clock())

    async def _check(self, order: Followed) -> None:
        broker = self._brokers[order.account]
        fields = {"alert_id": order.alert_id, "leg": order.leg_number, "account": order.account}
        try:
            async with asyncio.timeout(self._config.lookup_timeout_s):
                found = await broker.lookup(order.client_order_id)
        except Exception as e:  # noqa: BLE001 - any failure: the order is asked about again later
            error = "timed out" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            log.warning("followup.lookup_failed", **fields, client_order_id=order.client_order_id, error=error)
            self._back_off(order)
            return
        if found is None:
            order.missing += 1
            if order.missing == 1:
                log.warning("followup.not_found", **fields, client_order_id=order.client_order_id)
            self._back_off(order)
            return
        order.missing = 0
        if found.state is OrderState.DRY_RUN:  # nothing at a broker to follow
            self._drop(order)
            return
        changed = await self._record(order, found)
        if not order.is_open:
            self._drop(order)
        elif changed:
            order.interval = self._config.first_interval_s
            order.due = self._clock() + order.interval
        else:
            self._back_off(order)

    def _back_off(self, order: Followed) -> None:
        order.interval = min(max(order.interval * 2, self._config.first_interval_s), self._config.max_interval_s)
        order.due = self._clock() + order.interval

    async def _record(self, order: Followed, found: OrderResult) -> bool:
        """Journal, count, log and notify a change; False when nothing changed (or it could not be journaled,
        in which case the order is asked about again and the change recorded then)."""
        average = str(found.average_price) if found.average_price is not None else None
        now = (found.state.value, found.filled_quantity, average)
        bracket = parts_of(found.details) or order.bracket
        if now == (order.state, order.filled_quantity or 0, order.average_price) and bracket == order.bracket:
            return False
        record = OrderStateRecord(
            state=found.state.value,
            filled_quantity=found.filled_quantity,
            average_price=average,
            message=found.message,
            bracket=bracket,
        )
        try:
            await self._journal.set_order_state(order.alert_id, order.account, order.leg_number, record)
        except JournalError as e:
            log.error("followup.journal_failed", alert_id=order.alert_id, leg=order.leg_number, error=str(e))
            return False
        previous = order.state
        order.state, order.filled_quantity, order.average_price = now
        if bracket != order.bracket:
            log.info(
                "order.bracket_changed",
                alert_id=order.alert_id,
                leg=order.leg_number,
                account=order.account,
                parts=[f"{p['part']} {p['state']}" for p in bracket],
            )
            order.bracket = bracket
        order.order_id = found.order_id or order.order_id
        if self._metrics is not None and previous != order.state:
            self._metrics.order_states.labels(account=order.account, state=order.state).inc()
        what = {"alert_id": order.alert_id, "leg": order.leg_number, "account": order.account}
        if found.state is OrderState.REJECTED:  # a refused order is a trader's problem: a warning
            log.warning(
                "order.state_changed",
                **what,
                order_id=order.order_id,
                previous=previous,
                state=order.state,
                filled_quantity=order.filled_quantity,
                average_price=order.average_price,
                message=found.message,
            )
        else:
            log.info(
                "order.state_changed",
                **what,
                order_id=order.order_id,
                previous=previous,
                state=order.state,
                filled_quantity=order.filled_quantity,
                average_price=order.average_price,
                message=found.message,
            )
        self._notify(order, found)
        return True

    def _notify(self, order: Followed, found: OrderResult) -> None:
        if self._notifier is None:
            return
        where = f"{order.account} leg {order.leg_number} ({order.what})"
        tail = f"[alert {order.alert_id}, order {order.order_id}]"
        if found.state is OrderState.FILLED:
            price = f" at {order.average_price}" if order.average_price else ""
            self._notifier.event("order_filled", f"{where}: filled {order.filled_quantity}{price} {tail}")
        elif found.state is OrderState.REJECTED:
            self._notifier.event("order_rejected", f"{where}: rejected: {found.message} {tail}")

    # the account tasks

    async def start(self) -> None:
        """Read the work list from the journal and start one task per account."""
        for account in self._orders:
            self._count(account)
        if added := await self.load():
            log.info("followup.resumed", orders=added)
        self._tasks = [asyncio.create_task(self._run(account), name=f"followup-{account}") for account in self._orders]
        if self._lead is not None:
            self._tasks.append(asyncio.create_task(self._keep_lead(self._lead), name="followup-lead"))

    async def _keep_lead(self, lead: Callable[[], Awaitable[bool]]) -> None:
        """Every `recheck_s`: ask whether this instance leads, and take the store's list of open orders (see the
        module docstring: afresh on becoming the leader and on a follower, the new ones only on the leader)."""
        while True:
            try:
                leading = await lead()
                if not leading:
                    self.leading = False  # at once: the new leader may be looking up already
                await self.load(replace=not (leading and self.leading))
                if leading and not self.leading:  # leads only once it has the list (a failed read: next round)
                    self.leading = True
                    log.info("followup.leading")
                    for wake in self._wake.values():  # the account tasks wait for this while they follow
                        wake.set()
            except JournalError:  # the store is away: its own failures say so; asked again next round
                pass
            except Exception:
                log.exception("followup.failed", account=None)
            await self._sleep(self._recheck_s)

    async def close(self) -> None:
        """Stop the account tasks; what was still open is followed again after the next start."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, account: str) -> None:
        wake = self._wake[account]
        while True:
            wake.clear()  # before the pass: an order handed over during it wakes the wait below at once
            if not self.leading:  # another instance looks up; `_keep_lead` wakes this one when it leads
                await wake.wait()
                continue
            try:
                delay = await self.check_due(account)
            except Exception:
                log.exception("followup.failed", account=account)
                delay = self._config.max_interval_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()


async def followup_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: after the brokers (it asks them), before the executor (which hands it finished alerts) and
    crash recovery; stops before the brokers close."""
    from tvbridge.keys import BROKERS, CONFIG, FOLLOWUP, JOURNAL, METRICS, NOTIFIER  # noqa: PLC0415 - keys imports this module's types
    from tvbridge.metrics import instrument_brokers  # noqa: PLC0415 - metrics imports alertqueue, which imports more

    config = app[CONFIG].followup
    followup = FollowUp(
        journal=app[JOURNAL],
        brokers=instrument_brokers(app[BROKERS], app[METRICS], app[NOTIFIER]),
        config=config,
        metrics=app[METRICS],
        notifier=app[NOTIFIER],
        lead=app[JOURNAL].is_leader if app[JOURNAL].shared else None,
        recheck_s=app[CONFIG].journal.leader_lease_s / 2,
    )
    app[FOLLOWUP] = followup
    if config.enabled:
        await followup.start()
    else:
        log.info("followup.disabled")
    yield
    await followup.close()
