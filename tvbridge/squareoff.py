"""The daily square-off of a strategy (`[strategies.NAME] square_off_at`, issue 19), through flatten.

At `square_off_at` (exchange time) on every trading day, for each of the strategy's accounts: the open orders
this strategy placed are cancelled and the intraday (`I`) positions it opened (its own share, from the
journal's fills: `strategies.StrategyBook`) are closed, by the same plan-and-execute as `tvbridge flatten`
(`tvbridge/flatten.py`), so each run is a journaled `F<id>` entry (source `square_off <exchange day>`, under the
strategy),
with an order-log row per action, and the closes come back into the strategy's own position.

Once a day: before running, the journal is asked whether this strategy's square-off of this account already
ran today (any run, an interrupted one too: like flatten, an interrupted run is not replayed, since its closes
may have reached the broker unrecorded). A server that was down at `square_off_at` runs it when it starts, the
same day. Positions in other products (CNC, margin) are left alone: square-off is for intraday.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, time
from typing import TYPE_CHECKING, Final

import structlog

from tvbridge.broker import BrokerError, OpenOrder, OrderState
from tvbridge.flatten import FlattenPlan, FlattenReport, execute
from tvbridge.halt import halt_path, read_halt
from tvbridge.keys import BROKERS, CALENDAR, CONFIG, EXECUTOR, JOURNAL, NOW, ORDER_LOG, SQUARE_OFF, STRATEGY_BOOK
from tvbridge.models import Product, Side
from tvbridge.notify import event
from tvbridge.positions import position_of_key
from tvbridge.sessions import EXCHANGE_TZ, EXCHANGES
from tvbridge.strategies import halted_reason, use_strategy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp import web

    from tvbridge.config import StrategyConfig

log = structlog.get_logger()

SOURCE: Final = "square_off"
POLL_S: Final = 20.0


def due_since(strategy: StrategyConfig, now: datetime, trading_day: bool) -> datetime | None:
    """Today's square-off moment (exchange time) when it has come and today is a trading day, else None."""
    if not strategy.square_off_at or not trading_day:
        return None
    local = now.astimezone(EXCHANGE_TZ)
    at = datetime.combine(local.date(), time.fromisoformat(strategy.square_off_at), tzinfo=EXCHANGE_TZ)
    return at if local >= at else None


