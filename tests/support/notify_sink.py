"""A chat API on loopback (apprise's `json://` target) that keeps what it is sent: the notifications an operator
would get. Tests of notifications, order follow-up and readiness share it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import attrs
from aiohttp import web
from aiohttp.test_utils import TestServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WAIT_S = 20.0


@attrs.define
class Sink:
    server: TestServer
    received: list[dict[str, Any]]
    arrived: asyncio.Condition

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.port}/hook"

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The messages, once at least `count` arrived (bounded by WAIT_S)."""
        async with asyncio.timeout(WAIT_S), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)
        return self.received


@contextlib.asynccontextmanager
async def running_sink(answer_after_s: float = 0.0, hold: asyncio.Event | None = None) -> AsyncIterator[Sink]:
    """The sink on a loopback port; `answer_after_s` makes it a slow API (each message is kept at once, then
    answered that much later), not a way to wait for anything; `hold` makes it an API that keeps each message
    and answers none until the test sets it (what a caller that waits for the answer would hang on)."""
    received: list[dict[str, Any]] = []
    arrived = asyncio.Condition()

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        async with arrived:
            arrived.notify_all()
        if answer_after_s:
            await asyncio.sleep(answer_after_s)  # a slow target, not synchronisation
        if hold is not None:
            await hold.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Sink(server, received, arrived)
    finally:
        await server.close()
