"""Steps 6 and 9: token buckets, so that no single source or strategy can flood the broker or starve the others.

Every TradingView alert arrives from the same four addresses, so a plain per-IP limit would throttle a trader's
own alerts. The limits are therefore split around `auth`, and what fails before auth never spends a budget that
authenticated alerts need (issue 23):

* before auth (`check_source`), per source (`request[SOURCE_IP]`; IPv6 per `limits.ipv6_prefix` network):
  - `per_ip_per_s` / `per_ip_burst` count only requests that did *not* authenticate (no or wrong secret, not
    JSON, a body that does not decode, too large, too slow, unknown path token): a source whose bucket is empty
    gets 429 before its body is even decoded;
  - `auth_failures_per_min` counts wrong secrets: a source that used them up gets 429 for *every* webhook
    request until its bucket refills, a correct secret included, or a guesser would learn from the 200 which
    guess was right;
  - the addresses in `ip_allowlist.allow` (TradingView's own), whether or not the allowlist is on, and the
    trusted proxies are exempt from both: anyone can make TradingView send wrong secrets to your URL, and
    locking TradingView out would lose the genuine alerts.
  Failures are charged to their source only: a flood of junk from many addresses leaves genuine alerts alone.
* after auth and dedupe (`check_strategy`), for genuine alerts that will run (a repeat answered by `dedupe` places
  nothing and costs nothing; a first copy refused here releases its dedupe claim): the strategy's bucket
  (`per_strategy_per_s` / `per_strategy_burst`), then one token of the global bucket (`global_per_s`, burst
  `global_burst`). The strategy is the one `auth` picked (`request[STRATEGY]`, issue 19): a `[strategies.NAME]`
  has one bucket, whatever its symbols. The `default` strategy (the global secret, which every Pine script of a
  trader without strategy tables shares) keeps a bucket per sorted set of `EXCHANGE:SYMBOL` of its alerts: a
  runaway script (one symbol far too often) is throttled, while a fan-out (hundreds of alerts over as many
  symbols on one bar close) passes. The global burst is above what
  TradingView's largest plans can fire at once; each alert takes a global token only once its strategy bucket
  accepted it, so a runaway that its own bucket stops does not use up the global one.

Over a limit: `RateLimitedError`, answered 429 with `Retry-After` (seconds until a token is there), after a
`rate_limit.refused` line for the sample `tvbridge.refusals` picks. Buckets that have refilled completely carry
no information and are dropped (checked at most every `PRUNE_EVERY_S`), and a table never holds more than
`MAX_ENTRIES` keys, so memory stays bounded under a spoofed-address flood.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING, Final

import attrs
import structlog

from tvbridge.addresses import contains, parse_address, parse_networks, source_key_of
from tvbridge.config import DEFAULT_STRATEGY
from tvbridge.errors import AuthError, RateLimitedError
from tvbridge.keys import AUTHENTICATED, CLOCK, CONFIG, JOURNAL, RATE_LIMITER, RAW_ALERT, SOURCE_IP, STRATEGY
from tvbridge.refusals import should_log
from tvbridge.routes import is_webhook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Hashable, Mapping, Sequence
    from typing import Any

    from aiohttp import web

    from tvbridge.addresses import IPNetwork
    from tvbridge.config import RateLimitConfig

log = structlog.get_logger()

MAX_ENTRIES: Final = 100_000
PRUNE_EVERY_S: Final = 60.0
GLOBAL: Final = "global"
HTTP_TOO_MANY: Final = 429


@attrs.define
class Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Buckets of one rate and capacity, keyed by anything hashable; a missing bucket is a full one."""

    def __init__(self, rate_per_s: float, capacity: float) -> None:
        self.rate = rate_per_s
        self.capacity = capacity
        self.buckets: dict[Hashable, Bucket] = {}
        self._pruned_at: float | None = None

    def _refilled(self, key: Hashable, now: float) -> Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket(tokens=self.capacity, updated=now)
            self._prune(now)
            return bucket
        bucket.tokens = min(self.capacity, bucket.tokens + max(0.0, now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    def wait_s(self, key: Hashable, now: float) -> float:
        """Seconds until `key` has a whole token; 0 when it has one now. Takes nothing."""
        bucket = self.buckets.get(key)
        if bucket is None:
            return 0.0
        bucket = self._refilled(key, now)
        return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate

    def take(self, key: Hashable, now: float) -> float:
        """Take a token: 0 when taken, else the seconds until one is there (and nothing is taken)."""
        bucket = self._refilled(key, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def charge(self, key: Hashable, now: float) -> None:
        """Take a token after the fact (a failure already happened), down to an empty bucket."""
        bucket = self._refilled(key, now)
        bucket.tokens = max(0.0, bucket.tokens - 1)

    def _prune(self, now: float) -> None:
        due = self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_S
        if not due and len(self.buckets) <= MAX_ENTRIES:
            return
        self._pruned_at = now
        full_after = self.capacity / self.rate
        self.buckets = {k: b for k, b in self.buckets.items() if now - b.updated < full_after}
        if len(self.buckets) > MAX_ENTRIES:  # a flood of fresh keys: forget the least recently seen
            keep = sorted(self.buckets.items(), key=lambda item: item[1].updated)[-(MAX_ENTRIES * 9 // 10) :]
            self.buckets = dict(keep)


@attrs.frozen
class Refusal:
    scope: str
    wait_s: float
    message: str


class RateLimiter:
    """The four tables; every method takes `now` (monotonic seconds) so time is the caller's."""

    def __init__(self, config: RateLimitConfig, exempt: Sequence[IPNetwork] = (), ipv6_prefix: int = 64) -> None:
        self.enabled = config.enabled
        self.exempt = tuple(exempt)
        self.ipv6_prefix = ipv6_prefix
        self.per_ip = TokenBuckets(config.per_ip_per_s, config.per_ip_burst)
        self.auth_failures = TokenBuckets(config.auth_failures_per_min / 60, config.auth_failures_per_min)
        self.per_strategy = TokenBuckets(config.per_strategy_per_s, config.per_strategy_burst)
        self.global_ = TokenBuckets(config.global_per_s, config.global_burst)
        self._config = config
        self.instances = 1
        """Instances sharing the limits (the PostgreSQL store's live leases; 1 on SQLite): see `share`."""

    def share(self, instances: int) -> None:
        """Split the per-strategy and global limits between `instances` live instances behind one proxy, so
        together they allow what the config says, not that many times it (issue 20). A proxy spreads alerts
        about evenly (round robin); each instance's share is its rate and burst divided by the count, never
        below one alert of burst. The per-address limits stay per instance: they guard each process."""
        instances = max(1, instances)
        if instances == self.instances:
            return
        self.instances = instances
        config = self._config
        for buckets, rate, burst in (
            (self.per_strategy, config.per_strategy_per_s, config.per_strategy_burst),
            (self.global_, config.global_per_s, config.global_burst),
        ):
            buckets.rate = rate / instances
            buckets.capacity = max(1.0, burst / instances)
            for bucket in buckets.buckets.values():
                bucket.tokens = min(bucket.tokens, buckets.capacity)

    def source_key(self, source: str) -> str | None:
        """The key of `source`'s buckets (IPv6: its `ipv6_prefix` network); None when it is exempt."""
        address = parse_address(source)
        if address is not None and contains(self.exempt, address):
            return None
        return source_key_of(source, self.ipv6_prefix)

    def check_source(self, source: str, now: float) -> Refusal | None:
        """Before auth: refuse an address that has used up its failures or its unauthenticated budget."""
        key = self.source_key(source)
        if key is None:
            return None
        if wait := self.auth_failures.wait_s(key, now):
            return Refusal("auth_failures", wait, "too many failed authentications from this address")
        if wait := self.per_ip.wait_s(key, now):
            return Refusal("ip", wait, "too many unauthenticated requests from this address")
        return None

    def record_failure(self, source: str, now: float, *, auth_failed: bool) -> None:
        """A request from `source` failed before authenticating: charged to that source only, never to a budget
        genuine alerts need (issue 23: junk from many addresses emptied the global bucket)."""
        key = self.source_key(source)
        if key is None:
            return
        self.per_ip.charge(key, now)
        if auth_failed:
            self.auth_failures.charge(key, now)

    def check_strategy(self, strategy: str, now: float) -> Refusal | None:
        """After auth: one token of the strategy's bucket, then one of the global bucket."""
        if wait := self.per_strategy.take(strategy, now):
            return Refusal("strategy", wait, "too many alerts for this strategy")
        if wait := self.global_.take(GLOBAL, now):
            return Refusal("global", wait, "too many alerts from all strategies together")
        return None


def _raise(request: web.Request, refusal: Refusal | None) -> None:
    if refusal is None:
        return
    retry_after = max(1, math.ceil(refusal.wait_s))
    if should_log(request, HTTP_TOO_MANY):
        log.warning("rate_limit.refused", reason=refusal.message, scope=refusal.scope, retry_after_s=retry_after)
    raise RateLimitedError(f"rate limited: {refusal.message}, retry in {retry_after} s", retry_after_s=refusal.wait_s)


def strategy_of(raw: Mapping[str, Any], strategy: str) -> str:
    """The per-strategy key: a named strategy's name; for `default`, the alert's sorted `EXCHANGE:SYMBOL` set."""
    if strategy != DEFAULT_STRATEGY:
        return f"strategy:{strategy}"
    legs = raw.get("order_legs")
    symbols = sorted(
        {
            f"{leg.get('exchange', '')}:{leg.get('symbol', '')}".upper()
            for leg in (legs if isinstance(legs, list) else [])
            if isinstance(leg, dict)
        }
    )
    return f"{DEFAULT_STRATEGY}|{','.join(symbols)}"


def charge_failure(request: web.Request, error: Exception) -> None:
    """A webhook request refused before it authenticated: charge its source (`errors` calls this for every
    refusal, wherever in the pipeline it happened: a body that does not decode is refused before this step).
    A 429 is not charged again: the source is already out of tokens."""
    limiter = request.app.get(RATE_LIMITER)
    if (
        limiter is None
        or not limiter.enabled
        or isinstance(error, RateLimitedError)
        or request.get(AUTHENTICATED, False)
        or request.method != "POST"
        or not is_webhook(request)
    ):
        return
    now = request.app[CLOCK]()
    limiter.record_failure(request.get(SOURCE_IP, ""), now, auth_failed=isinstance(error, AuthError))


def check_source(request: web.Request) -> None:
    """Before auth: 429 when the request's source used up its failures or its unauthenticated budget."""
    limiter = request.app[RATE_LIMITER]
    if limiter.enabled:
        _raise(request, limiter.check_source(request.get(SOURCE_IP, ""), request.app[CLOCK]()))


def check_strategy(request: web.Request) -> None:
    """After auth and dedupe: 429 when the alert's strategy (or all of them together) is over its rate."""
    limiter = request.app[RATE_LIMITER]
    if not limiter.enabled or not request.get(AUTHENTICATED, False):
        return
    raw: dict[str, Any] = request[RAW_ALERT]
    key = strategy_of(raw, request.get(STRATEGY, DEFAULT_STRATEGY))
    _raise(request, limiter.check_strategy(key, request.app[CLOCK]()))


async def rate_limit_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the bucket tables, in memory (nothing to close; idle buckets are pruned as keys arrive).

    Exempt from the per-address limits: the addresses in `ip_allowlist.allow` (TradingView's), whether or not
    the allowlist is on, and the trusted proxies (when one is the source, it sent no `X-Forwarded-For`).
    """
    config = app[CONFIG]
    exempt = parse_networks([*config.ip_allowlist.allow, *config.ip_allowlist.trusted_proxies])
    limiter = app[RATE_LIMITER] = RateLimiter(config.rate_limit, exempt, config.limits.ipv6_prefix)
    journal = app[JOURNAL]
    if not journal.shared:
        yield
        return

    async def follow_instances() -> None:
        """Several instances on one PostgreSQL store: keep each one's share of the limits current."""
        while True:
            count = journal.live_instances
            if count != limiter.instances:
                limiter.share(count)
                log.info("rate_limit.shared", instances=count)
            await asyncio.sleep(config.journal.leader_lease_s / 3)

    task = asyncio.create_task(follow_instances(), name="rate-limit-share")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
