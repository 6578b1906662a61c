"""Steps 6 and 9: token buckets, so that no single source or strategy can flood the broker or starve the others.

Every TradingView alert arrives from the same four addresses, so a plain per-IP limit would throttle a trader's
own alerts. The limits are therefore split around `auth`:

* before auth (`before_auth`), per source address (`request[SOURCE_IP]`, as `ip_allowlist` found it):
  - `per_ip_per_s` / `per_ip_burst` count only requests that did *not* authenticate (no or wrong secret, not
    JSON, unknown path token): an address whose bucket is empty gets 429 before its body is even decoded;
  - `auth_failures_per_min` counts wrong secrets: an address that used them up gets 429 for *every* webhook
    request until its bucket refills, a correct secret included, or a guesser would learn from the 200 which
    guess was right;
  - addresses on an enabled `ip_allowlist.allow` (TradingView's own) are exempt from both: anyone can make
    TradingView send wrong secrets to your URL, and locking TradingView out would lose the genuine alerts.
  A request is refused here also when the global bucket is empty.
* after auth and dedupe (`after_auth`), for genuine alerts that will run (a repeat answered by `dedupe` places
  nothing and costs nothing; a first copy refused here releases its dedupe claim): the strategy's bucket
  (`per_strategy_per_s` / `per_strategy_burst`), then one token of the global bucket (`global_per_s`, burst
  one second's worth).
  The strategy is the credential used (a hash of the secret or path token) plus the alert's sorted set of
  `EXCHANGE:SYMBOL`, so a runaway strategy is throttled while another strategy's alerts still get through.
  Failed requests take their global token when they fail. Each request takes a global token only once its
  narrower bucket accepted it, so a flood that its own bucket stops does not use up the global one.

Over a limit: `RateLimitedError`, answered 429 with `Retry-After` (seconds until a token is there). Buckets
that have refilled completely carry no information and are dropped (checked at most every `PRUNE_EVERY_S`),
and a table never holds more than `MAX_ENTRIES` keys, so memory stays bounded under a spoofed-address flood.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Final

import attrs
import structlog
from aiohttp import web

from tvbridge.errors import AuthError, RateLimitedError, RequestError
from tvbridge.keys import AUTHENTICATED, CLOCK, CONFIG, RATE_LIMITER, RAW_ALERT, SOURCE_IP
from tvbridge.middlewares.ip_allowlist import contains, parse_address, parse_networks
from tvbridge.routes import PATH_TOKEN, is_webhook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Hashable, Mapping, Sequence
    from typing import Any

    from aiohttp.typedefs import Handler, Middleware

    from tvbridge.config import RateLimitConfig
    from tvbridge.middlewares.ip_allowlist import IPNetwork
    from tvbridge.secretstore import Credentials

log = structlog.get_logger()

MAX_ENTRIES: Final = 100_000
PRUNE_EVERY_S: Final = 60.0
GLOBAL: Final = "global"


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


class RateLimiter:
    """The four tables; every method takes `now` (monotonic seconds) so time is the caller's."""

    def __init__(self, config: RateLimitConfig, exempt: Sequence[IPNetwork] = ()) -> None:
        self.exempt = tuple(exempt)
        self.per_ip = TokenBuckets(config.per_ip_per_s, config.per_ip_burst)
        self.auth_failures = TokenBuckets(config.auth_failures_per_min / 60, config.auth_failures_per_min)
        self.per_strategy = TokenBuckets(config.per_strategy_per_s, config.per_strategy_burst)
        self.global_ = TokenBuckets(config.global_per_s, max(1.0, config.global_per_s))

    def is_exempt(self, source: str) -> bool:
        address = parse_address(source)
        return address is not None and contains(self.exempt, address)

    def check_source(self, source: str, now: float) -> None:
        """Before auth: refuse an address that has used up its failures, or when the global bucket is empty."""
        if not self.is_exempt(source):
            if wait := self.auth_failures.wait_s(source, now):
                raise _refused("auth_failures", wait, "too many failed authentications from this address")
            if wait := self.per_ip.wait_s(source, now):
                raise _refused("ip", wait, "too many unauthenticated requests from this address")
        if wait := self.global_.wait_s(GLOBAL, now):
            raise _refused("global", wait, "too many requests")

    def record_failure(self, source: str, now: float, *, auth_failed: bool) -> None:
        self.global_.charge(GLOBAL, now)
        if self.is_exempt(source):
            return
        self.per_ip.charge(source, now)
        if auth_failed:
            self.auth_failures.charge(source, now)

    def check_strategy(self, strategy: str, now: float) -> None:
        """After auth: one token of the strategy's bucket, then one of the global bucket."""
        if wait := self.per_strategy.take(strategy, now):
            raise _refused("strategy", wait, "too many alerts for this strategy")
        if wait := self.global_.take(GLOBAL, now):
            raise _refused("global", wait, "too many requests")


def _refused(scope: str, wait_s: float, message: str) -> RateLimitedError:
    retry_after = max(1, math.ceil(wait_s))
    log.warning("rate_limit.refused", reason=message, scope=scope, retry_after_s=retry_after)
    return RateLimitedError(f"rate limited: {message}, retry in {retry_after} s", retry_after_s=wait_s)


def strategy_of(raw: Mapping[str, Any], credential: str) -> str:
    """The per-strategy key: the credential's hash and the alert's sorted `EXCHANGE:SYMBOL` set."""
    legs = raw.get("order_legs")
    symbols = sorted(
        {
            f"{leg.get('exchange', '')}:{leg.get('symbol', '')}".upper()
            for leg in (legs if isinstance(legs, list) else [])
            if isinstance(leg, dict)
        }
    )
    digest = hashlib.sha256(credential.encode("utf-8")).hexdigest()[:16]
    return f"{digest}|{','.join(symbols)}"


def _guarded(config: RateLimitConfig, request: web.Request) -> bool:
    return config.enabled and request.method == "POST" and is_webhook(request)


def rate_limit(config: RateLimitConfig, credentials: Credentials) -> tuple[Middleware, Middleware]:
    """The two halves around `auth` and `dedupe`: (before_auth, after_auth), sharing `app[RATE_LIMITER]`."""

    @web.middleware
    async def before_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _guarded(config, request):
            return await handler(request)
        limiter = request.app[RATE_LIMITER]
        source = request.get(SOURCE_IP, "")
        limiter.check_source(source, request.app[CLOCK]())
        try:
            return await handler(request)
        except (RequestError, web.HTTPException) as e:
            if not request.get(AUTHENTICATED, False):
                limiter.record_failure(source, request.app[CLOCK](), auth_failed=isinstance(e, AuthError))
            raise

    @web.middleware
    async def after_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _guarded(config, request) or not request.get(AUTHENTICATED, False):
            return await handler(request)
        credential = credentials.path_token if PATH_TOKEN in request.match_info else credentials.secret
        raw: dict[str, Any] = request[RAW_ALERT]
        request.app[RATE_LIMITER].check_strategy(strategy_of(raw, credential), request.app[CLOCK]())
        return await handler(request)

    return before_auth, after_auth


async def rate_limit_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the bucket tables, in memory (nothing to close; idle buckets are pruned as keys arrive).

    TradingView's own addresses are exempt from the per-address limits when the allowlist is on (see above).
    """
    config = app[CONFIG]
    exempt = parse_networks(config.ip_allowlist.allow) if config.ip_allowlist.enabled else ()
    app[RATE_LIMITER] = RateLimiter(config.rate_limit, exempt)
    yield
