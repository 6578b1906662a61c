"""Webhook requests refused before anything ran (400, 403, 413, 422, 429, 503), kept so a trader can see why.

TradingView only says "webhook delivered"; a typo in the Pine message (`quantity: must be a whole number, got
'ten'`) is exactly what the trader opens the status page to find. Accepted alerts (and stale ones) are in the
journal's `alerts` table already; everything the error middleware refused on a webhook route lands here, in the
journal's file, with the reason in the words the caller was answered with.

401s are only counted (in memory, per trading day): an unauthenticated caller is not the trader, and a scan must
not fill the journal. The table is bounded: rows older than `KEEP_DAYS` and all but the newest `MAX_ROWS` are
pruned in the same transaction as each insert, and at most `MAX_WRITES_PER_S` refusals a second are written (the
rest are counted), so a flood of refused requests costs neither disk nor the journal's writer.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import structlog

from tvbridge.keys import ALERT_ID, JOURNAL, RAW_ALERT, REFUSAL_JOURNAL, SOURCE_IP

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import AsyncIterator, Sequence

    from aiohttp import web

    from tvbridge.store import Store

log = structlog.get_logger()

MAX_ROWS: Final = 2000
KEEP_DAYS: Final = 7
MAX_WRITES_PER_S: Final = 20
MAX_PAYLOAD_CHARS: Final = 8000

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS refusals (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id     TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    http_status  INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    message      TEXT NOT NULL,
    errors       TEXT,
    alert_type   TEXT,
    source       TEXT,
    payload      TEXT
);
CREATE INDEX IF NOT EXISTS refusals_alert ON refusals (alert_id);
CREATE INDEX IF NOT EXISTS refusals_received ON refusals (received_at)
"""


def plain_reason(message: str, errors: Sequence[str] = ()) -> str:
    """What went wrong, in the words the caller was answered with: a 422's field errors, else the message."""
    return "; ".join(errors) if errors else message


def _create(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


class RefusalJournal:
    """Writes refused webhook requests to the journal (bounded) and counts the 401s."""

    def __init__(self, journal: Store, *, clock: Any = time.monotonic) -> None:
        self._journal = journal
        self._clock = clock
        self._second = -1
        self._written_this_second = 0
        self.unauthenticated = 0
        """401s answered since the server started (counted, never journaled)."""
        self.not_journaled = 0
        """Refusals over `MAX_WRITES_PER_S` that were counted but not written."""

    async def record(
        self, request: web.Request, *, status: int, reason: str, message: str, errors: Sequence[str] = ()
    ) -> None:
        """Journal one refusal (401: count only). Never raises: the refusal's answer must not become a 500."""
        if status == 401:
            self.unauthenticated += 1
            return
        second = int(self._clock())
        if second != self._second:
            self._second, self._written_this_second = second, 0
        if self._written_this_second >= MAX_WRITES_PER_S:
            self.not_journaled += 1
            return
        self._written_this_second += 1
        raw = request.get(RAW_ALERT)
        payload = None
        alert_type = None
        if isinstance(raw, dict):
            payload = json.dumps({k: v for k, v in raw.items() if k != "secret"}, default=str)[:MAX_PAYLOAD_CHARS]
            alert_type = str(raw.get("alertType", ""))[:64] or None
        now = datetime.now(UTC)
        row = (
            request.get(ALERT_ID) or "",
            now.isoformat(),
            status,
            reason,
            message,
            json.dumps(list(errors)) if errors else None,
            alert_type,
            request.get(SOURCE_IP),
            payload,
        )
        oldest = (now - timedelta(days=KEEP_DAYS)).isoformat()
        statements: list[tuple[str, Sequence[object]]] = [
            (
                (
                    "INSERT INTO refusals (alert_id, received_at, http_status, reason, message, errors, alert_type,"
                    " source, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                row,
            ),
            ("DELETE FROM refusals WHERE received_at < ?", (oldest,)),
            ("DELETE FROM refusals WHERE id <= (SELECT max(id) FROM refusals) - ?", (MAX_ROWS,)),
        ]
        try:
            await self._journal.run(statements)
        except Exception:  # noqa: BLE001 - the refusal is answered and logged either way
            log.warning("refusal.not_journaled", status=status)


async def today_refusals(store: Store, since: str, limit: int) -> list[dict[str, Any]]:
    """Refusals received at or after `since` (ISO UTC), newest first, in the status page's alert shape."""
    rows = await store.fetch(
        "SELECT alert_id, received_at, http_status, reason, message, errors, alert_type FROM refusals"
        " WHERE received_at >= ? ORDER BY received_at DESC LIMIT ?",
        since,
        limit,
    )
    return [
        {
            "alert_id": row["alert_id"],
            "received_at": row["received_at"],
            "alert_type": row["alert_type"] or "",
            "status": "refused",
            "http_status": row["http_status"],
            "reason": plain_reason(row["message"], json.loads(row["errors"]) if row["errors"] else ()),
            "legs": [],
        }
        for row in rows
    ]


async def refusals_version(store: Store, since: str) -> str:
    [row] = await store.fetch("SELECT count(*), max(id) FROM refusals WHERE received_at >= ?", since)
    return f"{row[0]}:{row[1]}"


async def get_refusal(store: Store, alert_id: str) -> dict[str, Any] | None:
    """The refusal of `alert_id` as `GET /alerts/<id>` shows it, or None."""
    rows = await store.fetch("SELECT * FROM refusals WHERE alert_id = ? ORDER BY id DESC LIMIT 1", alert_id)
    if not rows:
        return None
    row = rows[0]
    errors = json.loads(row["errors"]) if row["errors"] else []
    return {
        "alert_id": row["alert_id"],
        "received_at": row["received_at"],
        "alert_type": row["alert_type"],
        "status": "refused",
        "http_status": row["http_status"],
        "reason": plain_reason(row["message"], errors),
        "message": row["message"],
        "errors": errors,
        "payload": json.loads(row["payload"]) if row["payload"] else None,
        "legs": [],
    }


async def refusal_journal_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the table in the journal's file, and the log the error middleware writes to."""
    journal = app[JOURNAL]
    await journal.ensure_tables(_create)
    app[REFUSAL_JOURNAL] = RefusalJournal(journal)
    yield
