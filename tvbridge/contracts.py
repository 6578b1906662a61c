"""Options and futures chosen relative to the market: `strike_price: "ATM+N"` and `expiry_date: "current_week"`.

A Pine alert cannot see the option chain, so it names the contract relative to the underlying: the expiry by
keyword and the strike as N steps from the money on the listed grid. Both are resolved here, per account, from
what that account's broker lists (`Broker.listings()`, the instrument master Dhan and paper-with-master both read),
before sizing, risk limits and `place()`; the broker then receives an ordinary leg with a date and a strike.

Expiries, in exchange time (IST, the injected clock; the close from the sessions calendar): an expiry is current
until its exchange closes on the expiry day (NSE/BSE 15:30, MCX 23:30). `current_week` is the nearest unexpired
listed expiry and `next_week` the one after it; a month's expiry is the last listed expiry in that calendar month
(the monthly contract), `current_month` the nearest unexpired one and `next_month` the one after. Futures are
monthly, so for them week and month both count futures expiries.

Strikes: ATM is the listed strike nearest to `underlying_price` (the lower one on a tie). `ATM+N` is N strikes
out of the money: higher for CE, lower for PE; `ATM-N` is N strikes in the money (lower for CE, higher for PE).
A strike or expiry the master does not list is refused with the nearest listed ones; nothing is sent.
"""

from __future__ import annotations

import bisect
import itertools
from datetime import date, datetime, time
from typing import TYPE_CHECKING, Final

import attrs

from tvbridge.broker import BrokerRejectedError, BrokerUnsupportedError
from tvbridge.models import ExpiryRef, OptionType, OrderLeg
from tvbridge.sessions import EXCHANGE_TZ

if TYPE_CHECKING:
    from collections.abc import Sequence
    from decimal import Decimal

    from tvbridge.broker import Broker
    from tvbridge.sessions import Calendar

DEFAULT_CLOSE: Final = {"MCX": time(23, 30)}
"""The close on an expiry day the calendar has no session for (a holiday expiry): NSE/BSE 15:30, MCX 23:30."""
EQUITY_CLOSE: Final = time(15, 30)
SHOWN: Final = 6


@attrs.frozen(kw_only=True)
class Chosen:
    """The leg with its contract resolved, and how to name that contract to the trader."""

    leg: OrderLeg
    contract: str | None
    """`NIFTY-Dec2026-24050-CE (expiry 2026-12-08, strike 24050, security_id 43124)`; None: nothing relative."""


def is_relative(leg: OrderLeg) -> bool:
    return leg.expiry_ref is not None or leg.strike_offset is not None


async def resolve(broker: Broker, leg: OrderLeg, *, now: datetime, calendar: Calendar) -> Chosen:
    """The leg naming a listed expiry and strike. Raises `BrokerUnsupportedError` when the broker declares no
    `listings`, `BrokerRejectedError` for an expiry or strike that is not listed (with the nearest listed)."""
    if not is_relative(leg):
        return Chosen(leg=leg, contract=None)
    if not broker.capabilities.listings:
        msg = (
            "a relative strike_price or expiry_date needs the broker capability `listings` (the strikes and expiries"
            " of its instrument master), which this broker does not declare (a paper account needs instruments_path)"
        )
        raise BrokerUnsupportedError(msg)
    if leg.expiry_ref is not None:
        listed = await broker.listings(attrs.evolve(leg, expiry_date=None))
        expiry = choose_expiry(listed.expiries, leg.expiry_ref, now=now, exchange=leg.exchange.value, calendar=calendar)
        leg = attrs.evolve(leg, expiry_date=expiry, expiry_ref=None)
    if leg.strike_offset is not None and leg.underlying_price is not None and leg.option_type is not None:
        listed = await broker.listings(leg)
        where = f"{leg.symbol} {leg.option_type} on {leg.expiry_date}"
        strike = choose_strike(listed.strikes, leg.underlying_price, leg.strike_offset, leg.option_type, where)
        leg = attrs.evolve(leg, strike_price=strike, strike_offset=None)
    return Chosen(leg=leg, contract=await describe(broker, leg))


