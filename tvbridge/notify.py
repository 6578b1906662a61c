"""Notifications to a phone or a chat through apprise URLs (Telegram, Discord, Slack, e-mail, a JSON webhook...).

An operator wants to hear about a failed leg or an expired token without watching the logs, but a chat API must
never slow an answer to TradingView: `event()` only queues (it never blocks and never raises) and a background
task sends. Per kind, the first event goes out at once; later events of that kind within
`notify.min_interval_s` are folded into one message with their count, so a storm of failures is two messages,
not two hundred. Texts are built from results (alert id, account, symbol, the broker's message) and every
configured secret is blanked from them before sending.

Kinds: `leg_failed`, `unknown_outcome`, `token_expired`, `journal_error` are raised here and in the executor;
`halted`, `resumed`, `queued_sent` are for the code that halts, resumes and sends queued alerts, through
`event(app, kind, message)`; `order_filled` and `order_rejected` for order follow-up (`tvbridge/followup.py`),
when an accepted order later fills or is refused by the exchange. `token_expiring` and
`instruments_refresh_failed` come from broker plugins (`BrokerContext.notify`), `not_ready` from the pre-open
readiness check (`tvbridge/readiness.py`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit

import attrs
import structlog

from tvbridge.config import NOTIFY_KINDS
from tvbridge.keys import NOTIFIER
from tvbridge.models import LegStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

    from aiohttp import web

    from tvbridge.config import NotifyConfig
    from tvbridge.models import LegResult

log = structlog.get_logger()

KINDS: Final = NOTIFY_KINDS
TITLES: Final = {
    "leg_failed": "order leg failed",
    "unknown_outcome": "order outcome UNKNOWN: check the broker",
    "token_expired": "broker token expired",
    "halted": "trading halted",
    "resumed": "trading resumed",
    "queued_sent": "queued alert sent",
    "journal_error": "journal trouble",
    "order_filled": "order filled",
    "order_rejected": "order REJECTED after it was accepted",
    "token_expiring": "broker token cannot be renewed",
    "instruments_refresh_failed": "instrument master refresh failed",
    "not_ready": "NOT READY for the open",
}
SEND_TIMEOUT_S: Final = 30.0
MIN_URL_SECRET: Final = 8
"""Parts of a notification URL this long or longer are kept out of logs and messages; shorter ones ("hook",
"POST", a port) are too common to blank everywhere and too short to be a token."""
_URL_WORD: Final = re.compile(r"[^/:@?&=#;,+\s]+")


@attrs.define
class _Kind:
    last_sent: float = float("-inf")
    pending: int = 0
    latest: str = ""
    flush: asyncio.TimerHandle | None = None


def url_secrets(urls: Iterable[str]) -> list[str]:
    """Every part of the notification URLs that can be a token, for the log redactor and the messages.

    The whole URL is not enough: apprise logs at debug level the URL it posts to (`JSON POST URL:
    http://host/<path token>`), the `requests` underneath logs the path, and a Telegram bot token, a Discord
    webhook token or a JSON target's key sit in the host, the path or the query. So the user name and password,
    a host that is not an address or a host name, and every path segment and query value are secrets (each as
    written and percent-decoded), once `MIN_URL_SECRET` long.
    """
    found: set[str] = set()
    for url in urls:
        found.add(url)
        parts = urlsplit(url)
        userinfo, _, host = parts.netloc.rpartition("@")
        words = _URL_WORD.findall(userinfo) + _URL_WORD.findall(parts.path) + _URL_WORD.findall(parts.fragment)
        words += [value for _, _, value in (pair.partition("=") for pair in parts.query.split("&"))]
        if not _is_address(host):
            words += _URL_WORD.findall(host)
        found.update(form for word in words for form in (word, unquote(word)) if len(form) >= MIN_URL_SECRET)
    return sorted(found)


def _is_address(host: str) -> bool:
    """A host part that names a machine (an IP, `localhost`, a dotted name, with or without a port), not a token
    (Telegram's `tgram://<bot token>/...`)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name == "localhost" or (
            "." in name and all(label.isalnum() for label in name.replace("-", "").split("."))
        )
    return True


def apprise_sender(urls: Iterable[str]) -> Callable[[str, str], Awaitable[bool]]:
    """Send with apprise (synchronous, `requests` underneath) on a worker thread."""
    import apprise  # noqa: PLC0415 - imported only when notifications are configured

    targets = apprise.Apprise()
    for url in urls:
        if not targets.add(url):
            from tvbridge.errors import ConfigError  # noqa: PLC0415 - only on this path

            raise ConfigError("notify.urls: an entry is not a URL apprise knows (the value is not shown)")

    async def send(title: str, body: str) -> bool:
        result = await asyncio.to_thread(targets.notify, title=title, body=body)
        return bool(result)

    return send


