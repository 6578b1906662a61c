"""Moving to PostgreSQL keeps the trader's paper book: the account's SQLite file is imported once.

When an operator sets `[journal] url`, the paper account's book moves from its SQLite file (`db_path`) to the
shared database. At the first start on PostgreSQL, if the database holds nothing for the account and the file
exists, every row of the file (orders with their ids, positions, brackets, the old `noops`) is copied in one
transaction, under the account's lock, and the file is renamed `<db_path>.imported` so it is never imported
again nor mistaken for the live book. Two instances starting together import once: the second finds the rows.

If the database already holds the account's book and a file is still there (a second instance's own SQLite
book, or a file put back), it is left alone and `paper.sqlite_book_ignored` is logged at every start with its
path and what to do: the database's book is the account, the file is not merged.

The file is held exclusively from the read to the rename: its journal is switched out of WAL first, which
SQLite allows only while no other connection has it open (so a tvbridge still serving the account on SQLite
makes the import refuse, saying to stop it, instead of losing the orders it writes meanwhile), and which
folds the WAL into the file and removes the -wal and -shm files; then `BEGIN EXCLUSIVE` keeps every other
reader and writer out until the rows are in PostgreSQL and the file is renamed.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import shutil
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

import attrs

from tvbridge.broker import BrokerUnavailableError
from tvbridge.filemode import PRIVATE

from .tables import JournalTables

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tvbridge.broker import JournalDatabase

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
    renamed_to: Path | None = None
    """Where the imported file was set aside (`set_aside`)."""


def set_aside(path: Path) -> Path:
    """Rename an imported book to `<path>.imported`, or `.imported.2`, `.3`... when that name is taken (an earlier
    import's file, kept: it may be the only copy of an older book). Never overwrites (`_claim`), then the original
    name is removed. Returns the new name; `OSError` if it cannot."""
    for n in itertools.count(1):
        target = path.with_name(path.name + IMPORTED_SUFFIX + ("" if n == 1 else f".{n}"))
        try:
            source = _claim(path, target)
        except FileExistsError:
            continue
        try:
            path.unlink()
        finally:
            if source is not None:
                source.close()
        return target
    raise AssertionError  # pragma: no cover - itertools.count never ends


NO_HARD_LINKS: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS})
"""What `link()` answers on a file system without hard links (FAT, exFAT, some network and FUSE mounts), or
where the kernel refuses them (`fs.protected_hardlinks`)."""


def _claim(path: Path, target: Path) -> BinaryIO | None:
    """`target` becomes the same book as `path`, never over an existing name (`FileExistsError` then): a hard link
    (`os.rename` would overwrite), or, where the file system has none, a copy into `target` created exclusively
    (`O_EXCL`), synced before the caller removes `path`. A failed copy leaves no partial `target` behind; a crash
    during it leaves `path` whole (the next start finds the book imported and leaves the file alone).

    After a copy it returns the source, still open, for the caller to close only after it removed `path`: closing
    any descriptor of a file drops every POSIX lock the process holds on it, the import's `BEGIN EXCLUSIVE`
    (`_held`) included, and another process could then write the book between the copy and the removal: rows in
    neither the copy nor the database."""
    try:
        os.link(path, target)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in NO_HARD_LINKS:
            raise
    else:
        return None
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE)
    source = path.open("rb")
    try:
        with os.fdopen(fd, "wb") as copy:
            shutil.copyfileobj(source, copy)
            copy.flush()
            os.fsync(copy.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        source.close()
        raise
    return source


def import_sqlite_book(tables: PostgresTables, path: Path) -> Outcome:
    """Import the SQLite book at `path` into `tables`' account if the database holds none for it (see above).
    `BrokerUnavailableError` when the file cannot be read or the database refuses the rows: the start stops
    rather than begin the account empty while its positions sit in a file."""
    if not path.exists():
        return Outcome(copied={})
    if _holds_book(tables):  # the file is not touched at all: it may be another setup's live book
        return Outcome(copied={}, ignored=True)
    with _held(path) as db:
        rows = _read(db, path)
        if not any(rows.values()):
            return Outcome(copied={})
        with tables.write():
            if _holds_book(tables):  # another instance imported first, under the account's lock
                return Outcome(copied={}, ignored=True)
            for table, found in rows.items():
                tables.copy_rows(table, COLUMNS[table], found)
        try:
            renamed = set_aside(path)
        except OSError as e:
            raise BrokerUnavailableError(
                f"paper book {path} was imported into PostgreSQL but cannot be renamed ({e}): rename it by hand"
            ) from e
    return Outcome(copied={table: len(found) for table, found in rows.items()}, renamed_to=renamed)


async def import_into_journal(journal: JournalDatabase, account: str, path: Path) -> Outcome:
    """The same import into the SQLite journal's file (the book joined the journal, issue 22): the rows copied in
    one journal commit, then the file renamed. The file stays held from the read to the rename, as above."""
    if not await asyncio.to_thread(path.exists):
        return Outcome(copied={})
    if await journal.read(lambda conn: _holds_book(JournalTables(conn, account))):
        return Outcome(copied={}, ignored=True)
    with _held(path) as db:
        rows = _read(db, path)
        if not any(rows.values()):
            return Outcome(copied={})

        def copy(conn: sqlite3.Connection) -> None:
            tables = JournalTables(conn, account)
            with tables.write():
                for table, found in rows.items():
                    tables.copy_rows(table, COLUMNS[table], found)

        try:
            await journal.write(copy)
        except sqlite3.Error as e:
            raise BrokerUnavailableError(f"paper book {path} cannot be imported into the journal: {e}") from e
        try:
            renamed = await asyncio.to_thread(set_aside, path)
        except OSError as e:
            raise BrokerUnavailableError(
                f"paper book {path} was imported into the journal but cannot be renamed ({e}): rename it by hand"
            ) from e
    return Outcome(copied={table: len(found) for table, found in rows.items()}, renamed_to=renamed)


def _holds_book(tables: PostgresTables | JournalTables) -> bool:
    with tables.reading():
        holds = tables.fetchone(
            "SELECT 1 FROM {orders} WHERE 1 = 1{and_account} UNION ALL"
            " SELECT 1 FROM {positions} WHERE 1 = 1{and_account} LIMIT 1"
        )
    return holds is not None


@contextmanager
def _held(path: Path) -> Iterator[sqlite3.Connection]:
    """The file opened by this connection alone, no other reader or writer let in until the block ends."""
    try:
        db = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    except sqlite3.Error as e:
        raise BrokerUnavailableError(f"paper database {path} cannot be opened for the import: {e}") from e
    try:
        try:
            db.execute("PRAGMA journal_mode=DELETE")  # refused while any other connection has the file open
            db.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as e:
            raise BrokerUnavailableError(
                f"paper database {path} is in use by another process ({e}): stop the tvbridge serving it on SQLite,"
                " then start this one with [journal] url to import it; nothing was imported"
            ) from e
        yield db
    finally:
        db.close()  # ends the read-only transaction: the file is released, renamed or not


def _read(db: sqlite3.Connection, path: Path) -> dict[str, list[tuple[object, ...]]]:
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
