"""Refusal log lines: written for a sample, counted for all, so a flood of junk cannot flood the log.

Issue 23: every refused request wrote two or three lines (the guard's reason, `request.refused`, the access
line `http.request`), so anyone could grow the log by megabytes a second. Now:

* a refused request's lines are written, all of them or none, for the first `LINES_PER_SOURCE` refusals of
  each source address (IPv6: per `limits.ipv6_prefix`) and at most `LINES_PER_INTERVAL` in all per
  `LOG_EVERY_S` seconds; the decision is made once per request (`should_log`) and kept in the request;
* the rest are counted and written as one `refusals.suppressed` line per interval: how many, by status, how
  many sources, and the busiest ones;
* `tvbridge_refusals_total{status, reason}` (`metrics.refused`) counts every refusal exactly, logged or not.

A refusal of an authenticated alert (422 for a bad field, 503 while halted) is always logged: only the secret's
holder can cause one, and the trader needs each. A 429 is sampled even then (a runaway strategy is a flood too).
Unauthenticated 4xx answers on any route (a scanner's 404s) are sampled the same way.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Final

import structlog

from tvbridge.addresses import source_key_of
from tvbridge.keys import AUTHENTICATED, CONFIG, REFUSAL_LOGGED, REFUSALS, SOURCE_IP

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp import web

log = structlog.get_logger()

LOG_EVERY_S: Final = 10.0
LINES_PER_SOURCE: Final = 3
"""Refused requests logged in full per source address per interval."""
LINES_PER_INTERVAL: Final = 50
"""Refused requests logged in full per interval, all sources together."""
TOP_SOURCES: Final = 5
MAX_SOURCES: Final = 10_000
"""Sources told apart per interval; beyond, a flood from fresh addresses is counted as `other` (bounded memory)."""
RATE_LIMITED: Final = 429


class RefusalLog:
    """Which refusals are logged in full in the current interval, and what was left out."""

    def __init__(
        self,
        *,
        ipv6_prefix: int = 64,
        log_every_s: float = LOG_EVERY_S,
        per_source: int = LINES_PER_SOURCE,
        per_interval: int = LINES_PER_INTERVAL,
    ) -> None:
        self.ipv6_prefix = ipv6_prefix
        self.log_every_s = log_every_s
        self.per_source = per_source
        self.per_interval = per_interval
        self.logged: Counter[str] = Counter()
        self.suppressed: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self._flush: asyncio.TimerHandle | None = None

    def admit(self, source: str) -> bool:
        """Whether a refusal from `source` is logged in full (and counts toward this interval's lines)."""
        key = source_key_of(source, self.ipv6_prefix)
        self._schedule()
        if self.logged.total() >= self.per_interval or self.logged[key] >= self.per_source:
            return False
        self.logged[key] += 1
        return True

    def left_out(self, source: str, status: int) -> None:
        """Count a refusal whose lines were not written, for the next `refusals.suppressed` line."""
        key = source_key_of(source, self.ipv6_prefix)
        if key not in self.suppressed and len(self.suppressed) >= MAX_SOURCES:
            key = "other"
        self.suppressed[key] += 1
        self.by_status[status] += 1
        self._schedule()

    def _schedule(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self.log_every_s, self.summarize)

    def summarize(self) -> None:
        """Write what was left out since the last line (nothing when nothing was), and start a new interval."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self.suppressed:
            log.warning(
                "refusals.suppressed",
                count=self.suppressed.total(),
                by_status={str(status): n for status, n in sorted(self.by_status.items())},
                sources=len(self.suppressed),
                top_sources=dict(self.suppressed.most_common(TOP_SOURCES)),
                interval_s=self.log_every_s,
            )
        self.logged.clear()
        self.suppressed.clear()
        self.by_status.clear()


def should_log(request: web.Request, status: int) -> bool:
    """Whether this refused request's lines are written; decided at its first line and kept for the others."""
    decided: bool | None = request.get(REFUSAL_LOGGED)
    if decided is not None:
        return decided
    refusals = request.app.get(REFUSALS)
    if refusals is None or (request.get(AUTHENTICATED, False) and status != RATE_LIMITED):
        decision = True
    else:
        decision = refusals.admit(request.get(SOURCE_IP, ""))
    request[REFUSAL_LOGGED] = decision
    return decision


def count_left_out(request: web.Request, status: int) -> None:
    """At the end of a refused request whose lines were not written: count it for the summary."""
    refusals = request.app.get(REFUSALS)
    if refusals is not None:
        refusals.left_out(request.get(SOURCE_IP, ""), status)


async def refusals_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the sampler; at shutdown the last interval's summary is written."""
    refusals = app[REFUSALS] = RefusalLog(ipv6_prefix=app[CONFIG].limits.ipv6_prefix)
    yield
    refusals.summarize()
