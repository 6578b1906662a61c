"""Prometheus metrics: the series operators alert on, and the small functions the rest of the code counts with.

Each application owns its `CollectorRegistry` (in `app[METRICS]`), never prometheus_client's process-global
default: several apps in one process (the tests make many) must not clash over a name. Names follow
Prometheus' conventions: a `tvbridge_` prefix, base units (`_seconds`), `_total` on counters, and labels with a
small, bounded set of values (account names, statuses, error classes; never an alert id or a symbol).

Code elsewhere counts through the functions below (`refused(app, reason)`, `dedupe_hit(app)`,
`set_queued(app, count)`, ...) or through the executor's `Metrics` object; broker calls are timed by wrapping
the broker objects the executor uses (`instrument_brokers`), so no plugin knows about metrics.
`GET /metrics` serves the text format to loopback (or `metrics.allow`) and to anyone with the admin token.
"""

from __future__ import annotations

import functools
import ipaddress
import platform
import re
import time
from typing import TYPE_CHECKING, Any, Final, cast

import structlog
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from tvbridge import __version__
from tvbridge.access import has_admin_token
from tvbridge.alertqueue import list_entries
from tvbridge.config import DEFAULT_STRATEGY
from tvbridge.errors import AuthError
from tvbridge.halt import halt_path, read_halt
from tvbridge.keys import BROKERS, CONFIG, JOURNAL, METRICS, SOURCE_IP, STATE
from tvbridge.models import AlertStatus
from tvbridge.refusals import should_log
from tvbridge.strategies import current_strategy
from tvbridge.text import bounded

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from tvbridge.broker import Broker
    from tvbridge.config import MetricsConfig
    from tvbridge.models import LegResult
    from tvbridge.notify import Notifier

log = structlog.get_logger()

LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0, 10.0)
"""Around TradingView's 3 s: an answer later than that is lost, so 2.5 s and 3 s are buckets of their own."""
TO_BROKER_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1.0)
"""Request arrival to the broker call: the bridge's own cost before an order leaves (issue 22: p99 < 1 ms)."""
COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CONNECTION_EVENTS: Final = (
    "evicted",
    "refused_full",
    "refused_per_ip",
    "header_timeout",
    "parse_error",
    "accept_error",
)
"""What `tvbridge.connections` counts (see there); every one is exported from the start, at 0."""
HEALTH_CACHE_S: Final = 10.0
"""Broker health is asked at most this often however often Prometheus scrapes (a broker's API has limits)."""


