"""Answering within TradingView's window: the outcome if it is ready in time, else 202 while it keeps running.

TradingView cancels a webhook after 3 seconds and never resends a timed-out one, so an alert that was
journaled but has not finished by `server.response_deadline_s` is answered 202 with its id; the task is owned by
the service (`ServiceState`), not by the request, so it finishes (and is recorded) whatever the client does.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from tvbridge.alerts.answer import deferred_body
from tvbridge.keys import CONFIG, STATE

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence

log = structlog.get_logger()


async def answer_in_time(
    app: web.Application,
    work: Coroutine[Any, Any, dict[str, Any]],
    *,
    alert_id: str,
    alert_type: str,
    warnings: Sequence[str],
) -> web.Response:
    deadline_s = app[CONFIG].server.response_deadline_s
    task = app[STATE].spawn(work, name=f"alert-{alert_id}")
    loop = asyncio.get_running_loop()
    answer = loop.create_future()

    def wake(_: object = None) -> None:
        if not answer.done():
            answer.set_result(None)

    # a timer handle and one done-callback: what `asyncio.wait(timeout=)` arms, without its sets and closures
    timer = loop.call_later(deadline_s, wake)
    task.add_done_callback(wake)
    try:
        await answer
    finally:  # also when this request is cancelled: the alert's task goes on, owned by the service
        timer.cancel()
        task.remove_done_callback(wake)
    if task.done():
        return web.json_response(task.result())
    log.info("alert.deferred", deadline_s=deadline_s)
    return web.json_response(deferred_body(alert_id, alert_type, warnings), status=202)
