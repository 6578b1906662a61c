"""Rate limits through the real server: per strategy, per source address for failures, global; 429 + Retry-After.

Time is a fake clock put in the app (`keys.CLOCK`), so refills are exact and no test sleeps.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from helpers import SECRET, alert, leg, with_accounts
from structlog.testing import capture_logs

from tvbridge.app import create_app
from tvbridge.config import Config, DedupeConfig, IpAllowlistConfig, RateLimitConfig
from tvbridge.keys import CLOCK, RATE_LIMITER
from tvbridge.middlewares.rate_limit import MAX_ENTRIES, PRUNE_EVERY_S, TokenBuckets, strategy_of
from tvbridge.secretstore import resolve_credentials
from tvbridge.store.postgres import PostgresStore

Client = TestClient[web.Request, web.Application]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def read(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start(aiohttp_client: Any, converter: Any, clock: FakeClock) -> Any:
    """Start the app with `rate_limit` overrides, the scripted broker, dedupe off and the fake clock."""

    async def go(config: Config, **limits: Any) -> Client:
        config = with_accounts(config, {"s": {"broker": "scripted"}})
        config = attrs.evolve(
            config,
            rate_limit=RateLimitConfig(**limits),
            dedupe=DedupeConfig(enabled=False),
            ip_allowlist=attrs.evolve(config.ip_allowlist, trusted_proxies=("127.0.0.1",)),
        )
        app = create_app(config, converter, resolve_credentials(config))
        app[CLOCK] = clock.read
        client: Client = await aiohttp_client(app)
        return client

    return go


def from_ip(address: str) -> dict[str, str]:
    """Requests from the test client come through 127.0.0.1, a trusted proxy here, on behalf of `address`."""
    return {"X-Forwarded-For": address}


async def test_burst_over_the_strategy_limit_gets_429_others_pass(start: Any, config: Config) -> None:
    """A strategy over its burst gets 429 with Retry-After; another strategy's alert still gets through."""
    client = await start(config, per_strategy_burst=3, per_strategy_per_s=0.5)
    for _ in range(3):
        assert (await client.post("/webhook", json=alert(leg(symbol="RELIANCE")))).status == 200
    with capture_logs() as events:
        refused = await client.post("/webhook", json=alert(leg(symbol="RELIANCE")))
    body = await refused.json()
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "2"  # one token at 0.5/s
    assert body["status"] == "error"
    assert body["message"].startswith("rate limited: too many alerts for this strategy")
    [line] = [e for e in events if e["event"] == "rate_limit.refused"]
    assert line["scope"] == "strategy"
    assert line["reason"]
    assert (await client.post("/webhook", json=alert(leg(symbol="INFY")))).status == 200


async def test_the_strategy_bucket_refills(start: Any, config: Config, clock: FakeClock) -> None:
    """After 1/rate seconds one more alert of the throttled strategy is accepted, and only one."""
    client = await start(config, per_strategy_burst=1, per_strategy_per_s=0.5)
    assert (await client.post("/webhook", json=alert())).status == 200
    assert (await client.post("/webhook", json=alert())).status == 429
    clock.now += 2.0
    assert (await client.post("/webhook", json=alert())).status == 200
    assert (await client.post("/webhook", json=alert())).status == 429


async def test_failed_auth_locks_the_address_out(start: Any, config: Config, clock: FakeClock) -> None:
    """After `auth_failures_per_min` wrong secrets even the right one gets 429, until the bucket refills."""
    client = await start(config, auth_failures_per_min=3)
    guesser = from_ip("198.51.100.7")
    with capture_logs() as events:
        for _ in range(3):
            assert (await client.post("/webhook", json=alert(secret="guess-1"), headers=guesser)).status == 401
        locked = await client.post("/webhook", json=alert(), headers=guesser)
    assert locked.status == 429
    assert locked.headers["Retry-After"] == "20"  # 3 per minute: one every 20 s
    assert "failed authentications" in (await locked.json())["message"]
    assert "guess-1" not in repr(events)
    assert SECRET not in repr(events)
    clock.now += 20.0
    assert (await client.post("/webhook", json=alert(), headers=guesser)).status == 200


