"""The CSV order log (`webhook_orders.csv`): one row per leg per account, the guide's columns first.

The first twelve columns are the guide's, in its order, so existing spreadsheets and `column -t` habits keep
working; tvbridge's own columns follow. A field that a spreadsheet would run as a formula (starting with `=`,
`+`, `-`, `@`, tab or carriage return) is prefixed with `'`. The file is written through aiofiles (its thread,
never the event loop), one alert's rows together, so rows of concurrent alerts never interleave. Alerts that
finish while a write is under way are written together in the next one: under load one trip to aiofiles' thread
carries many alerts' rows, alone an alert's rows go at once. `append()` returns when its rows have reached the
operating system (`tail -f` sees them; they survive `kill -9`).
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import aiofiles

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from aiofiles.threadpool.text import AsyncTextIOWrapper
    from aiohttp import web

    from tvbridge.models import LegResult

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
COLUMNS: Final = (*GUIDE_COLUMNS, "alert_id", "leg_number", "account", "broker", "client_order_id")
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def neutralize(value: str) -> str:
    """A cell a spreadsheet shows as text, never runs (OWASP's CSV injection advice)."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


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
    }
    return [neutralize(values[column]) for column in COLUMNS]


class OrderLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: AsyncTextIOWrapper | None = None
        self._waiting: list[tuple[str, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = await aiofiles.open(self.path, mode="a", encoding="utf-8", newline="", buffering=1)
        if await self._file.tell() == 0:
            await self._write([list(COLUMNS)])

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.shield(self._writer)  # rows already handed in are written before the file closes
        if self._file is not None:
            await self._file.close()
            self._file = None

    async def append(self, results: Sequence[LegResult], *, alert_id: str, alert_type: str) -> None:
        """Write one row per result, flushed to the OS before returning."""
        if not results:
            return
        at = datetime.now(UTC)
        await self._write([row_of(r, alert_id=alert_id, alert_type=alert_type, at=at) for r in results])

    async def _write(self, rows: list[list[str]]) -> None:
        if self._file is None:
            raise RuntimeError("order log is closed")
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        written = asyncio.get_running_loop().create_future()
        self._waiting.append((buffer.getvalue(), written))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_waiting(), name="order-log-writer")
        await asyncio.shield(written)  # a caller that stops waiting does not take its rows back

    async def _write_waiting(self) -> None:
        """Write what has been handed in, in batches, until nothing waits; a failed write fails its batch."""
        try:
            while self._waiting and self._file is not None:
                batch, self._waiting = self._waiting, []
                try:
                    await self._file.write("".join(text for text, _ in batch))  # line-buffered: at the OS now
                except Exception as e:  # noqa: BLE001 - reported to every caller of the batch
                    for _, written in batch:
                        if not written.done():
                            written.set_exception(e)
                else:
                    for _, written in batch:
                        if not written.done():
                            written.set_result(None)
        finally:
            self._writer = None


async def order_log_ctx(app: web.Application) -> AsyncIterator[None]:
    from tvbridge.keys import CONFIG, ORDER_LOG  # noqa: PLC0415 - keys imports this module's types

    config = app[CONFIG]
    order_log = OrderLog(config.data_path(config.order_log.file))
    await order_log.open()
    app[ORDER_LOG] = order_log
    yield
    await order_log.close()