class Metrics:
    """The application's metrics, on their own registry."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.alerts = Counter(
            "tvbridge_alerts",
            "Alerts finished, by outcome (success, partial, failed, test_mode, stale, duplicate) and strategy.",
            ["outcome", "strategy"],
            registry=registry,
        )
        self.legs = Counter(
            "tvbridge_legs",
            "Order legs finished, by account, broker, status (success, failed, unknown, skipped, test_mode) and"
            " strategy.",
            ["account", "broker", "status", "strategy"],
            registry=registry,
        )
        self.refusals = Counter(
            "tvbridge_refusals",
            "Requests refused before any order, by HTTP status and reason (auth, invalid_alert, rate_limited,"
            " forbidden, bad_request, payload_too_large, not_found, ...): exact, also when the log samples them.",
            ["status", "reason"],
            registry=registry,
        )
        self.connection_events = Counter(
            "tvbridge_connection_events",
            "Connection-level refusals and faults, by event: evicted, refused_full, refused_per_ip, header_timeout,"
            " parse_error, accept_error.",
            ["event"],
            registry=registry,
        )
        self.connections_open = Gauge(
            "tvbridge_connections_open", "Client connections open now (see limits.max_connections).", registry=registry
        )
        self.dedupe_hits = Counter(
            "tvbridge_dedupe_hits", "Repeated alerts answered from the first copy's results.", registry=registry
        )
        self.broker_errors = Counter(
            "tvbridge_broker_errors",
            "Exceptions from broker calls, by account, operation and error code (the error class, snake_case).",
            ["account", "operation", "code"],
            registry=registry,
        )
        self.requests = Histogram(
            "tvbridge_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.broker_latency = Histogram(
            "tvbridge_broker_duration_seconds",
            "Time a broker call took, by account and operation (place, cancel, lookup).",
            ["account", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.alert_to_broker = Histogram(
            "tvbridge_alert_to_broker_seconds",
            "Time from a webhook request's arrival to its first broker call (guards, parsing, planning, the"
            " journal's commit): what tvbridge adds before an order leaves.",
            buckets=TO_BROKER_BUCKETS,
            registry=registry,
        )
        self.journal_commit = Histogram(
            "tvbridge_journal_commit_seconds",
            "Time for a journal write to be committed, the wait for its group commit and the fsync included.",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.order_states = Counter(
            "tvbridge_order_state_changes",
            "Changes of an accepted order's state found by order follow-up, by account and new state (open,"
            " partially_filled, filled, rejected, cancelled, expired, ...).",
            ["account", "state"],
            registry=registry,
        )
        self.orders_followed = Gauge(
            "tvbridge_orders_followed",
            "Accepted orders not final yet, whose state order follow-up keeps asking the broker about.",
            ["account"],
            registry=registry,
        )
        self.in_flight = Gauge("tvbridge_alerts_in_flight", "Alerts whose legs are still running.", registry=registry)
        self.queued = Gauge(
            "tvbridge_alerts_queued",
            "Queued legs waiting for their exchange to open (one per alert and account).",
            registry=registry,
        )
        self.halted = Gauge("tvbridge_halted", "1 while trading is halted by the kill switch.", registry=registry)
        self.broker_up = Gauge(
            "tvbridge_broker_up",
            "1 when the account's broker health check passes (asked at most every 10 s).",
            ["account", "broker"],
            registry=registry,
        )
        self.token_valid = Gauge(
            "tvbridge_broker_token_valid",
            "0 after the broker refused the account's credentials (e.g. an expired access token), 1 otherwise.",
            ["account"],
            registry=registry,
        )
        self.token_expiry = Gauge(
            "tvbridge_broker_token_expiry_timestamp_seconds",
            "When the account's broker access token expires, in seconds since the epoch (NaN: not known).",
            ["account"],
            registry=registry,
        )
        self.ready = Gauge(
            "tvbridge_ready",
            "1 when the account passed the last pre-open readiness check ([sessions] readiness_at, tvbridge ready).",
            ["account"],
            registry=registry,
        )
        self.start_time = Gauge(
            "tvbridge_start_time_seconds", "When this server started, in seconds since the epoch.", registry=registry
        )
        self.build = Info("tvbridge_build", "The running version.", registry=registry)
        ProcessCollector(namespace="tvbridge", registry=registry)
        self.start_time.set(time.time())
        self.build.info({"version": __version__, "python": platform.python_version()})
        for event in CONNECTION_EVENTS:
            self.connection_events.labels(event=event)
        for outcome in AlertStatus:
            if outcome is not AlertStatus.ACCEPTED:  # not an outcome: the alert is still running
                self.alerts.labels(outcome=outcome.value, strategy=DEFAULT_STRATEGY)
        self.health_checked_at = 0.0
        """When broker health was last asked (monotonic seconds), for `HEALTH_CACHE_S`."""
        self._children: dict[tuple[object, ...], Any] = {}
        """Label children bound once (`child`): `labels()` re-validates and hashes its values on every call."""

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, bound once and kept: the labels' sets are small and bounded (see above)."""
        key = (id(metric), *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def leg_finished(self, result: LegResult) -> None:
        self.child(self.legs, result.account, result.broker, result.status.value, result.strategy).inc()

    def alert_finished(self, outcome: str) -> None:
        """Count a finished alert under the running strategy (`strategies.current_strategy()`)."""
        self.child(self.alerts, outcome, current_strategy()).inc()

    def to_broker(self, seconds: float) -> None:
        self.alert_to_broker.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def metrics_of(app: web.Application) -> Metrics | None:
    """The app's metrics; None in a bare test app that was not built by `create_app` (nothing is counted)."""
    return app.get(METRICS)


def refused(app: web.Application, reason: str, status: int) -> None:
    """Count a request refused before any order (`reason` from a small fixed set: an error class's name)."""
    if (metrics := metrics_of(app)) is not None:
        metrics.refusals.labels(status=str(status), reason=reason).inc()


def dedupe_hit(app: web.Application) -> None:
    """Count a repeated alert answered from the first copy (also an alert with outcome `duplicate`)."""
    if (metrics := metrics_of(app)) is not None:
        metrics.dedupe_hits.inc()
        metrics.alert_finished(AlertStatus.DUPLICATE.value)


def alert_outcome(app: web.Application, outcome: str) -> None:
    """Count an alert finished outside the executor (stale)."""
    if (metrics := metrics_of(app)) is not None:
        metrics.alert_finished(outcome)


def is_halted(app: web.Application) -> bool:
    """Whether the kill switch is on (its halt file, `tvbridge.halt`): read at each scrape, since the CLI can
    halt without telling the server."""
    return read_halt(halt_path(app[CONFIG].server.data_dir)) is not None


def set_queued(app: web.Application, count: int) -> None:
    if (metrics := metrics_of(app)) is not None:
        metrics.queued.set(count)


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def reason_of(exc: BaseException) -> str:
    """`InvalidAlertError` -> `invalid_alert`: a label value from a class name (a bounded set)."""
    return _CAMEL.sub("_", type(exc).__name__.removesuffix("Error")).lower() or "error"


_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def error_code(exc: BaseException) -> str:
    """A broker error's label: its `code` attribute when the plugin sets a short one (Dhan's `DH-906`), else
    the class (`broker_rejected`)."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and _CODE.match(code) else reason_of(exc)


def route_of(request: web.Request) -> str:
    """The route's template (`/webhook/{path_token}`, never the token itself), or `unmatched`."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observe_request(request: web.Request, status: int, seconds: float) -> None:
    if (metrics := metrics_of(request.app)) is not None:
        metrics.child(metrics.requests, route_of(request), request.method, str(status)).observe(seconds)


class TimedBroker:
    """A broker seen through metrics: times `place`, `cancel`, `lookup`, `positions` and `open_orders`, counts
    their exceptions by class, and marks the account's credentials invalid after an auth error (valid again after a
    call succeeds). Everything else is the broker's own attribute."""

    def __init__(self, account: str, broker: Broker, metrics: Metrics, notifier: Notifier | None = None) -> None:
        self._account = account
        self._broker = broker
        self._metrics = metrics
        self._notifier = notifier
        self._token_ok = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    async def _timed(self, operation: str, call: Any) -> Any:
        from tvbridge.broker import BrokerAuthError  # noqa: PLC0415 - broker.py imports models, keep this lazy

        started = time.perf_counter()
        try:
            result = await call
        except BaseException as e:
            self._metrics.broker_errors.labels(account=self._account, operation=operation, code=error_code(e)).inc()
            if isinstance(e, BrokerAuthError):
                if self._token_ok and self._notifier is not None:  # once per expiry, not per refused call
                    self._notifier.event("token_expired", f"{self._account}: {e}")
                self._token_ok = False
                self._metrics.token_valid.labels(account=self._account).set(0)
            raise
        else:
            if not self._token_ok:
                self._token_ok = True
                self._metrics.token_valid.labels(account=self._account).set(1)
            return result
        finally:
            seconds = time.perf_counter() - started
            self._metrics.child(self._metrics.broker_latency, self._account, operation).observe(seconds)

    async def place(self, request: Any) -> Any:
        return await self._timed("place", self._broker.place(request))

    async def cancel(self, request: Any) -> Any:
        return await self._timed("cancel", self._broker.cancel(request))

    async def lookup(self, client_order_id: str) -> Any:
        return await self._timed("lookup", self._broker.lookup(client_order_id))

    async def positions(self, leg: Any = None) -> Any:
        return await self._timed("positions", self._broker.positions(leg))

    async def open_orders(self) -> Any:
        return await self._timed("open_orders", self._broker.open_orders())

    async def cancel_brackets(self, leg: Any) -> Any:
        return await self._timed("cancel_brackets", self._broker.cancel_brackets(leg))


def instrument_brokers(
    brokers: Mapping[str, Broker], metrics: Metrics, notifier: Notifier | None = None
) -> dict[str, Broker]:
    """The brokers the executor calls, each timed and counted (see `TimedBroker`); an auth error notifies."""
    return {
        account: cast("Broker", TimedBroker(account, broker, metrics, notifier)) for account, broker in brokers.items()
    }


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the gauges read from live state, and journal commit timing."""
    metrics = app[METRICS]
    state = app[STATE]
    metrics.in_flight.set_function(lambda: len(state.tasks))
    metrics.halted.set_function(lambda: 1 if is_halted(app) else 0)
    app[JOURNAL].observe_commits(metrics.journal_commit.observe)
    for account in app[BROKERS]:
        metrics.token_valid.labels(account=account).set(1)
    for account, broker in app[BROKERS].items():
        if broker.capabilities.token_expiry:
            metrics.token_expiry.labels(account=account).set_function(functools.partial(_expiry_seconds, broker))
    yield


def _expiry_seconds(broker: Broker) -> float:
    expires = broker.token_expiry()
    return expires.timestamp() if expires is not None else float("nan")


async def _refresh_broker_health(app: web.Application, metrics: Metrics) -> None:
    import asyncio  # noqa: PLC0415 - only here

    now = time.monotonic()
    if now - metrics.health_checked_at < HEALTH_CACHE_S:
        return
    metrics.health_checked_at = now
    config = app[CONFIG]

    async def check(account: str, broker: Broker) -> None:
        try:
            async with asyncio.timeout(2):
                ok = (await broker.health()).ok
        except Exception:  # noqa: BLE001 - a failing health check is a finding
            ok = False
        metrics.broker_up.labels(account=account, broker=config.broker_of(account)).set(1 if ok else 0)

    await asyncio.gather(*(check(a, b) for a, b in app.get(BROKERS, {}).items()))


def _allowed(source: str, config: MetricsConfig) -> bool:
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(entry, strict=False) for entry in config.allow)


async def metrics_handler(request: web.Request) -> web.Response:
    """`GET /metrics`: the Prometheus text format, for `metrics.allow` addresses or the admin token.

    Served as text format 0.0.4, which every Prometheus 2.x and 3.x scrapes (our names need nothing newer)."""
    app = request.app
    config = app[CONFIG].metrics
    source = request.get(SOURCE_IP, request.remote or "")
    if not has_admin_token(request) and (config.require_token or not _allowed(source, config)):
        if should_log(request, 401):  # sampled like every refusal (tvbridge.refusals)
            log.warning("metrics.refused", source=source, path=bounded(request.path))
        raise AuthError("admin token required to scrape: Authorization: Bearer <admin token>")
    metrics = app[METRICS]
    await _refresh_broker_health(app, metrics)
    metrics.queued.set(len(await list_entries(app[JOURNAL])))
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
