"""`create_app()`: all the wiring, and nothing else.

Resources open in `cleanup_ctx` order and close in reverse: the journal and the order log open first and close
last, so brokers that finish late still have somewhere to record what they did.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from tvbridge import handlers
from tvbridge.executor import Executor
from tvbridge.journal import journal_ctx
from tvbridge.keys import (
    BROKERS,
    CLOCK,
    CONFIG,
    CONVERTER,
    CREDENTIALS,
    EXECUTOR,
    JOURNAL,
    METRICS,
    NOTIFIER,
    ORDER_LOG,
    STATE,
)
from tvbridge.lifecycle import ServiceState, on_shutdown
from tvbridge.metrics import Metrics, instrument_brokers, metrics_ctx, metrics_handler
from tvbridge.middlewares import build_middlewares
from tvbridge.middlewares.dedupe import dedupe_ctx
from tvbridge.middlewares.rate_limit import rate_limit_ctx
from tvbridge.notify import Notifier, notify_ctx
from tvbridge.openapi import openapi_handler
from tvbridge.orderlog import order_log_ctx
from tvbridge.registry import brokers_ctx, brokers_of
from tvbridge.routes import WEBHOOK, WEBHOOK_TOKEN
from tvbridge.status import status_events, status_page

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import cattrs

    from tvbridge.config import Config
    from tvbridge.secretstore import Credentials


async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[EXECUTOR] = Executor(
        brokers=instrument_brokers(app[BROKERS], app[METRICS], app[NOTIFIER]),
        broker_names=brokers_of(config),
        journal=app[JOURNAL],
        order_log=app[ORDER_LOG],
        on_leg_failure=config.alerts.on_leg_failure,
        metrics=app[METRICS],
        notifier=app[NOTIFIER],
    )
    yield


def create_app(config: Config, converter: cattrs.Converter, credentials: Credentials) -> web.Application:
    app = web.Application(
        middlewares=build_middlewares(config, credentials),
        client_max_size=config.limits.max_body_bytes,
    )
    app[CONFIG] = config
    app[CONVERTER] = converter
    app[CREDENTIALS] = credentials
    app[STATE] = ServiceState()
    app[CLOCK] = time.monotonic
    app.cleanup_ctx.extend([journal_ctx, order_log_ctx, rate_limit_ctx, dedupe_ctx, brokers_ctx, executor_ctx])
    app[METRICS] = Metrics()
    app[NOTIFIER] = Notifier(config.notify, secrets=credentials.all)
    app.cleanup_ctx.extend([metrics_ctx, notify_ctx])
    if config.metrics.enabled:
        app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/openapi.json", openapi_handler)
    app.router.add_get("/status", status_page)
    app.router.add_get("/status/events", status_events)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", handlers.index)
    app.router.add_get("/health", handlers.health)
    app.router.add_post("/webhook", handlers.webhook, name=WEBHOOK)
    app.router.add_post("/webhook/{path_token}", handlers.webhook, name=WEBHOOK_TOKEN)
    app.router.add_get("/alerts/{alert_id}", handlers.get_alert)
    return app
