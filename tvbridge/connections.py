"""Connections: how many may be open, how long one may take to say what it wants, and what a refusal costs.

Issue 23: someone who knows only the URL could hold the server's connections (or its file descriptors) with
idle, half-sent or slowly dribbled requests until a genuine alert could not get in. So, below HTTP:

* every connection is counted when it is made, in all and per source address (IPv6: per `limits.ipv6_prefix`
  network), against `limits.max_connections` and `limits.max_connections_per_ip`. The addresses in
  `ip_allowlist.allow` (TradingView's) and `ip_allowlist.trusted_proxies` count only in all: TradingView opens
  many connections at once when alerts fire on the same bar close, and a proxy carries everyone's;
* the total is lowered at start to what the descriptor limit leaves room for (`RLIMIT_NOFILE`, systemd's
  `LimitNOFILE`, minus what is open and a reserve), so the process refuses before `accept()` runs out of
  descriptors (then asyncio stops accepting for a second, genuine alerts included);
* when the total is reached, the connection that has waited longest without sending a complete request is
  closed to make room (an idle or slowloris connection carries no work; a genuine client sends its request at
  once); only when every connection has a request in progress is the new one refused;
* a refused connection is closed in `connection_made`, before aiohttp's request handler is set up for it;
* a new connection must complete its request line and headers within `limits.header_timeout_s`, however
  slowly it dribbles them; between requests aiohttp's keep-alive timeout (`limits.keepalive_timeout_s`) applies.
  A request whose headers arrived is the body limit's business (`limits.read_timeout_s`, `body_limit`);
* refusals, evictions, header timeouts, HTTP parse errors and accept errors (EMFILE...) are counted exactly in
  `tvbridge_connection_events_total` and logged as one `connections.summary` line per `LOG_EVERY_S` with the
  counts, never a line per event.

With TLS terminated here the caps apply once the handshake is done; the handshake itself is bounded by
`header_timeout_s`. The HTTP request handling stays aiohttp's (`GuardedHandler` subclasses its handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from tvbridge.addresses import contains, parse_address, parse_networks, source_key
from tvbridge.metrics import CONNECTION_EVENTS
from tvbridge.text import bounded

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from aiohttp.web_request import BaseRequest

    from tvbridge.addresses import IPNetwork
    from tvbridge.config import Config
    from tvbridge.metrics import Metrics

log = structlog.get_logger()

LOG_EVERY_S: Final = 10.0
"""At most one `connections.summary` line per this many seconds, however many events."""
DESCRIPTOR_RESERVE: Final = 64
"""Descriptors kept free beyond those open at start (journal, log files, broker clients, their threads)."""
BACKLOG: Final = 512
"""Connections the kernel holds for us while we accept (aiohttp's default is 128)."""
ACCEPT_ERRORS: Final = frozenset({"socket.accept() out of system resource"})
"""asyncio's exception-handler messages for a failed `accept()` (EMFILE, ENFILE, ENOBUFS, ENOMEM): one per event."""


def open_descriptors() -> int:
    """Descriptors this process has open now (0 where the system cannot say)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return sum(1 for _ in Path(folder).iterdir())
    return 0


def descriptor_room() -> int | None:
    """How many connections the descriptor limit leaves room for; None when it is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    reserve = max(DESCRIPTOR_RESERVE, soft // 10)
    return max(1, soft - open_descriptors() - reserve)


class ConnectionGuard:
    """The connection table of one listening server; `GuardedHandler` asks it to admit and release."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_per_source: int,
        header_timeout_s: float,
        ipv6_prefix: int,
        exempt: Sequence[IPNetwork] = (),
        metrics: Metrics | None = None,
        log_every_s: float = LOG_EVERY_S,
    ) -> None:
        self.max_connections = self.capacity = max_connections
        self.max_per_source = max_per_source
        self.header_timeout_s = header_timeout_s
        self.ipv6_prefix = ipv6_prefix
        self.exempt = tuple(exempt)
        self.metrics = metrics
        self.log_every_s = log_every_s
        # insertion-ordered: the oldest first. `waiting`: no complete request yet; `served`: had one
        self.waiting: dict[GuardedHandler, None] = {}
        self.served: dict[GuardedHandler, None] = {}
        self.per_source: Counter[str] = Counter()
        self.pending: Counter[str] = Counter()
        """Events since the last summary line."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._previous_handler: Any = None

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics | None = None) -> ConnectionGuard:
        limits, allowlist = config.limits, config.ip_allowlist
        return cls(
            max_connections=limits.max_connections,
            max_per_source=limits.max_connections_per_ip,
            header_timeout_s=limits.header_timeout_s,
            ipv6_prefix=limits.ipv6_prefix,
            exempt=parse_networks([*allowlist.allow, *allowlist.trusted_proxies]),
            metrics=metrics,
        )

    @property
    def open(self) -> int:
        return len(self.waiting) + len(self.served)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Size the table to the descriptor limit and take over the loop's reports of failed accepts."""
        self._loop = loop
        room = descriptor_room()
        self.capacity = self.max_connections if room is None else min(self.max_connections, room)
        if self.capacity < self.max_connections:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.warning(
                "connections.capped",
                max_connections=self.max_connections,
                capacity=self.capacity,
                descriptor_limit=soft,
                advice="raise the descriptor limit (systemd: LimitNOFILE) or lower limits.max_connections",
            )
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._on_loop_error)

    def stop(self) -> None:
        """Write what is still counted, and give the loop its exception handler back."""
        self.summarize()
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous_handler)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") in ACCEPT_ERRORS:
            self.note("accept_error")
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    def _source_of(self, peer: Any) -> str | None:
        """The per-source key of a peer (`source_key`); None when it is not counted per source."""
        host = peer[0] if isinstance(peer, tuple) and peer else None
        address = parse_address(host) if isinstance(host, str) else None
        if address is None or contains(self.exempt, address):
            return None
        return source_key(address, self.ipv6_prefix)

    def admit(self, handler: GuardedHandler, peer: Any) -> bool:
        """Whether a new connection may stay; makes room by closing the longest-waiting idle one when full."""
        source = self._source_of(peer)
        if source is not None and self.per_source[source] >= self.max_per_source:
            self.note("refused_per_ip")
            return False
        if self.open >= self.capacity and not self._evict():
            self.note("refused_full")
            return False
        handler.source = source
        if source is not None:
            self.per_source[source] += 1
        self.waiting[handler] = None
        return True

    def _evict(self) -> bool:
        victim = next(iter(self.waiting), None)
        if victim is None:  # every connection has sent a request: close one idle between requests, if any
            victim = next((handler for handler in self.served if handler.idle), None)
        if victim is None:
            return False
        self.release(victim)
        victim.force_close()
        self.note("evicted")
        return True

    def first_request(self, handler: GuardedHandler) -> None:
        if handler in self.waiting:  # not when it was closed meanwhile
            del self.waiting[handler]
            self.served[handler] = None

    def release(self, handler: GuardedHandler) -> None:
        """The connection is gone (or going): its slot is free. Safe to call twice."""
        if handler not in self.waiting and handler not in self.served:
            return
        self.waiting.pop(handler, None)
        self.served.pop(handler, None)
        source, handler.source = handler.source, None
        if source is not None:
            self.per_source[source] -= 1
            if self.per_source[source] <= 0:
                del self.per_source[source]

    def note(self, event: str) -> None:
        """Count one event exactly (metric) and in the next summary line."""
        if self.metrics is not None:
            self.metrics.connection_events.labels(event=event).inc()
        self.pending[event] += 1
        if self._flush is None and self._loop is not None:
            self._flush = self._loop.call_later(self.log_every_s, self.summarize)

    def summarize(self) -> None:
        """One line with every count since the last one (nothing when nothing happened)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self.pending:
            return
        counts = {event: self.pending.get(event, 0) for event in CONNECTION_EVENTS}
        self.pending.clear()
        log.warning(
            "connections.summary", **counts, open=self.open, capacity=self.capacity, interval_s=self.log_every_s
        )


class GuardedHandler(RequestHandler):
    """aiohttp's request handler, admitted by the guard, with a deadline for the first request's headers.

    Reads three of aiohttp's own attributes (`_request_count`: requests parsed; `_waiter`: pending while it
    waits for a request; `_loop`); tests/test_connections.py fails if their meaning changes."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard
        self.source: str | None = None
        self.admitted = False
        self._headers_due: asyncio.TimerHandle | None = None
        self._quiet = False

    @property
    def idle(self) -> bool:
        """Waiting for a request, none in progress (the state aiohttp's keep-alive timeout closes)."""
        return self._waiter is not None and not self._waiter.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.guard.admit(self, transport.get_extra_info("peername")):
            cast("asyncio.Transport", transport).abort()  # nothing was read or set up: the cheapest way out
            return
        self.admitted = True
        super().connection_made(transport)
        self._headers_due = self._loop.call_later(self.guard.header_timeout_s, self._on_headers_due)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._headers_due is not None and self._request_count:
            self._headers_due.cancel()
            self._headers_due = None
            self.guard.first_request(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.admitted:
            return
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None
        self.guard.release(self)
        super().connection_lost(exc)

    def _on_headers_due(self) -> None:
        self._headers_due = None
        if not self._request_count and self.transport is not None:
            self.guard.note("header_timeout")
            self.guard.release(self)
            self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse: counted for the summary instead of a log line each (aiohttp
        logs one at error level per bad request); the answer echoes at most a bounded piece of it."""
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        self.guard.note("parse_error")
        self._quiet = True
        try:
            return super().handle_error(request, status, exc, None if message is None else bounded(message))
        finally:
            self._quiet = False

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error lines: a parse error's, and the one it writes when, after our 400 for a body that
        does not decode, it tries to read the rest of that body: both counted as parse errors instead."""
        if isinstance(kw.get("exc_info"), RequestPayloadError):
            self.guard.note("parse_error")
            return
        if not self._quiet:
            super().log_exception(*args, **kw)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a `ConnectionGuard` (aiohttp's `TCPSite` with our handler)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard,
        handler_args: Mapping[str, Any],
        ssl_context: Any = None,
        backlog: int = BACKLOG,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self.guard = guard
        self._handler_args = dict(handler_args)

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None  # noqa: S101 - the runner is set up before its sites start
        self.guard.start(loop)

        def factory() -> GuardedHandler:
            return GuardedHandler(server, self.guard, loop=loop, **self._handler_args)

        extra: dict[str, Any] = {}
        if self._ssl_context is not None:
            extra["ssl_handshake_timeout"] = self.guard.header_timeout_s
        self._server = await loop.create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog, **extra
        )

    async def stop(self) -> None:
        await super().stop()
        self.guard.stop()


def handler_args(config: Config) -> dict[str, Any]:
    """The request handler's options: aiohttp's keep-alive timeout, and no access log (ours is `http.request`)."""
    return {"keepalive_timeout": config.limits.keepalive_timeout_s, "access_log": None}
