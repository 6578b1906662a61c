"""Dhan's instrument master: load the CSV once, index it, answer "which security id is this leg?".

Dhan identifies every contract by `SEM_SMST_SECURITY_ID`; the alert names it by exchange and symbol (plus expiry,
strike and CE/PE for derivatives). The master has about 200k rows, so it is parsed once into dicts keyed the way
legs ask (no scan per order), and only the rows we can trade are kept (equity, futures, options; not indices or
currency). Downloading a fresh master is `refresh.py`'s job; turning a leg into order fields is `mapping.py`'s.

Every lookup failure raises `BrokerRejectedError` with a message a trader can act on: the closest symbols for a
typo, the listed expiries or strikes for a contract that does not exist. Nothing is sent when that happens.
"""

from __future__ import annotations

import bisect
import csv
import difflib
from datetime import date
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from tvbridge.broker import BrokerRejectedError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

REQUIRED_COLUMNS: Final = (
    "SEM_EXM_EXCH_ID",
    "SEM_SEGMENT",
    "SEM_SMST_SECURITY_ID",
    "SEM_INSTRUMENT_NAME",
    "SEM_TRADING_SYMBOL",
    "SEM_LOT_UNITS",
    "SEM_EXPIRY_DATE",
    "SEM_STRIKE_PRICE",
    "SEM_OPTION_TYPE",
)
"""The columns we read; a file without all of them is not a Dhan master (refresh refuses it)."""

EQUITY_NAMES: Final = frozenset({"EQUITY"})
FUTURE_NAMES: Final = frozenset({"FUTIDX", "FUTSTK", "FUTCOM"})
OPTION_NAMES: Final = frozenset({"OPTIDX", "OPTSTK", "OPTFUT"})

SAMPLE_MASTER_NAME: Final = "api-scrip-master-sample.csv"
MAX_SUGGESTIONS: Final = 5


def sample_master_path() -> Path:
    """The small master shipped with the package: for tests and dry-run only, never for live orders."""
    return Path(str(files("tvbridge_brokers.dhan").joinpath("data", SAMPLE_MASTER_NAME)))


@attrs.frozen(kw_only=True)
class Contract:
    """One tradable row of the master, already typed."""

    exchange: str
    """`SEM_EXM_EXCH_ID`: NSE, BSE or MCX."""
    segment: str
    """`SEM_SEGMENT`: E (equity), D (derivatives), M (commodity)."""
    security_id: str
    instrument_name: str
    trading_symbol: str
    underlying: str
    lot_size: int
    expiry: date | None
    strike: Decimal | None
    option_type: str | None


class MasterFormatError(ValueError):
    """The file is not a Dhan instrument master (missing columns, unreadable rows)."""


def _header_index(header: list[str]) -> dict[str, int]:
    index = {name.strip(): i for i, name in enumerate(header)}
    missing = [name for name in REQUIRED_COLUMNS if name not in index]
    if missing:
        raise MasterFormatError(f"not a Dhan instrument master: missing column(s) {', '.join(missing)}")
    return index


def check_header(header: list[str]) -> None:
    """Raise `MasterFormatError` naming the missing columns."""
    _header_index(header)


def _expiry(text: str) -> date | None:
    text = text.strip()
    if len(text) < 10 or not text[0].isdigit():
        return None
    return date.fromisoformat(text[:10])


def _strike(text: str) -> Decimal | None:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    return normalize_strike(value) if value > 0 else None


def normalize_strike(value: Decimal) -> Decimal:
    """One key per strike: 24000, 24000.0 and 24000.00000 are the same (and print as 24000, not 2.4E+4)."""
    value = value.normalize()
    return value.quantize(Decimal(1)) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]  # int here


def _parse_rows(rows: Iterator[list[str]], source: str) -> Iterator[Contract]:
    try:
        header = next(rows)
    except StopIteration:
        raise MasterFormatError(f"{source} is empty") from None
    col = _header_index(header)
    i_exch, i_seg, i_id = col["SEM_EXM_EXCH_ID"], col["SEM_SEGMENT"], col["SEM_SMST_SECURITY_ID"]
    i_name, i_sym, i_lot = col["SEM_INSTRUMENT_NAME"], col["SEM_TRADING_SYMBOL"], col["SEM_LOT_UNITS"]
    i_exp, i_strike, i_opt = col["SEM_EXPIRY_DATE"], col["SEM_STRIKE_PRICE"], col["SEM_OPTION_TYPE"]
    width = max(col.values()) + 1
    for line, row in enumerate(rows, start=2):
        if len(row) < width:
            continue  # a short trailing line; the real master ends with one
        name = row[i_name].strip()
        is_option = name in OPTION_NAMES
        if not (is_option or name in FUTURE_NAMES or name in EQUITY_NAMES):
            continue
        symbol = row[i_sym].strip()
        try:
            lot = int(float(row[i_lot] or "1"))
            expiry = None if name in EQUITY_NAMES else _expiry(row[i_exp])
        except ValueError as e:
            raise MasterFormatError(f"{source} line {line}: {e}") from None
        yield Contract(
            exchange=row[i_exch].strip().upper(),
            segment=row[i_seg].strip().upper(),
            security_id=row[i_id].strip(),
            instrument_name=name,
            trading_symbol=symbol,
            underlying=(symbol if name in EQUITY_NAMES else symbol.split("-", 1)[0]).upper(),
            lot_size=max(lot, 1),
            expiry=expiry,
            strike=_strike(row[i_strike]) if is_option else None,
            option_type=row[i_opt].strip().upper() if is_option else None,
        )


