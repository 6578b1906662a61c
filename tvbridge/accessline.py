"""One info line per webhook alert: `alert.done` carries the access line's facts, `http.request` drops to debug.

The lead's decision on issue 22: a webhook request that logged `alert.done` writes no second info line. The
executor finishes an alert before the request is answered (or, past `server.response_deadline_s`, after its
202), so it does not know the HTTP status. `request_id` gives each webhook request an `Access`; the executor
hands `alert.done` to it (`done`) instead of writing it, and `request_id` writes it once the answer is known,
with the HTTP status, the request's duration, the source, method and path, and writes `http.request` at debug.
When the request was already answered (202 past the deadline) or is gone, `alert.done` is written at once and
the access line (written at info when the request was answered without it) keeps the HTTP facts. No alert's
`alert.done` is ever dropped: a request cancelled before its answer writes what it was handed (`flush`).

The same rule for an alert queued at a closed market (202): its `alert.queued` line (one per queued account) is
handed over the same way (`queued`) and carries the access line's facts; `http.request` goes at debug.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import structlog

log = structlog.get_logger()


@attrs.define(slots=True)
class Access:
    """The webhook request's access facts, and the `alert.done` lines handed over until it is answered."""

    alert_id: str
    method: str
    path: str
    source: str
    arrived: float
    """`time.perf_counter()` at the request's arrival."""
    answered: bool = False
    pending: list[dict[str, Any]] = attrs.field(factory=list)
    pending_queued: list[dict[str, Any]] = attrs.field(factory=list)
    """`alert.queued` lines handed over (`queued`), written with the answer."""

    def done(self, fields: dict[str, Any]) -> None:
        """`alert.done` for this request's alert: kept for the answer's line, or written now if it is too late
        (answered already) or for another alert (a task started by this request that outlives it)."""
        if self.answered or fields.get("alert_id") != self.alert_id:
            log.info("alert.done", **fields, source=self.source)
            return
        self.pending.append(fields)

    def queued(self, fields: dict[str, Any]) -> None:
        """`alert.queued` for one account of this request's alert: kept for the answer's line (or written now if
        the request was answered already)."""
        if self.answered:
            log.info("alert.queued", **fields, source=self.source)
            return
        self.pending_queued.append(fields)

    def answer(self, status: int) -> bool:
        """The request is answered with `status`: writes the `alert.done` and `alert.queued` lines handed over,
        with the access line's facts. True when there were any (the access line then goes at debug)."""
        self.answered = True
        if not self.pending and not self.pending_queued:
            return False
        request_ms = round((time.perf_counter() - self.arrived) * 1000, 3)
        facts = {
            "http_status": status,
            "request_ms": request_ms,
            "source": self.source,
            "method": self.method,
            "path": self.path,
        }
        for fields in self.pending_queued:
            log.info("alert.queued", **fields, **facts)
        self.pending_queued.clear()
        for fields in self.pending:
            log.info("alert.done", **fields, **facts)
        self.pending.clear()
        return True

    def flush(self) -> None:
        """The request ended without an answer (cancelled): write what was handed over, without HTTP facts."""
        self.answered = True
        for fields in self.pending_queued:
            log.info("alert.queued", **fields, source=self.source)
        for fields in self.pending:
            log.info("alert.done", **fields, source=self.source)
        self.pending.clear()
        self.pending_queued.clear()


def alert_done(access: Access | None, fields: dict[str, Any]) -> None:
    """The executor's `alert.done`: through the request's `Access` when there is one, else written now
    (crash recovery, the market-open queue)."""
    if access is None:
        log.info("alert.done", **fields)
    else:
        access.done(fields)


def alert_queued(access: Access | None, fields: dict[str, Any]) -> None:
    """An account of the alert queued at a closed market: through the request's `Access`, else written now."""
    if access is None:
        log.info("alert.queued", **fields)
    else:
        access.queued(fields)
