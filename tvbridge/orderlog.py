"""The CSV order log (`webhook_orders.csv`): one row per leg per account, the guide's columns first.

The first twelve columns are the guide's, in its order, so existing spreadsheets and `column -t` habits keep
working; tvbridge's own columns follow. A field that a spreadsheet would run as a formula (starting with `=`,
`+`, `-`, `@`, tab or carriage return) is prefixed with `'`, and control characters (line breaks, ESC, NUL...)
are written as visible escapes (`\\n`, `\\x1b`), so `grep`, `wc -l` and a terminal see one row per line and no
escape sequences from an alert's text (issue 23). One alert's rows are one write(2) on a file opened
for appending, so rows of concurrent alerts never interleave, and `append()` returns when they have reached the
operating system (`tail -f` sees them; they survive `kill -9`).

The write happens on the event loop, like the journal's commits with `synchronous = normal`: handing a few
hundred bytes to the page cache takes microseconds, while a trip to a worker thread (aiofiles) and back cost
32-182 µs of CPU per alert and a wake-up of the loop (`bench/orderlog_cost.py`, `bench/README.md`).
"""

from __future__ import annotations

import csv
import io
import os
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import structlog

from tvbridge.brackets import describe
from tvbridge.fileid import FileIdentity
from tvbridge.filemode import PRIVATE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from aiohttp import web

    from tvbridge.models import LegResult

log = structlog.get_logger()

