"""Risk limits: the last check before a leg reaches a broker, so a fat-fingered alert template stays an alert.

`check_leg()` is pure: quantity, notional (the leg's price or trigger price, else paper's reference price), the
symbol lists. `RiskGuard.before_send()` is the executor's hook before every `place()`: it also refuses while the
kill switch is on and keeps the per-account daily order count. A refused leg raises `RiskLimitError`; the executor
reports it `failed` with the message, which names the limit, and nothing is sent.

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

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import date, datetime
    from pathlib import Path

    from tvbridge.broker import Broker
    from tvbridge.config import RiskConfig
    from tvbridge.journal import Journal
    from tvbridge.models import OrderLeg

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
        journal: Journal,
        halt_file: Path,
        clock: Callable[[], datetime],
    ) -> None:
        self.limits = limits
        """Per account (`Config.risk_of`), read once: the planner checks queued legs against them too."""
        self._brokers = brokers
        self._journal = journal
        self._halt_file = halt_file
        self._clock = clock
        self._counts: dict[tuple[str, date], int] = {}

    def counted(self, account: str) -> bool:
        """Whether a leg of `account` may be journaled `sending` before `before_send` runs for it: yes unless its
        daily count for today still has to be read from the journal (that read would count the mark too)."""
        limits = self.limits.get(account)
        if limits is None or limits.max_orders_per_day is None:
            return True
        return (account, self._clock().astimezone(EXCHANGE_TZ).date()) in self._counts

    async def before_send(self, account: str, leg: OrderLeg) -> None:
        """Raise `RiskLimitError` if the leg must not be sent; otherwise count it as one of today's orders."""
        halt = read_halt(self._halt_file)
        if halt is not None:
            raise RiskLimitError(f"trading halted ({halt.reason}): nothing was sent")
        limits = self.limits.get(account)
        if limits is None:
            return
        check_leg(limits, leg, reference_price(self._brokers.get(account), leg))
        if limits.max_orders_per_day is None:
            return
        now = self._clock()
        day = now.astimezone(EXCHANGE_TZ).date()
        key = (account, day)
        if key not in self._counts:
            start = now.astimezone(EXCHANGE_TZ).replace(hour=0, minute=0, second=0, microsecond=0)
            counted = await self._journal.count_orders(account, since=start)
            self._counts.setdefault(key, counted)  # another alert may have seeded it while we awaited
        count = self._counts[key]
        if count >= limits.max_orders_per_day:
            raise RiskLimitError(
                f"risk: {count} order(s) already sent today on account {account}; max_orders_per_day is"
                f" {limits.max_orders_per_day}"
            )
        self._counts[key] = count + 1
