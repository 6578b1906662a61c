"""Moving to PostgreSQL keeps the trader's paper book: the account's SQLite file is imported once.

When an operator sets `[journal] url`, the paper account's book moves from its SQLite file (`db_path`) to the
shared database. At the first start on PostgreSQL, if the database holds nothing for the account and the file
exists, every row of the file (orders with their ids, positions, brackets, the old `noops`) is copied in one
transaction, under the account's lock, and the file is renamed `<db_path>.imported` so it is never imported
again nor mistaken for the live book. Two instances starting together import once: the second finds the rows.

If the database already holds the account's book and a file is still there (a second instance's own SQLite
book, or a file put back), it is left alone and `paper.sqlite_book_ignored` is logged at every start with its
path and what to do: the database's book is the account, the file is not merged.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Final

import attrs

from tvbridge.broker import BrokerUnavailableError

if TYPE_CHECKING:
    from pathlib import Path

    from .tables import PostgresTables

IMPORTED_SUFFIX: Final = ".imported"
COLUMNS: Final = {
    "orders": (
        "id",
        "client_order_id",
        "alert_id",
        "leg_number",
        "exchange",
        "symbol",
        "contract",
        "instrument",
        "option_type",
        "strike_price",
        "expiry_date",
        "product",
        "side",
        "order_type",
        "quantity",
        "price",
        "trigger_price",
        "state",
        "filled_quantity",
        "average_price",
        "message",
        "created_at",
        "updated_at",
    ),
    "noops": ("client_order_id", "alert_id", "leg_number", "message", "created_at"),
    "positions": (
        "exchange",
        "contract",
        "product",
        "symbol",
        "instrument",
        "option_type",
        "strike_price",
        "expiry_date",
        "net_quantity",
        "average_price",
        "realized_pnl",
        "updated_at",
    ),
    "brackets": ("entry_id", "target_id", "stop_id", "trailing_jump", "anchor"),
}
"""What is copied, table by table, in this order (a bracket refers to its entry order)."""


@attrs.frozen
class Outcome:
    """What `import_sqlite_book` did: `copied` rows per table (empty when nothing was imported); `ignored`, the
    file left alone because the database already holds the account's book."""

    copied: dict[str, int]
    ignored: bool = False


def import_sqlite_book(tables: PostgresTables, path: Path) -> Outcome:
    """Import the SQLite book at `path` into `tables`' account if the database holds none for it (see above).
    `BrokerUnavailableError` when the file cannot be read or the database refuses the rows: the start stops
    rather than begin the account empty while its positions sit in a file."""
    if not path.exists():
        return Outcome(copied={})
    rows = _read(path)
    if not any(rows.values()):
        return Outcome(copied={})
    with tables.write():
        holds = tables.fetchone(
            "SELECT 1 FROM {orders} WHERE 1 = 1{and_account} UNION ALL"
            " SELECT 1 FROM {positions} WHERE 1 = 1{and_account} LIMIT 1"
        )
        if holds is not None:
            return Outcome(copied={}, ignored=True)
        for table, found in rows.items():
            tables.copy_rows(table, COLUMNS[table], found)
    try:
        path.rename(path.with_name(path.name + IMPORTED_SUFFIX))
    except OSError as e:
        raise BrokerUnavailableError(
            f"paper book {path} was imported into PostgreSQL but cannot be renamed ({e}): rename it by hand"
        ) from e
    return Outcome(copied={table: len(found) for table, found in rows.items()})


def _read(path: Path) -> dict[str, list[tuple[object, ...]]]:
    try:
        db = sqlite3.connect(path, timeout=1.0)
    except sqlite3.Error as e:
        raise BrokerUnavailableError(f"paper database {path} cannot be opened for the import: {e}") from e
    try:
        present = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {
            table: (
                db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()  # noqa: S608 - constant names
                if table in present
                else []
            )
            for table, columns in COLUMNS.items()
        }
    except sqlite3.Error as e:
        raise BrokerUnavailableError(f"paper database {path} cannot be read for the import: {e}") from e
    finally:
        db.close()  # the last connection: SQLite folds the WAL into the file before it is renamed