class SquareOff:
    """Runs the due square-offs; `run_due()` is what the schedule (and a test at a moved clock) calls."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._lock = asyncio.Lock()
        self._halt_logged: set[tuple[str, str, str]] = set()
        self._done: set[tuple[str, str, str]] = set()
        """(strategy, account, source) of the runs this process started: a run whose journal entry could not
        be written is not found by `has_run` and must still not repeat every poll."""

    def _trading_day(self, now: datetime) -> bool:
        day = now.astimezone(EXCHANGE_TZ).date()
        return any(self._app[CALENDAR].sessions_on(exchange, day) for exchange in EXCHANGES)

    async def run_due(self) -> list[FlattenReport]:
        """Every square-off that is due now and has not run today; one at a time (never twice at once)."""
        async with self._lock:
            app = self._app
            if not await app[JOURNAL].is_leader():  # several instances on one store: the leader squares off, once
                return []
            config = app[CONFIG]
            now = app[NOW]()
            trading_day = self._trading_day(now)
            reports: list[FlattenReport] = []
            for name, strategy in config.strategies.items():
                if due_since(strategy, now, trading_day) is None:
                    continue
                source = f"{SOURCE} {now.astimezone(EXCHANGE_TZ).date().isoformat()}"
                for account in config.accounts_of(name):
                    if (name, account, source) in self._done:
                        continue
                    if await app[JOURNAL].has_run(strategy=name, source=source, account=account):
                        self._done.add((name, account, source))
                        continue
                    if self._halted(name, account, source):
                        continue
                    with use_strategy(name):
                        async with app[EXECUTOR].exit_lock(account):  # not beside an EXIT_ALL reading it too
                            report = await self._square_off(name, account, source)
                    if report is not None:
                        reports.append(report)
            return reports

    def _halted(self, name: str, account: str, source: str) -> bool:
        """A halt (global, or the strategy's) means "send nothing": the square-off waits (logged once) and runs
        when the halt is lifted the same day, while the market is open."""
        data_dir = self._app[CONFIG].server.data_dir
        halt = read_halt(halt_path(data_dir))
        reason = f"trading halted: {halt.reason or 'halted'}" if halt is not None else None
        if reason is None and (strategy_reason := halted_reason(data_dir, name)) is not None:
            reason = f"strategy {name} halted: {strategy_reason}"
        if reason is None:
            return False
        if (name, account, source) not in self._halt_logged:
            self._halt_logged.add((name, account, source))
            log.warning("strategy.square_off_skipped", account=account, source=source, reason=reason)
        return True

    def _closed_now(self, exchanges: set[str], account: str, source: str) -> set[str]:
        """The exchanges in `exchanges` whose session is not open now (a holiday, after the close): their
        contracts are left alone (an order to a closed market is refused, or waits for the next open)."""
        now = self._app[NOW]()
        closed = {e for e in exchanges if not self._app[CALENDAR].is_open(e, now)}
        if closed:
            log.warning(
                "strategy.square_off_skipped",
                account=account,
                source=source,
                reason=f"market closed now: {', '.join(sorted(closed))}",
            )
        return closed

    async def _square_off(self, name: str, account: str, source: str) -> FlattenReport | None:
        app = self._app
        broker = app[BROKERS][account]
        try:
            mine = await app[JOURNAL].strategy_orders(name, account)
            listed = await broker.open_orders() if mine and broker.capabilities.orders else []
            cancels = [o for o in listed if o.client_order_id in mine]
            if broker.capabilities.brackets:  # its brackets by entry order id: the whole bracket goes
                known = {o.order_id for o in cancels}
                for order_id, key, side, quantity in await app[JOURNAL].bracket_entries(name, account):
                    if order_id not in known:
                        cancels.append(_bracket(order_id, key, side, quantity))
            positions = [
                p
                for p in await app[STRATEGY_BOOK].open_positions(name, account, broker)
                if p.product is Product.INTRADAY
            ]
        except BrokerError as e:
            log.error("strategy.square_off_failed", account=account, error=str(e))
            return None  # nothing was done or recorded: the next poll tries again
        closed = self._closed_now(
            {p.contract.exchange.value for p in positions} | {o.contract.exchange.value for o in cancels},
            account,
            source,
        )
        positions = [p for p in positions if p.contract.exchange.value not in closed]
        cancels = [o for o in cancels if o.contract.exchange.value not in closed]
        plan = FlattenPlan(account=account, cancels=tuple(cancels), positions=tuple(positions))
        self._done.add((name, account, source))  # from here on, never again today in this process
        try:
            report = await execute(
                plan,
                broker,
                broker_name=app[CONFIG].broker_of(account),
                journal=app[JOURNAL],
                order_log=app[ORDER_LOG],
                source=source,
                record_required=True,
            )
        except Exception as e:  # noqa: BLE001 - its journal entry failed (any error): nothing was sent
            log.error("strategy.square_off_not_recorded", account=account, source=source, error=str(e))
            event(
                app,
                "journal_error",
                f"square-off of strategy {name} on {account} NOT run ({source}): its journal entry failed"
                f" ({type(e).__name__}); nothing was sent and it is not retried today: check and close by hand",
            )
            return None
        log.warning(
            "strategy.squared_off",
            account=account,
            flatten_id=report.alert_id,
            status=report.status,
            cancelled=len(cancels),
            closed=len(positions),
        )
        return report


def _bracket(order_id: str, key: str, side: str, quantity: int) -> OpenOrder:
    """A bracket of the strategy's, named by its entry's order id (cancelling it cancels the stop and target)."""
    position = position_of_key(key, quantity)
    return OpenOrder(
        order_id=order_id,
        state=OrderState.OPEN,
        contract=position.contract,
        side=Side(side),
        quantity=quantity,
        product=position.product,
        details={"bracket": True},
    )


async def _schedule(square_off: SquareOff) -> None:
    while True:
        await asyncio.sleep(POLL_S)
        try:
            await square_off.run_due()
        except Exception:  # tomorrow's square-off must still run
            log.exception("strategy.square_off_failed")


async def square_off_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the schedule runs while the app does, when a strategy has `square_off_at`."""
    square_off = SquareOff(app)
    app[SQUARE_OFF] = square_off
    if not any(s.square_off_at for s in app[CONFIG].strategies.values()):
        yield
        return
    try:  # a square-off missed while the server was down runs before the first alert is taken
        await square_off.run_due()
    except Exception:  # the schedule tries again; the server must still start
        log.exception("strategy.square_off_failed")
    task = asyncio.create_task(_schedule(square_off), name="square_off")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