async def describe(broker: Broker, leg: OrderLeg) -> str:
    """The chosen contract as the trader reads it, with the broker's own name and id when it knows them."""
    parts = []
    if leg.expiry_date is not None:
        parts.append(f"expiry {leg.expiry_date.isoformat()}")
    if leg.strike_price is not None:
        parts.append(f"strike {format(leg.strike_price.normalize(), 'f')}")
    name = f"{leg.exchange} {leg.symbol} {leg.instrument if leg.option_type is None else leg.option_type}"
    if broker.capabilities.instrument_info:
        info = await broker.instrument_info(leg)  # also proves the contract is listed before anything is sent
        name = info.trading_symbol
        if info.security_id:
            parts.append(f"security_id {info.security_id}")
    return f"{name} ({', '.join(parts)})"


def _expired(expiry: date, *, now: datetime, exchange: str, calendar: Calendar) -> bool:
    today = now.astimezone(EXCHANGE_TZ).date()
    if expiry != today:
        return expiry < today
    sessions = calendar.sessions_on(exchange, expiry)
    if sessions:
        return now >= max(s.end for s in sessions)
    close = DEFAULT_CLOSE.get(exchange, EQUITY_CLOSE)
    return now >= datetime.combine(expiry, close, tzinfo=EXCHANGE_TZ)


def choose_expiry(
    expiries: Sequence[date], ref: ExpiryRef, *, now: datetime, exchange: str, calendar: Calendar
) -> date:
    """The listed expiry `ref` names at `now` (see the module docstring); `BrokerRejectedError` when none is
    listed, naming the unexpired ones."""
    live = sorted(e for e in expiries if not _expired(e, now=now, exchange=exchange, calendar=calendar))
    if ref in {ExpiryRef.CURRENT_MONTH, ExpiryRef.NEXT_MONTH}:
        last_of_month: dict[tuple[int, int], date] = {}
        for expiry in expiries:
            key = (expiry.year, expiry.month)
            last_of_month[key] = max(last_of_month.get(key, expiry), expiry)
        candidates = [e for e in live if last_of_month[(e.year, e.month)] == e]
    else:
        candidates = live
    nth = 0 if ref in {ExpiryRef.CURRENT_WEEK, ExpiryRef.CURRENT_MONTH} else 1
    if len(candidates) <= nth:
        shown = ", ".join(e.isoformat() for e in live[:SHOWN]) or "none"
        stamp = now.astimezone(EXCHANGE_TZ).strftime("%Y-%m-%d %H:%M IST")
        msg = f"expiry_date {ref}: no such expiry listed at {stamp} (unexpired listed: {shown}); nothing was sent"
        raise BrokerRejectedError(msg)
    return candidates[nth]


def choose_strike(
    strikes: Sequence[Decimal], price: Decimal, offset: int, option_type: OptionType, where: str
) -> Decimal:
    """ATM (+ N out of the money) on the listed grid; `BrokerRejectedError` naming the nearest listed strikes
    when the grid has no such strike or `price` lies outside it."""
    grid = sorted(set(strikes))
    asked = "ATM" if offset == 0 else f"ATM{offset:+d}"
    if not grid:
        raise BrokerRejectedError(f"strike_price {asked}: no strikes listed for {where}; nothing was sent")
    step = min((b - a for a, b in itertools.pairwise(grid)), default=None)
    if (step is not None and (price < grid[0] - step or price > grid[-1] + step)) or (
        step is None and price != grid[0]
    ):
        msg = (
            f"strike_price {asked}: underlying_price {price} is outside the listed strikes for {where}"
            f" ({grid[0]} to {grid[-1]}); nothing was sent"
        )
        raise BrokerRejectedError(msg)
    at = bisect.bisect_left(grid, price)
    below, above = max(at - 1, 0), min(at, len(grid) - 1)
    atm = below if price - grid[below] <= grid[above] - price else above
    index = atm + offset if option_type is OptionType.CALL else atm - offset
    if not 0 <= index < len(grid):
        near = grid[max(atm - 3, 0) : atm + 4]
        msg = (
            f"strike_price {asked}: ATM is {grid[atm]} at underlying_price {price}, and {where} lists no strike"
            f" {abs(offset)} step(s) {'above' if index >= len(grid) else 'below'} it (nearest listed:"
            f" {', '.join(str(s) for s in near)}); nothing was sent"
        )
        raise BrokerRejectedError(msg)
    return grid[index]
