"""`create_app()`: all the wiring, and nothing else.

Resources open in `cleanup_ctx` order and close in reverse: the journal and the order log open first and close
last, so brokers that finish late still have somewhere to record what they did.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

from tvbridge import handlers, readiness, tradingday
from tvbridge.alertqueue import scheduler_ctx
from tvbridge.alerts.plan import Checks
from tvbridge.executor import Executor
from tvbridge.fileid import Unchanged
from tvbridge.followup import followup_ctx
from tvbridge.halt import halt_path
from tvbridge.halt_sync import halt_sync_ctx
from tvbridge.journal import journal_ctx
from tvbridge.keys import (
    BROKERS,
    CALENDAR,
    CLOCK,
    CONFIG,
    CONVERTER,
    CREDENTIALS,
    EXECUTOR,
    FOLLOWUP,
    JOINED,
    JOURNAL,
    METRICS,
    NOTIFIER,
    NOW,
    ORDER_LOG,
    PLAN_CHECKS,
    RECORD_DIRS,
    STATE,
    STRATEGY_BOOK,
)
from tvbridge.lifecycle import ServiceState, on_shutdown
from tvbridge.metrics import Metrics, instrument_brokers, metrics_ctx, metrics_handler
from tvbridge.middlewares import build_middlewares
from tvbridge.middlewares.dedupe import dedupe_ctx
from tvbridge.middlewares.rate_limit import rate_limit_ctx
from tvbridge.notify import Notifier, notify_ctx
from tvbridge.openapi import openapi_handler
from tvbridge.orderlog import order_log_ctx
from tvbridge.recovery import recovery_ctx
from tvbridge.refusal_journal import refusal_journal_ctx
from tvbridge.refusals import refusals_ctx
from tvbridge.registry import brokers_ctx, brokers_of
from tvbridge.risk import RiskGuard, reference_price
from tvbridge.routes import WEBHOOK, WEBHOOK_TOKEN
from tvbridge.sessions import Calendar
from tvbridge.squareoff import square_off_ctx
from tvbridge.status import status_events, status_page
from tvbridge.status_actions import actions_ctx
from tvbridge.status_actions import add_routes as add_status_actions
from tvbridge.strategies import StrategyBook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import cattrs

    from tvbridge.config import Config
    from tvbridge.secretstore import Credentials


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _premark(guard: RiskGuard, prechecked: frozenset[str], account: str) -> bool:
    """The plan's `premark` (`RiskGuard.premark`): an account whose broker joined the journal is checked before
    the record (`Executor.prepare_joined`)."""
    return guard.premark(account, prechecked=account in prechecked)


async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    book = StrategyBook(app[JOURNAL], config.strategies, followup=app[FOLLOWUP])
    app[STRATEGY_BOOK] = book
    guard = RiskGuard(
        limits={account: config.risk_of(account, app[CONVERTER]) for account in config.used_accounts},
        brokers=app[BROKERS],
        journal=app[JOURNAL],
        halt_file=halt_path(config.server.data_dir),
        clock=app[NOW],
        strategies=config.strategies,
        book=book,
    )
    brokers = app[BROKERS]
    app[PLAN_CHECKS] = Checks(
        risk=guard.limits,
        reference_price=lambda account, leg: reference_price(brokers.get(account), leg),
        capabilities={account: broker.capabilities for account, broker in brokers.items()},
        premark=functools.partial(_premark, guard, frozenset(app.get(JOINED) or ())),
    )
    app[EXECUTOR] = Executor(
        brokers=instrument_brokers(app[BROKERS], app[METRICS], app[NOTIFIER]),
        broker_names=brokers_of(config),
        journal=app[JOURNAL],
        order_log=app[ORDER_LOG],
        on_leg_failure=config.alerts.on_leg_failure,
        metrics=app[METRICS],
        notifier=app[NOTIFIER],
        before_send=guard.before_send,
        quantity_units={account: config.quantity_unit(account) for account in config.used_accounts},
        followup=app[FOLLOWUP],
        multipliers={account: config.quantity_multiplier(account) for account in config.used_accounts},
        clock=app[NOW],
        calendar=app[CALENDAR],
        # without strategies: the broker's position and every bracket in the contract, as before
        share=book.share if config.strategies else None,
        own_brackets=book.own_brackets if config.strategies else None,
        own_orders=book.own_orders if config.strategies else None,
        joined=app.get(JOINED),
        give_back=guard.give_back,
        halted=guard.halted,
    )
    yield
    # an alert spawned while the server was stopping must not outlive the brokers and the journal
    await app[STATE].drain(config.server.shutdown_grace_s)


def create_app(
    config: Config,
    converter: cattrs.Converter,
    credentials: Credentials,
    *,
    clock: Callable[[], datetime] = _utc_now,
) -> web.Application:
    """The application; `clock` is injected so tests can stand at any moment of the exchange week."""
    app = web.Application(
        middlewares=build_middlewares(config, credentials),
        client_max_size=config.limits.max_body_bytes,
    )
    app[CONFIG] = config
    app[CONVERTER] = converter
    app[CREDENTIALS] = credentials
    app[STATE] = ServiceState()
    app[CLOCK] = time.monotonic
    app[METRICS] = Metrics()
    app[NOTIFIER] = Notifier(config.notify, secrets=credentials.all)
    app[RECORD_DIRS] = Unchanged()
    if config.metrics.enabled:
        app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/openapi.json", openapi_handler)
    app.router.add_get("/status", status_page)
    app.router.add_get("/status/events", status_events)
    add_status_actions(app)
    app[NOW] = clock
    app[CALENDAR] = Calendar.from_config(config.sessions)
    # recovery after brokers and executor, before the first request and before the queue's scheduler; order
    # follow-up between the brokers it asks and the executor that hands it orders
    app.cleanup_ctx.extend(
        [
            refusals_ctx,
            journal_ctx,
            halt_sync_ctx,
            refusal_journal_ctx,
            actions_ctx,
            order_log_ctx,
            rate_limit_ctx,
            dedupe_ctx,
            brokers_ctx,
            followup_ctx,
            executor_ctx,
            recovery_ctx,
            scheduler_ctx,
            square_off_ctx,
        ]
    )
    app.cleanup_ctx.extend([metrics_ctx, notify_ctx])  # after the journal, brokers and executor they observe
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", handlers.index)
    app.router.add_get("/health", handlers.health)
    app.router.add_post("/webhook", handlers.webhook, name=WEBHOOK)
    app.router.add_post("/webhook/{path_token}", handlers.webhook, name=WEBHOOK_TOKEN)
    app.router.add_get("/alerts/{alert_id}", handlers.get_alert)
    tradingday.add_routes(app)
    readiness.add_routes(app)
    return app
