"""TradingView's ticker spellings, read into the leg's own fields. Pure: no I/O, no clock.

An alert built from `{{exchange}}:{{ticker}}` or `{{ticker}}` on an option chart carries TradingView's names, not
the exchange's. The parser (`parsing.py`) uses this module so every broker, paper and Dhan alike, sees one
normalised leg:

* `NSE:RELIANCE` is exchange NSE, symbol RELIANCE. TradingView lists NSE's futures and options under `NSE:` too,
  so a prefix agrees with the leg's `exchange` when both name the same venue (NSE with NFO, BSE with BFO); a
  prefix naming another venue is refused, never silently preferred to the `exchange` key.
* `NIFTY261229C24000` (an option chart) is underlying NIFTY, expiry 2026-12-29 (YYMMDD), call (C/P), strike
  24000. It is read only for option legs (`instrument` OPT, CE or PE): an equity or future keeps its symbol.
* Continuous futures (`NIFTY1!`) are left alone: which contract they mean depends on the day, so the broker's
  instrument master resolves them (`tvbridge_brokers.dhan.mapping`).
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Final

import attrs

from tvbridge.models import Exchange, OptionType

VENUES: Final = {
    Exchange.NSE: "NSE",
    Exchange.NFO: "NSE",
    Exchange.BSE: "BSE",
    Exchange.BFO: "BSE",
    Exchange.MCX: "MCX",
}
"""The exchange each `exchange` value trades on: NFO is NSE's derivatives segment, BFO is BSE's."""

_PREFIX: Final = re.compile(r"(?P<prefix>[A-Za-z_]{2,12}):(?P<symbol>.*)", re.DOTALL)
_OPTION: Final = re.compile(
    r"(?P<underlying>[A-Za-z0-9&_-]+?)(?P<yy>[0-9]{2})(?P<mm>[0-9]{2})(?P<dd>[0-9]{2})(?P<kind>[CcPp])"
    r"(?P<strike>[0-9]{1,9}(?:\.[0-9]{1,4})?)"
)
"""TradingView's NSE option ticker: underlying, expiry YYMMDD, C or P, strike (NIFTY261229C24000)."""


class TickerError(ValueError):
    """The ticker cannot be read; the message names what is wrong, for the trader."""


@attrs.frozen(kw_only=True)
class Prefixed:
    """A symbol after its `EXCHANGE:` prefix (if any) was taken off."""

    symbol: str
    exchange: Exchange | None = None
    """The prefix's exchange; None when the symbol had no prefix."""


@attrs.frozen(kw_only=True)
class OptionTicker:
    underlying: str
    expiry_date: date
    option_type: OptionType
    strike_price: Decimal


def split_prefix(text: str) -> Prefixed:
    """`NSE:RELIANCE` -> (RELIANCE, NSE); a symbol without a prefix comes back as it is. Raises `TickerError`
    for a prefix that is not an exchange tvbridge knows, or one with nothing after it."""
    found = _PREFIX.fullmatch(text)
    if found is None:
        return Prefixed(symbol=text)
    prefix, symbol = found["prefix"], found["symbol"].strip()
    try:
        exchange = Exchange(prefix.upper())
    except ValueError:
        known = ", ".join(e.value for e in Exchange)
        msg = f"exchange prefix {prefix!r} in {text!r} is not an exchange tvbridge knows ({known})"
        raise TickerError(msg) from None
    if not symbol:
        raise TickerError(f"{text!r} has an exchange prefix but no symbol after it")
    return Prefixed(symbol=symbol, exchange=exchange)


def same_venue(a: Exchange, b: Exchange) -> bool:
    """True when both name the same exchange (NSE and NFO do; NSE and BSE do not)."""
    return VENUES[a] == VENUES[b]


def read_option_ticker(symbol: str) -> OptionTicker | None:
    """The option a TradingView option ticker names, or None when `symbol` is not one (a plain underlying such as
    NIFTY). Raises `TickerError` when it has the shape of one but names no real date."""
    found = _OPTION.fullmatch(symbol)
    if found is None:
        return None
    try:
        expiry = date(2000 + int(found["yy"]), int(found["mm"]), int(found["dd"]))
    except ValueError:
        raise TickerError(
            f"{symbol!r} reads as a TradingView option ticker, but {found['yy']}{found['mm']}{found['dd']} is not"
            " a date (YYMMDD)"
        ) from None
    kind = OptionType.CALL if found["kind"].upper() == "C" else OptionType.PUT
    return OptionTicker(
        underlying=found["underlying"],
        expiry_date=expiry,
        option_type=kind,
        strike_price=Decimal(found["strike"]),
    )