GUIDE_COLUMNS: Final = (
    "timestamp",
    "alert_type",
    "symbol",
    "exchange",
    "transaction",
    "quantity",
    "order_type",
    "product_type",
    "price",
    "status",
    "order_id",
    "message",
)
COLUMNS: Final = (
    *GUIDE_COLUMNS,
    "alert_id",
    "leg_number",
    "account",
    "broker",
    "client_order_id",
    "bracket",
    "strategy",
)
"""New columns go at the end, so readers that index the older ones keep working."""
HEADER_LINE: Final = ",".join(COLUMNS).encode()
"""The first line of the file as this version writes it."""
WHOLE_ROW_LENGTHS: Final = frozenset({len(COLUMNS), COLUMNS.index("strategy"), COLUMNS.index("bracket")})
"""A whole row has every column, or stops before `strategy` or `bracket` (written by a version from before
strategies or brackets)."""
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0 and C1 controls and DEL, and the Unicode line and paragraph separators: what ends a line for a line-based
tool (Python's `splitlines()` included) or starts a terminal escape sequence."""
_SHORT_ESCAPES: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def neutralize(value: str) -> str:
    """A cell a spreadsheet shows as text, never runs (OWASP's CSV injection advice), on one line, without
    control characters: `\\x1b[2J` in a symbol must not clear the terminal of someone running `tail -f`."""
    if value.startswith(FORMULA_STARTS):
        value = f"'{value}"
    if not value.isprintable():  # the common cell is printable: one C-level scan, no regex
        value = CONTROL.sub(_escape, value)
    return value


def row_of(result: LegResult, *, alert_id: str, alert_type: str, at: datetime) -> list[str]:
    values = {
        "timestamp": at.isoformat(),
        "alert_type": alert_type,
        "symbol": result.symbol,
        "exchange": result.exchange,
        "transaction": result.transaction,
        "quantity": result.quantity,
        "order_type": result.order_type,
        "product_type": result.product_type,
        "price": result.price,
        "status": result.status.value,
        "order_id": result.order_id or "",
        "message": result.message,
        "alert_id": alert_id,
        "leg_number": str(result.leg_number),
        "account": result.account,
        "broker": result.broker,
        "client_order_id": result.client_order_id or "",
        "bracket": describe(result.bracket),
        "strategy": result.strategy,
    }
    return [neutralize(values[column]) for column in COLUMNS]


class OrderLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._torn = False
        """A failed write left part of a row that could not be taken back: the next rows start on a new line."""
        self._identity: FileIdentity | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._set_aside_old_header()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE)
        try:
            self._fd = fd
            self._identity = FileIdentity.of(self.path, fd)
            size = os.fstat(fd).st_size
            if size == 0:
                self._write([list(COLUMNS)])
            else:
                self._torn = self._ends_mid_line(size)
        except BaseException:
            self._fd = None
            os.close(fd)
            raise

    def _set_aside_old_header(self) -> None:
        """A file whose first line is not today's header (written by a version with fewer columns: before
        brackets or strategies) is renamed to `<name>.old-header-<UTC time>.csv`, kept whole, and a new file
        with the current header is started: a csv.DictReader or pandas reads a file by its first line, so new
        rows under an old header would lose their new columns (or fail to parse)."""
        if not self.path.is_file():  # none yet, or not a regular file (a device, a pipe): nothing to keep
            return
        with self.path.open("rb") as f:
            first = f.readline(64 * 1024)
        if not first or first.rstrip(b"\r\n") == HEADER_LINE:
            return
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.stem}.old-header-{stamp}{self.path.suffix}")
        n = 1
        while aside.exists():  # two upgrades within a second: never overwrite a kept file
            aside = self.path.with_name(f"{self.path.stem}.old-header-{stamp}-{n}{self.path.suffix}")
            n += 1
        os.rename(self.path, aside)  # noqa: PTH104 - same directory, atomic
        log.warning(
            "order_log.rotated",
            path=str(self.path),
            kept_as=str(aside),
            reason="its header is not the current columns (an older version wrote it); a new file was started",
        )

    def _ends_mid_line(self, size: int) -> bool:
        """The file's last byte is not a line break (a row or the header cut short by a power loss or a hand
        edit): the next rows start on a new line instead of being glued to it, where no reader would see them."""
        with self.path.open("rb") as f:
            f.seek(size - 1)
            return f.read() != b"\n"  # the last byte (this process is the file's only writer)

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def size(self) -> int:
        """The file's length now: the rows of an alert accepted now can only start at or after it."""
        return os.fstat(self._fd).st_size if self._fd is not None else 0

    def problem(self) -> str:
        """Empty while the path still names the file being written; else why rows would be lost."""
        if self._identity is None:
            return "order log is not open"
        return self._identity.problem()

    def logged_since(self, offset: int) -> set[tuple[str, str, str]]:
        """(alert id, account, leg number) of the rows written at or after `offset` that record a leg's
        outcome (not a `queued` placeholder), as their cells read: crash recovery does not write them again.
        The whole file when it is shorter than `offset` (replaced since)."""
        done: set[tuple[str, str, str]] = set()
        try:
            with self.path.open("rb") as raw:
                raw.seek(offset if offset <= os.fstat(raw.fileno()).st_size else 0)
                text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
                index = {column: n for n, column in enumerate(COLUMNS)}
                for row in csv.reader(text):
                    if len(row) not in WHOLE_ROW_LENGTHS or row[index["status"]] == "queued":
                        continue  # the header, a torn row, or a placeholder for a queued leg
                    done.add((row[index["alert_id"]], row[index["account"]], row[index["leg_number"]]))
        except FileNotFoundError:
            return done
        return done

    async def append(self, results: Sequence[LegResult], *, alert_id: str, alert_type: str) -> None:
        """Write one row per result, at the OS before returning; `OSError` (a full disk) if they are not, and
        then none of them is in the file."""
        if not results:
            return
        at = datetime.now(UTC)
        self._write([row_of(r, alert_id=alert_id, alert_type=alert_type, at=at) for r in results])

    def _write(self, rows: list[list[str]]) -> None:
        fd = self._fd
        if fd is None:
            raise RuntimeError("order log is closed")
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        data = ("\n" if self._torn else "").encode() + buffer.getvalue().encode("utf-8")
        done = 0
        try:
            while done < len(data):  # a short write (a signal, a nearly full disk): the rest follows
                done += os.write(fd, data[done:])
        except OSError:
            if done:
                self._take_back(fd, done)
            raise
        self._torn = False

    def _take_back(self, fd: int, written: int) -> None:
        """Remove what a failed write got into the file: a half row would swallow the next alert's row."""
        try:
            os.ftruncate(fd, os.fstat(fd).st_size - written)  # one process, one thread writes this file
        except OSError:
            self._torn = True


async def order_log_ctx(app: web.Application) -> AsyncIterator[None]:
    from tvbridge.keys import CONFIG, ORDER_LOG  # noqa: PLC0415 - keys imports this module's types

    config = app[CONFIG]
    order_log = OrderLog(config.data_path(config.order_log.file))
    await order_log.open()
    app[ORDER_LOG] = order_log
    yield
    await order_log.close()