OptionKey = tuple[str, str, date, Decimal, str]


class InstrumentMaster:
    """The indexed master. Build it with `load_master(path)` (blocking: run it off the event loop)."""

    def __init__(self, contracts: Iterable[Contract], *, source: str) -> None:
        self.source = source
        self._equities: dict[tuple[str, str], Contract] = {}
        self._futures: dict[tuple[str, str], list[Contract]] = {}
        self._options: dict[OptionKey, Contract] = {}
        self._option_expiries: dict[tuple[str, str], set[date]] = {}
        self._count = 0
        for c in contracts:
            self._count += 1
            if c.instrument_name in EQUITY_NAMES:
                # NSE lists a symbol once per series (EQ, BE, ...); the first row wins, the master lists EQ first
                self._equities.setdefault((c.exchange, c.underlying), c)
            elif c.expiry is None:
                continue
            elif c.option_type is None or c.strike is None:
                self._futures.setdefault((c.exchange, c.underlying), []).append(c)
            else:
                key = (c.exchange, c.underlying, c.expiry, c.strike, c.option_type)
                self._options.setdefault(key, c)
                self._option_expiries.setdefault((c.exchange, c.underlying), set()).add(c.expiry)
        for futures in self._futures.values():
            futures.sort(key=lambda c: (c.expiry or date.min, c.instrument_name))

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"<InstrumentMaster {self._count} rows from {self.source}>"

    def equity(self, exchange: str, symbol: str) -> Contract:
        found = self._equities.get((exchange, symbol))
        if found is None:
            names = [s for (e, s) in self._equities if e == exchange]
            raise BrokerRejectedError(_unknown(symbol, f"{exchange} equity", names))
        return found

    def future(self, exchange: str, underlying: str, *, today: date, expiry: date | None, nth: int = 1) -> Contract:
        """The future expiring on `expiry`, or else the `nth` (1 = nearest) not yet expired on `today`."""
        listed = self._futures.get((exchange, underlying))
        if not listed:
            names = {u for (e, u) in self._futures if e == exchange}
            raise BrokerRejectedError(_unknown(underlying, f"{exchange} futures underlying", names))
        if expiry is not None:
            for c in listed:
                if c.expiry == expiry:
                    return c
            raise BrokerRejectedError(
                f"expiry_date {expiry.isoformat()}: no {underlying} future expires that day "
                f"(listed: {_dates(c.expiry for c in listed)})"
            )
        live = [c for c in listed if c.expiry is not None and c.expiry >= today]
        if len(live) < nth:
            raise BrokerRejectedError(
                f"symbol {underlying}: no unexpired future number {nth} on {today.isoformat()} "
                f"(listed: {_dates(c.expiry for c in listed)}); refresh the instrument master"
            )
        return live[nth - 1]

    def option(self, exchange: str, underlying: str, *, expiry: date, strike: Decimal, option_type: str) -> Contract:
        key = (exchange, underlying, expiry, normalize_strike(strike), option_type)
        found = self._options.get(key)
        if found is not None:
            return found
        expiries = self._option_expiries.get((exchange, underlying))
        if not expiries:
            names = {u for (e, u) in self._option_expiries if e == exchange}
            raise BrokerRejectedError(_unknown(underlying, f"{exchange} options underlying", names))
        if expiry not in expiries:
            raise BrokerRejectedError(
                f"expiry_date {expiry.isoformat()}: no {underlying} options expire that day "
                f"(listed: {_dates(expiries)})"
            )
        strikes = sorted(
            {k[3] for k in self._options if k[:3] == (exchange, underlying, expiry) and k[4] == option_type}
        )
        near = _nearest(strikes, normalize_strike(strike))
        raise BrokerRejectedError(
            f"strike_price {strike}: no {underlying} {option_type} strike on {expiry.isoformat()} "
            f"(nearest listed: {', '.join(str(s) for s in near) or 'none'})"
        )


def _unknown(symbol: str, what: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(symbol, list(names), n=MAX_SUGGESTIONS, cutoff=0.6)
    hint = f"; closest matches: {', '.join(close)}" if close else ""
    return f"symbol {symbol} is not a known {what} in the instrument master{hint}"


def _dates(values: Iterable[date | None]) -> str:
    return ", ".join(sorted({d.isoformat() for d in values if d is not None})) or "none"


def _nearest(strikes: list[Decimal], strike: Decimal) -> list[Decimal]:
    at = bisect.bisect_left(strikes, strike)
    return strikes[max(at - 2, 0) : at + 2]


def load_master(path: Path) -> InstrumentMaster:
    """Parse and index the master at `path`. Blocking (about a second for the real file): call it in a thread.

    Raises `OSError` when the file cannot be read, `MasterFormatError` when it is not a Dhan master."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        return InstrumentMaster(_parse_rows(csv.reader(f), str(path)), source=str(path))
