"""Read-your-writes for results written after the answer (tvbridge/store/pending.py, both stores): a repeat's
look-up finds the first copy's results even when they commit while the look-up's read is in flight."""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs

from tvbridge.store.pending import PendingResults


class Table:
    """One alert's row and its results write, committed when the test says (`commit`)."""

    def __init__(self) -> None:
        self.row = {"alert_id": "A1", "status": "accepted"}
        self.commit = asyncio.Event()

    async def write(self) -> None:
        await self.commit.wait()
        self.row = {"alert_id": "A1", "status": "success"}


async def test_results_committed_during_the_read_are_read_again() -> None:
    """The read takes the row before the commit and returns after it (the write is finished and forgotten by
    then): the answer is the committed row, not the stale `accepted` one (a repeat answered 202 "still running"
    for an alert answered 200 before)."""
    pending, table = PendingResults(), Table()
    write = pending.hand_over("A1", table.write)

    async def read_in_flight() -> dict[str, Any]:
        seen = dict(table.row)
        if seen["status"] == "accepted":  # the first read: the commit lands while its answer is on the way
            table.commit.set()
            await asyncio.wait({write})
        return seen

    found = await pending.read_after(read_in_flight, lambda row: row["alert_id"])
    assert not pending
    assert found == {"alert_id": "A1", "status": "success"}


async def test_a_read_waits_for_its_alerts_pending_results_only() -> None:
    """A row whose results are still pending is read again once they commit; another alert's pending write is
    not waited for."""
    pending, table, other = PendingResults(), Table(), Table()
    pending.hand_over("A1", table.write)
    pending.hand_over("B2", other.write)  # never committed in this test

    async def read() -> dict[str, Any]:
        table.commit.set()
        return dict(table.row)

    assert await pending.read_after(read, lambda row: row["alert_id"]) == {"alert_id": "A1", "status": "success"}
    assert pending  # B2's write is still pending: it was not waited for
    other.commit.set()
    await pending.drain()
    assert not pending


async def test_a_failed_write_is_logged_and_reported_false() -> None:
    """A write that fails is False and logged (`journal.finish_failed`, the alert left for crash recovery)."""
    pending = PendingResults()

    async def fails() -> None:
        raise OSError("disk full")

    with capture_logs() as events:
        assert await pending.hand_over("A1", fails) is False
    assert [(e["event"], e["alert_id"]) for e in events] == [("journal.finish_failed", "A1")]
    assert not pending
