"""The service's own state: accepting or shutting down, and the alerts still running after their answer.

An alert answered 202 keeps running in a task owned here, not by the request, so a client that hangs up
cannot cancel it; shutdown waits for these tasks (up to `server.shutdown_grace_s`) before brokers and the
journal close.

Shutdown order (SIGTERM / SIGINT, `cli._run` calls `begin_shutdown` before stopping the server):
1. `shutting_down` is set: from now on `/webhook` answers 503 (nothing recorded, TradingView resends to the
   restarted server) and `/health` 503. The listener stays open meanwhile, so a new alert gets that 503
   rather than a refused connection, which TradingView would not resend.
2. Running alerts get until the shutdown deadline (`server.shutdown_grace_s` from the signal) to finish; what
   is still running then is cancelled and stays in the journal (`pending` / `sending`) for crash recovery.
3. The server stops; the cleanup contexts close the brokers, then the order log and the journal.
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
    shutdown_deadline: float | None = None
    """Event-loop time by which running alerts must be done; set by `begin_shutdown`."""

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def begin_shutdown(self, grace_s: float) -> None:
        """Refuse new alerts from now on; running ones have until `grace_s` from now (the first call counts)."""
        self.shutting_down = True
        if self.shutdown_deadline is None:
            self.shutdown_deadline = asyncio.get_running_loop().time() + grace_s

    async def drain(self, grace_s: float) -> None:
        """Wait for running alerts until the shutdown deadline; what is still running then is cancelled and
        stays journaled (`pending` / `sending`) for crash recovery. Safe to call more than once."""
        self.begin_shutdown(grace_s)
        assert self.shutdown_deadline is not None  # noqa: S101 - set just above
        loop = asyncio.get_running_loop()
        while self.tasks:  # a request that passed the check just before the flag may still spawn one
            remaining = self.shutdown_deadline - loop.time()
            running = set(self.tasks)
            if remaining <= 0:
                log.warning("shutdown.unfinished", running=len(running))
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
                return
            log.info("shutdown.waiting", running=len(running), grace_s=round(remaining, 3))
            await asyncio.wait(running, timeout=remaining)


async def begin_shutdown(app: web.Application) -> None:
    """Steps 1 and 2 above: called on the signal, before the server stops listening."""
    from tvbridge.keys import CONFIG, STATE  # noqa: PLC0415 - keys imports this module's types

    state = app[STATE]
    if not state.shutting_down:
        log.info("server.draining", running=len(state.tasks), grace_s=app[CONFIG].server.shutdown_grace_s)
    await state.drain(app[CONFIG].server.shutdown_grace_s)


async def on_shutdown(app: web.Application) -> None:
    """aiohttp's shutdown hook: the same drain, for runners that were not stopped through `begin_shutdown`."""
    await begin_shutdown(app)