class Notifier:
    def __init__(
        self,
        config: NotifyConfig,
        *,
        secrets: Iterable[str] = (),
        send: Callable[[str, str], Awaitable[bool]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (seconds, monotonic) decides whether an event falls within `min_interval_s` of the last
        message; tests inject one so a storm is a storm by their clock, however slowly the machine runs."""
        self._config = config
        self._clock = clock
        self._enabled = frozenset(config.events) if config.urls else frozenset()
        self._secrets = sorted({s for s in (*secrets, *url_secrets(config.urls)) if s}, key=len, reverse=True)
        self._send = send or (apprise_sender(config.urls) if config.urls else None)
        self._kinds: dict[str, _Kind] = {}
        self._queue: asyncio.Queue[tuple[str, int, str] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def event(self, kind: str, message: str) -> None:
        """Queue a notification; never blocks, never raises."""
        if kind not in self._enabled:
            return
        state = self._kinds.setdefault(kind, _Kind())
        now = self._clock()
        if state.pending == 0 and now - state.last_sent >= self._config.min_interval_s:
            state.last_sent = now
            self._queue.put_nowait((kind, 1, message))
            return
        state.pending += 1
        state.latest = message
        if state.flush is None:
            delay = max(0.0, state.last_sent + self._config.min_interval_s - now)
            state.flush = asyncio.get_running_loop().call_later(delay, self._flush_when_due, kind)

    def leg_finished(self, alert_id: str, result: LegResult) -> None:
        if result.status not in {LegStatus.FAILED, LegStatus.UNKNOWN}:
            return
        kind = "unknown_outcome" if result.status is LegStatus.UNKNOWN else "leg_failed"
        what = f"{result.transaction} {result.quantity} {result.symbol}".strip()
        self.event(kind, f"{result.account} leg {result.leg_number} ({what}): {result.message} [alert {alert_id}]")

    def _flush_when_due(self, kind: str) -> None:
        """The timer's end: send what was held back, unless the clock says the interval is not over yet (an
        injected clock that has not moved), then wait the rest of it."""
        state = self._kinds[kind]
        remaining = state.last_sent + self._config.min_interval_s - self._clock()
        if remaining > 0:
            state.flush = asyncio.get_running_loop().call_later(remaining, self._flush_when_due, kind)
            return
        self._flush(kind)

    def _flush(self, kind: str) -> None:
        state = self._kinds[kind]
        state.flush = None
        if state.pending:
            self._queue.put_nowait((kind, state.pending, state.latest))
            state.pending = 0
            state.last_sent = self._clock()

    def _text(self, kind: str, count: int, message: str) -> tuple[str, str]:
        title = f"tvbridge: {TITLES.get(kind, kind)}"
        if count > 1:
            title += f" ({count} more)"
            message = f"{count} more since the last message. The latest: {message}"
        for secret in self._secrets:
            title, message = title.replace(secret, "[redacted]"), message.replace(secret, "[redacted]")
        return title, message

    async def start(self) -> None:
        if self._send is not None:
            self._task = asyncio.create_task(self._run(), name="notifier")

    async def _run(self) -> None:
        assert self._send is not None  # noqa: S101 - started only with a sender
        while (item := await self._queue.get()) is not None:
            kind, count, message = item
            title, body = self._text(kind, count, message)
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    ok = await self._send(title, body)
                error = "" if ok else "a target refused or could not be reached"
            except Exception as e:  # noqa: BLE001 - a failed notification must not stop the next one
                ok, error = False, type(e).__name__
            if ok:
                log.info("notify.sent", kind=kind, count=count)
            else:
                log.warning("notify.failed", kind=kind, count=count, error=error)

    async def close(self) -> None:
        """Send what is held back (one message per kind), then stop; bounded by the send timeout."""
        for kind, state in self._kinds.items():
            if state.flush is not None:
                state.flush.cancel()
                self._flush(kind)
        if self._task is None:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(self._task, SEND_TIMEOUT_S)
        except TimeoutError:
            log.warning("notify.failed", kind="shutdown", count=self._queue.qsize(), error="timed out at shutdown")


def event(app: web.Application, kind: str, message: str) -> None:
    """Notify `kind` (one of `KINDS`) if the operator asked for it; for halt/resume and queued alerts."""
    notifier = app.get(NOTIFIER)
    if notifier is not None:
        notifier.event(kind, message)


async def notify_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the sending task runs while the app does; held-back messages go out at shutdown."""
    notifier = app[NOTIFIER]
    await notifier.start()
    yield
    await notifier.close()
