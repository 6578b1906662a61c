"""Results handed over and not committed yet: the read-your-writes both stores keep the same way.

An alert's outcome is written after its answer (`Store.record_results`, issue 22: the answer does not wait for
the commit). A read that answers a user about that alert (`get_alert`, a repeat's `find_by_dedupe_key`) must
still see it, so each store keeps here, per alert id, the write handed over and not finished yet, and waits
for that alert's write only (a steady stream of other alerts never keeps a reader waiting).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

import structlog

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = structlog.get_logger()
R = TypeVar("R")


class PendingResults:
    """Per alert id, the results write handed over last and not finished (committed or failed) yet."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[bool]] = {}

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def hand_over(self, alert_id: str, write: Callable[[], Awaitable[object]]) -> asyncio.Task[bool]:
        """Run `write()` after the writes handed over for `alert_id` before it (one alert's writes commit in the
        order they were handed over: a mixed plan's combined answer after the executor's part). The task's result
        is True once committed; False when it failed, which is logged (`journal.finish_failed`) and leaves the
        alert `accepted` for crash recovery."""
        before = self._tasks.get(alert_id)
        task = asyncio.ensure_future(self._logged(alert_id, write, before))
        self._tasks[alert_id] = task
        task.add_done_callback(lambda done: self._forget(alert_id, done))
        return task

    @staticmethod
    async def _logged(alert_id: str, write: Callable[[], Awaitable[object]], before: asyncio.Task[bool] | None) -> bool:
        if before is not None:
            await asyncio.wait({before})
        try:
            await write()
        except Exception:
            log.exception("journal.finish_failed", alert_id=alert_id)
            return False
        return True

    def _forget(self, alert_id: str, done: asyncio.Task[bool]) -> None:
        if self._tasks.get(alert_id) is done:
            del self._tasks[alert_id]

    async def of(self, alert_id: str) -> None:
        """Wait until the results handed over for `alert_id` (if any) are committed or failed."""
        task = self._tasks.get(alert_id)
        if task is not None:
            await asyncio.wait({task})

    async def settle(self) -> None:
        """Wait until every write handed over so far is finished; later ones are not waited for."""
        if self._tasks:
            await asyncio.wait(set(self._tasks.values()))

    async def drain(self) -> None:
        """Wait until nothing is pending (at close: the writes handed over meanwhile too)."""
        while self._tasks:
            await self.settle()

    async def read_after(self, read: Callable[[], Awaitable[R | None]], alert_id_of: Callable[[R], str]) -> R | None:
        """`read()` with the results of the alert it finds: when that alert's write was pending as the read began
        or is pending now, wait for it and read again.

        Pending "as the read began" matters: a write that commits while the read is in flight (it read the row
        before the commit) is forgotten by the time the read returns, and a repeat answered from that row would
        get 202 "still running" for an alert answered 200 long before."""
        pending = dict(self._tasks)
        found = await read()
        if found is None:
            return None
        alert_id = alert_id_of(found)
        task = self._tasks.get(alert_id) or pending.get(alert_id)
        if task is None:
            return found
        await asyncio.wait({task})
        return await read()
