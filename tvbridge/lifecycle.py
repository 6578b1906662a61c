"""The service's own state: accepting or shutting down, and the alerts still running after their answer.

An alert answered 202 keeps running in a task owned here, not by the request, so a client that hangs up
cannot cancel it; shutdown waits for these tasks (up to `server.shutdown_grace_s`) before brokers and the
journal close.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import structlog

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from aiohttp import web

log = structlog.get_logger()
T = TypeVar("T")


@attrs.define
class ServiceState:
    started_at: datetime = attrs.field(factory=lambda: datetime.now(UTC))
    shutting_down: bool = False
    tasks: set[asyncio.Task[Any]] = attrs.field(factory=set)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def drain(self, grace_s: float) -> None:
        """Wait for running alerts; what is still running after the grace period stays journaled as pending."""
        if not self.tasks:
            return
        log.info("shutdown.waiting", running=len(self.tasks), grace_s=grace_s)
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace_s)
        if pending:
            log.warning("shutdown.unfinished", running=len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def on_shutdown(app: web.Application) -> None:
    from tvbridge.keys import CONFIG, STATE  # noqa: PLC0415 - keys imports this module's types

    state = app[STATE]
    state.shutting_down = True
    log.info("server.draining", running=len(state.tasks))
    await state.drain(app[CONFIG].server.shutdown_grace_s)
