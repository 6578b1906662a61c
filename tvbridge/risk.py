"""Risk limits: the last check before a leg reaches a broker, so a fat-fingered alert template stays an alert.

`check_leg()` is pure: quantity, notional (the leg's price or trigger price, else paper's reference price), the
symbol lists. `RiskGuard.before_send()` is the executor's hook before every `place()`: it also refuses while the
kill switch is on and keeps the per-account daily order count. A refused leg raises `RiskLimitError`; the executor
reports it `failed` with the message, which names the limit, and nothing is sent.

Strategies (issue 19) use the same mechanism with the strategy as the scope: the running strategy's halt, its
rules (`strategies.check_symbols`, `check_sides`, `check_window`: sides and hours refuse entries only, judged
against the strategy's own position), its own `[risk]` keys through `check_leg`, and its own daily count, over
all its accounts. Both the account's and the strategy's limits must pass.

The daily count (`max_orders_per_day`, per account, per exchange-time day) lives in memory and is seeded from the
journal the first time an account is checked on a day, so a restart does not reset it. The check and the increment
happen with no `await` between them, so two alerts arriving together cannot both take the last order.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

import structlog

from tvbridge.halt import read_halt
from tvbridge.sessions import EXCHANGE_TZ
from tvbridge.strategies import (
    check_sides,
    check_symbols,
    check_window,
    current_strategy,
    halted_reason,
    is_exit,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import date, datetime
    from pathlib import Path

    from tvbridge.broker import Broker
    from tvbridge.config import RiskConfig, StrategyConfig
    from tvbridge.models import OrderLeg
    from tvbridge.store import Store
    from tvbridge.strategies import StrategyBook

log = structlog.get_logger()


class RiskLimitError(Exception):
    """A leg refused before sending; the message is what the trader reads."""


def _norm(symbol: str) -> str:
    return symbol.strip().upper()


def reference_price(broker: Broker | None, leg: OrderLeg) -> Decimal | None:
    """The leg's price when it has one, else its trigger price (SL-M), else the paper account's configured price
    for the symbol (if any)."""
    if leg.price > 0:
        return leg.price
    if leg.trigger_price is not None and leg.trigger_price > 0:
        return leg.trigger_price
    settings = getattr(broker, "settings", None)
    prices: Mapping[str, Decimal] | None = getattr(settings, "prices", None)
    if not prices:
        return None
    for key in (f"{leg.exchange.value}:{leg.symbol}", leg.symbol):
        if key in prices:
            return Decimal(prices[key])
    return None


def check_leg(limits: RiskConfig, leg: OrderLeg, price: Decimal | None) -> None:
    """Raise `RiskLimitError` naming the first limit the leg is over."""
    symbol = _norm(leg.symbol)
    if limits.blocked_symbols and symbol in {_norm(s) for s in limits.blocked_symbols}:
        raise RiskLimitError(f"risk: symbol {leg.symbol} is in blocked_symbols")
    if limits.allowed_symbols and symbol not in {_norm(s) for s in limits.allowed_symbols}:
        raise RiskLimitError(f"risk: symbol {leg.symbol} is not in allowed_symbols")
    if leg.manage_position is not None:
        # an exit's size is the open position, not the alert's; like flatten, closing must never be refused by
        # a limit meant to stop opening (the kill switch and the symbol lists still apply)
        return
    if limits.max_qty_per_order is not None and leg.quantity > limits.max_qty_per_order:
        raise RiskLimitError(f"risk: quantity {leg.quantity} is over max_qty_per_order {limits.max_qty_per_order}")
    if limits.max_notional_per_order is not None:
        if price is None:
            raise RiskLimitError(
                "risk: no price to check max_notional_per_order against (a market order without a price in the"
                " alert or a reference price): nothing was sent"
            )
        notional = price * leg.quantity
        if notional > limits.max_notional_per_order:
            raise RiskLimitError(
                f"risk: notional {notional:f} ({leg.quantity} x {price:f}) is over max_notional_per_order"
                f" {limits.max_notional_per_order:f}"
            )


class RiskGuard:
    """The executor's `before_send` hook: kill switch, limits, daily count."""

    def __init__(
        self,
        *,
        limits: Mapping[str, RiskConfig],
        brokers: Mapping[str, Broker],
        journal: Store,
        halt_file: Path,
        clock: Callable[[], datetime],
        strategies: Mapping[str, StrategyConfig] | None = None,
        book: StrategyBook | None = None,
    ) -> None:
        self.limits = limits
        """Per account (`Config.risk_of`), read once: the planner checks queued legs against them too."""
        self._brokers = brokers
        self._journal = journal
        self._halt_file = halt_file
        self._clock = clock
        self._counts: dict[tuple[str, date], int] = {}
        self._strategies = strategies or {}
        self._book = book
        """The strategies' own positions (`strategies.StrategyBook`): whether a leg is an entry or an exit."""

    def counted(self, account: str) -> bool:
        """Whether a leg of `account` may be journaled `sending` before `before_send` runs for it: yes unless a
        daily count for today (the account's, or the running strategy's) still has to be read from the journal
        (that read would count the mark too)."""
        day = self._clock().astimezone(EXCHANGE_TZ).date()
        limits = self.limits.get(account)
        if limits is not None and limits.max_orders_per_day is not None and (account, day) not in self._counts:
            return False
        name = current_strategy()
        strategy = self._strategies.get(name)
        return strategy is None or strategy.max_orders_per_day is None or (f"strategy:{name}", day) in self._counts

    def premark(self, account: str, *, prechecked: bool) -> bool:
        """Whether the first leg of `account` may be journaled `sending` with the alert (`alerts/plan.py`).

        `prechecked`: its checks, the daily count included, run before the alert is recorded (an account whose
        broker joined the journal, `Executor.prepare_joined`), so a refused leg is recorded `failed`, never
        `sending`: yes once today's count is read (`counted`). Otherwise the checks run after the record, and
        a leg the daily count refuses there would stay `sending` if the process died before its result is
        committed; recovery then looks it up, does not find it and sends it, and cannot tell it from a leg that
        passed (both are in the journal's count). So with a daily count (the account's or the running
        strategy's) such a leg is journaled `pending` and marked `sending` only after its checks pass (one
        commit more per alert); without one there is no count to get past (halts and the other limits are
        checked again at recovery)."""
        if prechecked:
            return self.counted(account)
        limits = self.limits.get(account)
        if limits is not None and limits.max_orders_per_day is not None:
            return False
        strategy = self._strategies.get(current_strategy())
        return strategy is None or strategy.max_orders_per_day is None

    async def before_send(self, account: str, leg: OrderLeg, counted: bool = False) -> None:
        """Raise `RiskLimitError` if the leg must not be sent; otherwise count it as one of today's orders.
        `counted`: the leg is journaled `sending` (or `unknown`) from before a restart (crash recovery resends
        it): today's count read from the journal has it already, so it is neither counted again nor refused for
        a count it is part of."""
        name = current_strategy()
        strategy = self._strategies.get(name)
        self._check_halts(name)
        limits = self.limits.get(account)
        price = reference_price(self._brokers.get(account), leg)
        if limits is not None:
            check_leg(limits, leg, price)
        if strategy is not None:
            await self._check_strategy(name, strategy, account, leg, price)
        if not counted:
            await self._count(account, leg, limits, name, strategy)

    async def _count(
        self, account: str, leg: OrderLeg, limits: RiskConfig | None, name: str, strategy: StrategyConfig | None
    ) -> None:
        """Count the leg as one of today's orders of the account and of the strategy, or refuse it at a limit."""
        scopes: list[tuple[tuple[str, date], int, str]] = []
        if limits is not None and limits.max_orders_per_day is not None:
            key = await self._seeded(account, strategy=None)
            scopes.append((key, limits.max_orders_per_day, f"on account {account}"))
        exit_past_limit: tuple[str, date] | None = None
        if strategy is not None and strategy.max_orders_per_day is not None:
            key = await self._seeded(name, strategy=name)
            scopes.append((key, strategy.max_orders_per_day, f"by strategy {name}"))
            if self._counts[key] >= strategy.max_orders_per_day and await self._is_exit(name, account, leg):
                exit_past_limit = key  # counted, never refused: closing is never harder than opening
        # no await from here: two alerts arriving together cannot both take the last order
        for key, limit, where in scopes:
            if self._counts[key] >= limit and key != exit_past_limit:
                raise RiskLimitError(
                    f"risk: {self._counts[key]} order(s) already sent today {where}; max_orders_per_day is {limit}"
                )
        for key, _limit, _where in scopes:
            self._counts[key] += 1

    def give_back(self, account: str) -> None:
        """Undo the count of one leg of `account` that `before_send` passed but that was never recorded (the
        alert's `record_plan` failed: nothing journaled, nothing sent, so it is not one of today's orders, as
        the count read from the journal after a restart would say too). The running strategy's count too."""
        day = self._clock().astimezone(EXCHANGE_TZ).date()
        limits = self.limits.get(account)
        name = current_strategy()
        strategy = self._strategies.get(name)
        keys: list[tuple[str, date]] = []
        if limits is not None and limits.max_orders_per_day is not None:
            keys.append((account, day))
        if strategy is not None and strategy.max_orders_per_day is not None:
            keys.append((f"strategy:{name}", day))
        for key in keys:
            if self._counts.get(key, 0) > 0:  # (taken just before on the same day, but midnight between them
                self._counts[key] -= 1  # could give back a new day's order: one more allowed, never one fewer)

    def _check_halts(self, name: str) -> None:
        """The kill switch, then the strategy's own halt."""
        refusal = self.halted(name)
        if refusal is not None:
            raise RiskLimitError(refusal)

    def halted(self, name: str) -> str | None:
        """The refusal while the kill switch or strategy `name`'s own halt is on, else None. Synchronous, no
        state but the files (one `stat()` each when not halted): the joined commit asks it again from the
        journal's writer thread, since a halt may come while the alert waits for its commit (`alerts/joined.py`)."""
        halt = read_halt(self._halt_file)
        if halt is not None:
            return f"trading halted ({halt.reason}): nothing was sent"
        halted = halted_reason(self._halt_file.parent, name) if name in self._strategies else None
        if halted is not None:
            return f"strategy {name} halted ({halted}): nothing was sent"
        return None

    async def _check_strategy(
        self, name: str, strategy: StrategyConfig, account: str, leg: OrderLeg, price: Decimal | None
    ) -> None:
        """The strategy's own rules: each refuses entries only. An exit (a leg that only reduces the strategy's
        own position) passes them all: closing is never harder than opening."""
        refusal = check_symbols(strategy, leg)
        if refusal is None and (strategy.allowed_sides != "both" or strategy.entry_window):
            own = await self._own(name, account, leg)
            refusal = check_sides(strategy, leg, own) or check_window(strategy, leg, own, self._clock())
        if refusal is not None:
            refusal = f"{refusal}; nothing was sent"
        else:
            try:
                check_leg(strategy.risk(), leg, price)
            except RiskLimitError as e:
                refusal = f"strategy {name}: {e}"
        if refusal is not None and not await self._is_exit(name, account, leg):
            raise RiskLimitError(refusal)

    async def _own(self, name: str, account: str, leg: OrderLeg) -> int:
        """The strategy's own position in the leg's contract, cut to the broker's."""
        return await self._book.own(name, account, leg, self._brokers.get(account)) if self._book is not None else 0

    async def _is_exit(self, name: str, account: str, leg: OrderLeg) -> bool:
        return is_exit(leg, 0 if leg.manage_position is not None else await self._own(name, account, leg))

    async def _seeded(self, scope: str, *, strategy: str | None) -> tuple[str, date]:
        """The key of today's count of `scope` (an account, or a strategy over all its accounts), seeded from
        the journal the first time it is asked for on a day (a restart does not reset it)."""
        now = self._clock()
        day = now.astimezone(EXCHANGE_TZ).date()
        key = (scope if strategy is None else f"strategy:{scope}", day)
        if key not in self._counts:
            start = now.astimezone(EXCHANGE_TZ).replace(hour=0, minute=0, second=0, microsecond=0)
            if strategy is None:
                counted = await self._journal.count_orders(scope, since=start)
            else:
                counted = await self._journal.count_strategy_orders(strategy, since=start)
            self._counts.setdefault(key, counted)  # another alert may have seeded it while we awaited
        return key
