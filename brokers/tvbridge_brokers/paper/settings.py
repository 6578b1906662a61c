"""The paper broker's settings: the account's `[accounts.NAME]` table, checked before anything starts.

Like the rest of tvbridge's config, an unknown key is an error (a typo such as `price` for `prices` must stop the
start, not silently leave every market order without a price), and every error names its key.

Keys::

    [accounts.paper]
    broker = "paper"
    db_path = "paper-paper.sqlite3"   # default: <data_dir>/paper-<account>.sqlite3; relative to data_dir
    instruments_path = "data/dhan-api-scrip-master.csv"  # optional: Dhan's instrument master, see master.py
    funds = 1000000                   # rupees `quantity_type = "percent_of_funds"` takes a percentage of
    [accounts.paper.prices]           # reference prices, per contract or EXCHANGE:contract (looked up first)
    RELIANCE = 2900.5
    "NSE:INFY" = "1500.25"
    "NIFTY FUT 2026-11-26" = 24100
    "NFO:NIFTY 2026-11-26 24000 CE" = 120.5

With the SQLite journal (the default) the book is in the journal's file (`broker.py`: it joins the journal, an
alert's order is committed with the alert); with `[journal] url` set (PostgreSQL) it is in that database, shared
by every instance. Either way `db_path` then names the SQLite book imported once at the first start (see
`importer.py`). A `synchronous` stronger than the journal's keeps the book in `db_path` (its own commits).

A reference price is what a market order with price 0 fills at, and what a new limit or stop order is checked
against on arrival (see `book.py` for the rules). Contract names are spelled as `book.contract_key()` builds them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import attrs

from tvbridge.broker import SharedDatabase

if TYPE_CHECKING:
    from tvbridge.broker import BrokerContext

KNOWN_KEYS: Final = ("db_path", "prices", "synchronous", "instruments_path", "funds")
DEFAULT_FUNDS: Final = Decimal(1_000_000)
IGNORED_KEYS: Final = frozenset({"broker"})
"""The entry point name; tvbridge strips it, but a table passed whole must not fail on it."""


@attrs.frozen(kw_only=True)
class PaperSettings:
    db_path: Path
    prices: Mapping[str, Decimal] = attrs.field(factory=lambda: MappingProxyType({}))
    """Reference price per contract (`RELIANCE`) or per `EXCHANGE:contract` (`NSE:RELIANCE`, looked up first)."""
    synchronous: str = "normal"
    """SQLite durability: "normal" survives a process crash, "full" also a power cut (one fsync per order)."""
    instruments_path: Path | None = None
    """Dhan's instrument master (the file a dhan account reads): paper then resolves symbols and lot sizes and
    refuses what Dhan would (`master.py`). None: any symbol and quantity is accepted."""
    funds: Decimal = DEFAULT_FUNDS
    """The available funds `quantity_type: percent_of_funds` sizes from (a fixed figure: paper keeps no margin)."""
    account: str = ""
    """The account's name (`[accounts.NAME]`): the key of its rows in a shared database."""
    database: SharedDatabase | None = attrs.field(default=None, repr=False)
    """tvbridge's PostgreSQL database (`[journal] url`): the book lives there, shared by every instance, and
    `db_path` is only the file imported once (`importer.py`); `synchronous` does not apply. None: the file."""
    sqlite_journal: Path | None = None
    """With `database`: the SQLite journal's file, where the book lives if it joined that journal before
    (`BrokerContext.sqlite_journal`): the start refuses then rather than start the account flat."""


def parse_settings(settings: Mapping[str, object], context: BrokerContext) -> PaperSettings:
    """Check the account's table; raise `ValueError` naming the first bad key."""
    for key in settings:
        if key not in KNOWN_KEYS and key not in IGNORED_KEYS:
            msg = f"unknown key {key!r} for the paper broker (known keys: {', '.join(KNOWN_KEYS)})"
            raise ValueError(msg)
    db_path = _parse_db_path(settings.get("db_path"), context)
    prices = _parse_prices(settings.get("prices"))
    synchronous = settings.get("synchronous", "normal")
    if synchronous not in {"normal", "full"}:
        msg = f'synchronous: must be "normal" or "full", got {synchronous!r}'
        raise ValueError(msg)
    instruments = settings.get("instruments_path")
    if instruments is not None and (not isinstance(instruments, str | os.PathLike) or not os.fspath(instruments)):
        msg = f"instruments_path: expected a file path, got {instruments!r}"
        raise ValueError(msg)
    funds = DEFAULT_FUNDS if settings.get("funds") is None else _parse_price("funds", settings.get("funds"))
    return PaperSettings(
        funds=funds,
        db_path=db_path,
        prices=prices,
        synchronous=str(synchronous),
        # as a dhan account reads it (not relative to data_dir), so both can name the same file the same way
        instruments_path=Path(instruments).expanduser() if instruments is not None else None,
        account=context.account,
        database=context.database,
        sqlite_journal=context.sqlite_journal,
    )


def _parse_db_path(value: object, context: BrokerContext) -> Path:
    if value is None:
        return context.data_dir / f"paper-{context.account}.sqlite3"
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        msg = f"db_path: expected a file path, got {value!r}"
        raise ValueError(msg)
    path = Path(value).expanduser()
    # relative to the data directory, the one place the plugin is told to keep files (not the process's cwd)
    return path if path.is_absolute() else context.data_dir / path


def _parse_prices(value: object) -> Mapping[str, Decimal]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        msg = f"prices: expected a table of contract = price, got {value!r}"
        raise ValueError(msg)
    prices: dict[str, Decimal] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not key.strip():
            msg = f"prices: {key!r} is not a contract name"
            raise ValueError(msg)
        prices[key.strip()] = _parse_price(f"prices.{key}", raw)
    return MappingProxyType(prices)


def _parse_price(name: str, raw: object) -> Decimal:
    bad = f"{name}: {raw!r} is not a price (a positive number, e.g. 2900.5)"
    if isinstance(raw, bool) or not isinstance(raw, str | int | float | Decimal):
        raise ValueError(bad)
    if isinstance(raw, float) and not math.isfinite(raw):
        raise ValueError(bad)
    try:
        # str() first: a TOML float 2900.1 must become Decimal("2900.1"), not its binary expansion
        price = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ValueError(bad) from None
    if not price.is_finite() or price <= 0:
        raise ValueError(bad)
    return price