async def test_one_flooding_address_does_not_starve_others(start: Any, config: Config) -> None:
    """Unauthenticated junk from one address is cut off there; other addresses, genuine or not, are served."""
    client = await start(config, per_ip_burst=2, per_ip_per_s=0.1)
    for _ in range(2):
        assert (await client.post("/webhook", data=b"junk", headers=from_ip("198.51.100.1"))).status == 400
    flood = await client.post("/webhook", data=b"junk", headers=from_ip("198.51.100.1"))
    assert flood.status == 429
    assert flood.headers["Retry-After"] == "10"
    assert (await client.post("/webhook", data=b"junk", headers=from_ip("198.51.100.2"))).status == 400
    assert (await client.post("/webhook", json=alert(), headers=from_ip("198.51.100.2"))).status == 200


async def test_genuine_alerts_do_not_use_the_address_bucket(start: Any, config: Config) -> None:
    """Every TradingView alert comes from a few addresses: authenticated alerts never drain a per-IP bucket."""
    client = await start(config, per_ip_burst=1, per_ip_per_s=0.01)
    for symbol in ("RELIANCE", "INFY", "TCS", "SBIN"):
        assert (await client.post("/webhook", json=alert(leg(symbol=symbol)))).status == 200


async def test_the_global_limit(start: Any, config: Config, clock: FakeClock) -> None:
    """Over `global_burst` every strategy waits; `global_per_s` lets one more through half a second later."""
    client = await start(config, global_per_s=2, global_burst=2)
    for symbol in ("RELIANCE", "INFY"):
        assert (await client.post("/webhook", json=alert(leg(symbol=symbol)))).status == 200
    refused = await client.post("/webhook", json=alert(leg(symbol="TCS")))
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    clock.now += 0.5
    assert (await client.post("/webhook", json=alert(leg(symbol="TCS")))).status == 200


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Poll `condition` (state another task updates on its own schedule) until true, within `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


async def test_two_instances_on_one_database_share_the_global_limit(
    start: Any, config: Config, clock: FakeClock, pg_url: str
) -> None:
    """With a second live instance on the same PostgreSQL store, this one allows half of `global_burst` and half
    of `global_per_s`: together they allow what the config says, not twice it. When the other's lease is gone,
    the whole limit is this instance's again."""
    config = attrs.evolve(config, journal=attrs.evolve(config.journal, url=pg_url, leader_lease_s=0.3))
    other = PostgresStore(pg_url, lease_s=30)
    await other.open()
    try:
        client = await start(config, global_per_s=2, global_burst=4)
        limiter = client.app[RATE_LIMITER]
        await until(lambda: limiter.instances == 2)  # the lease renewal counts the other instance within 0.1 s
        for symbol in ("RELIANCE", "INFY"):
            assert (await client.post("/webhook", json=alert(leg(symbol=symbol)))).status == 200
        refused = await client.post("/webhook", json=alert(leg(symbol="TCS")))
        assert refused.status == 429
        clock.now += 0.5  # half a token at 1/s (2/s shared by two)
        assert (await client.post("/webhook", json=alert(leg(symbol="TCS")))).status == 429
        clock.now += 0.5
        assert (await client.post("/webhook", json=alert(leg(symbol="TCS")))).status == 200
    finally:
        await other.close()
    await until(lambda: limiter.instances == 1)
    clock.now += 10
    for symbol in ("RELIANCE", "INFY", "TCS", "SBIN"):
        assert (await client.post("/webhook", json=alert(leg(symbol=symbol)))).status == 200


async def test_allowlisted_addresses_are_never_locked_out(start: Any, config: Config) -> None:
    """With the allowlist on, TradingView's own addresses are exempt from per-address lockouts."""
    config = attrs.evolve(config, ip_allowlist=IpAllowlistConfig(enabled=True, allow=("52.89.214.238",)))
    client = await start(config, auth_failures_per_min=1, per_ip_burst=1)
    tradingview = from_ip("52.89.214.238")
    for _ in range(3):
        assert (await client.post("/webhook", json=alert(secret="wrong"), headers=tradingview)).status == 401
    assert (await client.post("/webhook", json=alert(), headers=tradingview)).status == 200


async def test_rate_limits_can_be_turned_off(start: Any, config: Config) -> None:
    """With rate_limit.enabled = false nothing is throttled."""
    client = await start(config, enabled=False, per_strategy_burst=1)
    for _ in range(3):
        assert (await client.post("/webhook", json=alert())).status == 200


def test_strategy_key_is_the_strategy() -> None:
    """A named strategy is one bucket whatever its symbols; `default` (the global secret, shared by every script
    of a trader without strategy tables) is keyed by the sorted EXCHANGE:SYMBOL set; no secret is in a key."""
    two = alert(leg(symbol="INFY"), leg(symbol="TCS", sort_order="2"))
    swapped = alert(leg(symbol="TCS"), leg(symbol="INFY", sort_order="2"))
    assert strategy_of(two, "default") == strategy_of(swapped, "default")
    assert strategy_of(two, "default").endswith("|NSE:INFY,NSE:TCS")
    assert strategy_of(two, "default") != strategy_of(alert(leg(symbol="INFY")), "default")
    assert strategy_of(two, "momo") == strategy_of(alert(leg(symbol="SBIN")), "momo") == "strategy:momo"
    assert SECRET not in strategy_of(two, "default")


def test_idle_buckets_are_pruned() -> None:
    """Buckets that have refilled completely are dropped, and a table never exceeds MAX_ENTRIES keys."""
    buckets = TokenBuckets(rate_per_s=1.0, capacity=2)
    for n in range(100):
        buckets.take(n, now=0.0)
    assert len(buckets.buckets) == 100
    buckets.take("late", now=PRUNE_EVERY_S)  # all others refilled long ago
    assert set(buckets.buckets) == {"late"}
    flood = TokenBuckets(rate_per_s=0.001, capacity=1)
    for n in range(MAX_ENTRIES + 10):
        flood.take(n, now=1.0)
    assert len(flood.buckets) <= MAX_ENTRIES


async def send_all(client: Client, bodies: list[dict[str, Any]], headers: dict[str, str] | None = None) -> list[int]:
    """POST every body, 50 at a time; the statuses in order."""
    statuses: list[int] = []
    for start in range(0, len(bodies), 50):

        async def post(body: dict[str, Any]) -> int:
            async with client.post("/webhook", json=body, headers=headers) as response:
                await response.read()
                return response.status

        statuses += await asyncio.gather(*(post(body) for body in bodies[start : start + 50]))
    return statuses


async def test_a_traders_fan_out_is_never_refused_at_the_defaults(
    aiohttp_client: Any, converter: Any, config: Config
) -> None:
    """1,000 distinct authenticated alerts over 200 symbols at the same instant (the clock does not move): every
    one is accepted with the default limits (issue 23: 225 of 500 got 429 from the global bucket)."""
    config = with_accounts(config, {"s": {"broker": "scripted"}})
    app = create_app(config, converter, resolve_credentials(config))
    app[CLOCK] = FakeClock().read
    client: Client = await aiohttp_client(app)
    bodies = [alert(leg(symbol=f"S{n % 200:03d}"), id=f"bar-{n}") for n in range(1000)]
    statuses = await send_all(client, bodies)
    assert set(statuses) <= {200, 202}
    assert len(statuses) == 1000


async def test_a_runaway_strategy_is_still_stopped_at_the_defaults(start: Any, config: Config) -> None:
    """The same symbol far too often from one strategy: over `per_strategy_burst` it gets 429."""
    client = await start(config)
    statuses = await send_all(client, [alert(leg(symbol="RELIANCE"), id=f"loop-{n}") for n in range(30)])
    assert statuses.count(200) == RateLimitConfig().per_strategy_burst
    assert statuses.count(429) == 30 - RateLimitConfig().per_strategy_burst


async def test_junk_from_many_addresses_never_spends_the_genuine_alerts_budget(start: Any, config: Config) -> None:
    """Not JSON, wrong secrets and undecodable bodies from 300 addresses, 30 each, at one instant: each address
    is cut off at its own budget, and genuine alerts afterwards (from TradingView, from another address) still get
    200, never 429 (TradingView does not resend a 429)."""
    client = await start(config, global_per_s=1, global_burst=6)  # room for the 6 genuine alerts only
    junk: list[tuple[bytes, dict[str, str]]] = [
        (b"not json", {}),
        (json.dumps(alert(secret="wrong-secret-guess")).encode(), {}),
        (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}),
    ]
    statuses: list[int] = []
    for n in range(300):
        address = from_ip(f"198.51.{n // 250}.{n % 250 + 1}")
        for k in range(30):
            body, headers = junk[k % 3]
            async with client.post("/webhook", data=body, headers={**address, **headers}) as response:
                statuses.append(response.status)
    assert set(statuses) == {400, 401, 429}
    assert statuses.count(429) >= 300  # every address hit its own limit
    genuine = [from_ip("52.89.214.238"), from_ip("203.0.113.5")] * 3
    for n, source in enumerate(genuine):
        assert (await client.post("/webhook", json=alert(leg(symbol=f"S{n}")), headers=source)).status == 200


async def test_ipv6_sources_share_a_budget_per_64(start: Any, config: Config) -> None:
    """An IPv6 host owns a whole /64: junk from many of its addresses is counted together; another /64 is not."""
    client = await start(config, per_ip_burst=3, per_ip_per_s=0.01)
    statuses = [
        (await client.post("/webhook", data=b"junk", headers=from_ip(f"2001:db8:1:2::{n:x}"))).status
        for n in range(1, 6)
    ]
    assert statuses == [400, 400, 400, 429, 429]
    assert (await client.post("/webhook", data=b"junk", headers=from_ip("2001:db8:1:3::1"))).status == 400


async def test_the_ipv6_prefix_is_configurable(start: Any, config: Config) -> None:
    """With `limits.ipv6_prefix = 128` every IPv6 address has its own budget."""
    config = attrs.evolve(config, limits=attrs.evolve(config.limits, ipv6_prefix=128))
    client = await start(config, per_ip_burst=1, per_ip_per_s=0.01)
    for n in range(1, 4):
        assert (await client.post("/webhook", data=b"junk", headers=from_ip(f"2001:db8::{n:x}"))).status == 400


async def test_tradingview_is_never_locked_out_with_the_allowlist_off(start: Any, config: Config) -> None:
    """Anyone can make TradingView send wrong secrets to your URL: its addresses (`ip_allowlist.allow`) are not
    locked out by failed authentications also while the allowlist is off, and its genuine alert gets 200."""
    assert not config.ip_allowlist.enabled
    client = await start(config, auth_failures_per_min=1, per_ip_burst=1)
    tradingview = from_ip("52.89.214.238")
    for _ in range(5):
        assert (await client.post("/webhook", json=alert(secret="wrong"), headers=tradingview)).status == 401
    assert (await client.post("/webhook", json=alert(), headers=tradingview)).status in {200, 202}
    other = from_ip("198.51.100.9")
    assert (await client.post("/webhook", json=alert(secret="wrong"), headers=other)).status == 401
    assert (await client.post("/webhook", json=alert(), headers=other)).status == 429


async def test_a_body_that_does_not_decode_is_400_counted_against_its_source(start: Any, config: Config) -> None:
    """`Content-Encoding: gzip` with garbage was a 500; it is a 400 saying why, and spends its source's budget."""
    client = await start(config, per_ip_burst=2, per_ip_per_s=0.01)
    gzip = {**from_ip("198.51.100.3"), "Content-Encoding": "gzip"}
    for _ in range(2):
        response = await client.post("/webhook", data=b"\x1f\x8b\x08 not really gzip", headers=gzip)
        assert response.status == 400
        assert "Content-Encoding" in (await response.json())["message"]
    # the body limit (which reads the body) runs before the rate limit's check: the charge shows on the next one
    assert (await client.post("/webhook", data=b"{}", headers=from_ip("198.51.100.3"))).status == 429
    assert (await client.post("/webhook", data=b"{}", headers=from_ip("198.51.100.4"))).status == 401


async def test_a_body_too_large_is_counted_against_its_source(start: Any, config: Config) -> None:
    """413 happens before the rate limit's step; it is charged to the real client (behind the proxy) all the same."""
    client = await start(config, per_ip_burst=2, per_ip_per_s=0.01)
    big = b"x" * (config.limits.max_body_bytes + 1)
    for _ in range(2):
        assert (await client.post("/webhook", data=big, headers=from_ip("198.51.100.4"))).status == 413
    assert (await client.post("/webhook", data=b"{}", headers=from_ip("198.51.100.4"))).status == 429
    assert (await client.post("/webhook", data=b"{}", headers=from_ip("198.51.100.5"))).status == 401
