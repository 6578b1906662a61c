"""Dhan's instrument master: load the CSV once, index it, answer "which security id is this leg?".

Dhan identifies every contract by `SEM_SMST_SECURITY_ID`; the alert names it by exchange and symbol (plus expiry,
strike and CE/PE for derivatives). The master has about 200k rows, so it is parsed once into dicts keyed the way
legs ask (no scan per order), and only the rows we can trade are kept (equity, futures, options; not indices or
currency). Downloading a fresh master is `refresh.py`'s job; turning a leg into order fields is `mapping.py`'s.

The index holds only str/int tuples (expiries as ISO dates, strikes as normalized decimal text), which makes it
cheap to build and lets `load_master` keep a `marshal` copy next to the CSV: the first load parses the CSV
(about a second for the real file), later loads of the same file read the copy in a fraction of that.

Every lookup failure raises `BrokerRejectedError` with a message a trader can act on: the closest symbols for a
typo, the listed expiries or strikes for a contract that does not exist. Nothing is sent when that happens.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import difflib
import marshal
import os
import sys
from datetime import date
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import attrs

from tvbridge.broker import BrokerRejectedError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

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
CACHE_FORMAT: Final = 1
"""Bumped when the index layout changes, so an old cache is ignored."""


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


def _expiry(text: str) -> str:
    text = text.strip()
    if len(text) < 10 or not text[0].isdigit():
        return ""
    return date.fromisoformat(text[:10]).isoformat()


def _strike(text: str) -> str:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return ""
    return str(normalize_strike(value)) if value > 0 else ""


def _lot(text: str) -> int:
    return max(int(float(text or "1")), 1)


def normalize_strike(value: Decimal) -> Decimal:
    """One key per strike: 24000, 24000.0 and 24000.00000 are the same (and print as 24000, not 2.4E+4)."""
    value = value.normalize()
    return value.quantize(Decimal(1)) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]  # int here


Row = tuple[str, str, str, str, str, str, int, str, str, str]
"""exchange, segment, security id, instrument name, trading symbol, underlying, lot size, expiry (ISO or ""),
strike (normalized text or ""), option type (or ""). Plain tuples: 200k attrs instances would cost seconds."""

_T = TypeVar("_T")


def _checked(parse: Callable[[str], _T], text: str, source: str, line: int) -> _T:
    try:
        return parse(text)
    except ValueError as e:
        raise MasterFormatError(f"{source} line {line}: {e}") from None


def _contract(row: Row) -> Contract:
    exchange, segment, security_id, name, symbol, underlying, lot, expiry, strike, option_type = row
    return Contract(
        exchange=exchange,
        segment=segment,
        security_id=security_id,
        instrument_name=name,
        trading_symbol=symbol,
        underlying=underlying,
        lot_size=lot,
        expiry=date.fromisoformat(expiry) if expiry else None,
        strike=Decimal(strike) if strike else None,
        option_type=option_type or None,
    )


def _parse_rows(rows: Iterator[list[str]], source: str) -> Iterator[Row]:
    try:
        header = next(rows)
    except StopIteration:
        raise MasterFormatError(f"{source} is empty") from None
    col = _header_index(header)
    i_exch, i_seg, i_id = col["SEM_EXM_EXCH_ID"], col["SEM_SEGMENT"], col["SEM_SMST_SECURITY_ID"]
    i_name, i_sym, i_lot = col["SEM_INSTRUMENT_NAME"], col["SEM_TRADING_SYMBOL"], col["SEM_LOT_UNITS"]
    i_exp, i_strike, i_opt = col["SEM_EXPIRY_DATE"], col["SEM_STRIKE_PRICE"], col["SEM_OPTION_TYPE"]
    width = max(col.values()) + 1
    # a few hundred distinct expiries, strikes and lot sizes repeat over 200k rows: parse each text once
    expiries: dict[str, str] = {}
    strikes: dict[str, str] = {}
    lots: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if len(row) < width:
            continue  # a short trailing line; the real master ends with one
        name = row[i_name].strip()
        expiry = strike = option_type = ""
        if name in OPTION_NAMES or name in FUTURE_NAMES:
            text = row[i_exp]
            expiry = (
                expiries[text] if text in expiries else expiries.setdefault(text, _checked(_expiry, text, source, line))
            )
            if not expiry:
                continue  # a derivative without an expiry cannot be traded by date
            if name in OPTION_NAMES:
                text = row[i_strike]
                strike = strikes[text] if text in strikes else strikes.setdefault(text, _strike(text))
                option_type = row[i_opt].strip().upper()
                if not strike or option_type not in {"CE", "PE"}:
                    continue
        elif name not in EQUITY_NAMES:
            continue
        text = row[i_lot]
        lot = lots[text] if text in lots else lots.setdefault(text, _checked(_lot, text, source, line))
        symbol = row[i_sym].strip()
        yield (
            row[i_exch].strip().upper(),
            row[i_seg].strip().upper(),
            row[i_id].strip(),
            name,
            symbol,
            (symbol.split("-", 1)[0] if expiry else symbol).upper(),
            lot,
            expiry,
            strike,
            option_type,
        )


Index = tuple[
    dict[tuple[str, str], Row],
    dict[tuple[str, str], list[Row]],
    dict[tuple[str, str, str, str, str], Row],
    int,
]


def build_index(rows: Iterable[Row]) -> Index:
    equities: dict[tuple[str, str], Row] = {}
    futures: dict[tuple[str, str], list[Row]] = {}
    options: dict[tuple[str, str, str, str, str], Row] = {}
    count = 0
    for row in rows:
        count += 1
        exchange, _, _, _, _, underlying, _, expiry, strike, option_type = row
        if not expiry:
            # NSE lists a symbol once per series (EQ, BE, ...): the first row wins, the master lists EQ first
            equities.setdefault((exchange, underlying), row)
        elif not strike:
            futures.setdefault((exchange, underlying), []).append(row)
        else:
            options.setdefault((exchange, underlying, expiry, strike, option_type), row)
    for listed in futures.values():
        listed.sort(key=lambda row: (row[7], row[3]))
    return equities, futures, options, count


class InstrumentMaster:
    """The indexed master. Build it with `load_master(path)` (blocking: run it off the event loop)."""

    def __init__(self, index: Index, *, source: str) -> None:
        self.source = source
        self._equities, self._futures, self._options, self._count = index
        self._by_id: dict[tuple[str, str], Row] | None = None
        self._strikes: dict[tuple[str, str, str, str], list[Decimal]] | None = None
        self._option_expiries: dict[tuple[str, str], set[str]] = {}
        for exchange, underlying, expiry, _, _ in self._options:
            self._option_expiries.setdefault((exchange, underlying), set()).add(expiry)

    def __len__(self) -> int:
        return self._count

    def derivatives_from(self, day: date) -> int:
        """How many futures and options are listed with an expiry on or after `day` (a fresh master lists
        the current contracts; a stale or cut-down one does not)."""
        first = day.isoformat()
        futures = sum(1 for listed in self._futures.values() for row in listed if row[7] >= first)
        return futures + sum(1 for key in self._options if key[2] >= first)

    def __repr__(self) -> str:
        return f"<InstrumentMaster {self._count} rows from {self.source}>"

    def equity(self, exchange: str, symbol: str) -> Contract:
        found = self._equities.get((exchange, symbol))
        if found is None:
            names = [s for (e, s) in self._equities if e == exchange]
            raise BrokerRejectedError(_unknown(symbol, f"{exchange} equity", names))
        return _contract(found)

    def future(self, exchange: str, underlying: str, *, today: date, expiry: date | None, nth: int = 1) -> Contract:
        """The future expiring on `expiry`, or else the `nth` (1 = nearest) not yet expired on `today`."""
        listed = self._futures.get((exchange, underlying), [])
        if not listed:
            names = {u for (e, u) in self._futures if e == exchange}
            raise BrokerRejectedError(_unknown(underlying, f"{exchange} futures underlying", names))
        if expiry is not None:
            wanted = expiry.isoformat()
            for row in listed:
                if row[7] == wanted:
                    return _contract(row)
            raise BrokerRejectedError(
                f"expiry_date {wanted}: no {underlying} future expires that day "
                f"(listed: {_dates(r[7] for r in listed)})"
            )
        first = today.isoformat()
        live = [row for row in listed if row[7] >= first]
        if len(live) < nth:
            raise BrokerRejectedError(
                f"symbol {underlying}: no unexpired future number {nth} on {first} "
                f"(listed: {_dates(r[7] for r in listed)}); refresh the instrument master"
            )
        return _contract(live[nth - 1])

    def option(self, exchange: str, underlying: str, *, expiry: date, strike: Decimal, option_type: str) -> Contract:
        wanted = expiry.isoformat()
        found = self._options.get((exchange, underlying, wanted, str(normalize_strike(strike)), option_type))
        if found is not None:
            return _contract(found)
        expiries = self._option_expiries.get((exchange, underlying))
        if not expiries:
            names = {u for (e, u) in self._option_expiries if e == exchange}
            raise BrokerRejectedError(_unknown(underlying, f"{exchange} options underlying", names))
        if wanted not in expiries:
            raise BrokerRejectedError(
                f"expiry_date {wanted}: no {underlying} options expire that day (listed: {_dates(expiries)})"
            )
        strikes = sorted(
            {Decimal(k[3]) for k in self._options if k[:3] == (exchange, underlying, wanted) and k[4] == option_type}
        )
        near = _nearest(strikes, normalize_strike(strike))
        raise BrokerRejectedError(
            f"strike_price {strike}: no {underlying} {option_type} strike on {wanted} "
            f"(nearest listed: {', '.join(str(s) for s in near) or 'none'})"
        )

    def expiries(self, exchange: str, underlying: str, *, options: bool) -> list[date]:
        """Every listed expiry of `underlying`'s options (or futures), ascending, expired ones included; raises
        `BrokerRejectedError` with the closest names for an underlying the master does not list."""
        if options:
            found = self._option_expiries.get((exchange, underlying))
            if not found:
                names = {u for (e, u) in self._option_expiries if e == exchange}
                raise BrokerRejectedError(_unknown(underlying, f"{exchange} options underlying", names))
            return sorted(date.fromisoformat(text) for text in found)
        listed = self._futures.get((exchange, underlying))
        if not listed:
            names = {u for (e, u) in self._futures if e == exchange}
            raise BrokerRejectedError(_unknown(underlying, f"{exchange} futures underlying", names))
        return sorted({date.fromisoformat(row[7]) for row in listed})

    def strikes(self, exchange: str, underlying: str, *, expiry: date, option_type: str) -> list[Decimal]:
        """The strikes listed for one expiry and CE/PE, ascending (empty when none); the index is built on first
        use."""
        if self._strikes is None:
            grid: dict[tuple[str, str, str, str], list[Decimal]] = {}
            for exch, under, when, strike, kind in self._options:
                grid.setdefault((exch, under, when, kind), []).append(Decimal(strike))
            self._strikes = {key: sorted(values) for key, values in grid.items()}
        return list(self._strikes.get((exchange, underlying, expiry.isoformat(), option_type), []))

    def by_security_id(self, exchange: str, security_id: str) -> Contract | None:
        """The row Dhan means by `security_id` on `exchange` (NSE, BSE, MCX), or None: positions and orders that
        Dhan reports name their contract only this way. The reverse index is built on first use."""
        if self._by_id is None:
            rows = [*self._equities.values(), *(r for listed in self._futures.values() for r in listed)]
            rows += self._options.values()
            self._by_id = {(row[0], row[2]): row for row in rows}
        found = self._by_id.get((exchange, security_id))
        return None if found is None else _contract(found)


def _unknown(symbol: str, what: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(symbol, list(names), n=MAX_SUGGESTIONS, cutoff=0.6)
    hint = f"; closest matches: {', '.join(close)}" if close else ""
    return f"symbol {symbol} is not a known {what} in the instrument master{hint}"


def _dates(values: Iterable[str]) -> str:
    return ", ".join(sorted(set(values))) or "none"


def _nearest(strikes: list[Decimal], strike: Decimal) -> list[Decimal]:
    at = bisect.bisect_left(strikes, strike)
    return strikes[max(at - 2, 0) : at + 2]


def _cache_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.index")


def _cache_key(path: Path) -> tuple[int | str, ...]:
    stat = path.stat()
    return (
        CACHE_FORMAT,
        sys.version_info.major,
        sys.version_info.minor,
        str(path.resolve()),
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
    )


def _read_cache(path: Path, key: tuple[int | str, ...]) -> Index | None:
    try:
        # marshal holds only str/int/tuple/dict/list here and is read from our own data directory, written by us;
        # one read, because marshal.load(file) is several times slower
        stored_key, index = marshal.loads(_cache_path(path).read_bytes())  # noqa: S302
    except (OSError, EOFError, ValueError, TypeError):
        return None
    return index if stored_key == key else None


def _write_cache(path: Path, key: tuple[int | str, ...], index: Index) -> None:
    """Best effort (a read-only directory just means no cache); atomic, so a reader never sees half a file."""
    cache = _cache_path(path)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(marshal.dumps((key, index)))
        tmp.replace(cache)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def load_master(path: Path, *, cache: bool = True) -> InstrumentMaster:
    """Parse and index the master at `path`. Blocking: call it in a thread.

    With `cache`, the index is kept next to the file (`.<name>.index`, keyed by the file's size and mtime) so
    the next load of the same file skips the CSV parse. Raises `OSError` when the file cannot be read,
    `MasterFormatError` when it is not a Dhan master."""
    key = _cache_key(path)
    cache = cache and path.resolve() != sample_master_path().resolve()  # never write into the installed package
    index = _read_cache(path, key) if cache else None
    if index is None:
        with path.open(newline="", encoding="utf-8-sig") as f:
            index = build_index(_parse_rows(csv.reader(f), str(path)))
        if cache:
            _write_cache(path, key, index)
    return InstrumentMaster(index, source=str(path))
