"""Refusals through the real app: logged for a sample, counted for all, what a client sent cut short (issue 23).

The sample's interval is ended by hand (`RefusalLog.summarize`, what its timer does every 10 s), so no test waits.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import attrs
from aiohttp import web
from aiohttp.test_utils import TestClient
from helpers import ClientFactory, alert, leg
from structlog.testing import capture_logs

from tvbridge.config import Config, IpAllowlistConfig
from tvbridge.keys import METRICS, REFUSALS
from tvbridge.refusals import LINES_PER_INTERVAL, LINES_PER_SOURCE

Client = TestClient[web.Request, web.Application]


async def behind_proxy(make_client: ClientFactory, config: Config) -> Client:
    """The app with the test client (127.0.0.1) as a trusted proxy, so `X-Forwarded-For` names the source."""
    return await make_client(attrs.evolve(config, ip_allowlist=IpAllowlistConfig(trusted_proxies=("127.0.0.1",))))


def lines(events: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in events if e["event"] == name]


def refusals(client: Client, status: str, reason: str) -> float:
    value = client.app[METRICS].registry.get_sample_value(
        "tvbridge_refusals_total", {"status": status, "reason": reason}
    )
    return value or 0.0


async def test_one_sources_refusals_are_logged_a_few_times_then_summarized(
    make_client: ClientFactory, config: Config
) -> None:
    """Ten junk bodies from one address: the first `LINES_PER_SOURCE` are logged in full (each with its access
    line), the rest are one `refusals.suppressed` line; the metric counts all ten."""
    client = await behind_proxy(make_client, config)
    with capture_logs() as events:
        for _ in range(10):
            response = await client.post("/webhook", data=b"junk", headers={"X-Forwarded-For": "198.51.100.1"})
            assert response.status == 400
        client.app[REFUSALS].summarize()
    assert len(lines(events, "http.request")) == LINES_PER_SOURCE
    assert len(lines(events, "request.refused")) == LINES_PER_SOURCE
    [summary] = lines(events, "refusals.suppressed")
    assert summary["count"] == 10 - LINES_PER_SOURCE
    assert summary["by_status"] == {"400": 10 - LINES_PER_SOURCE}
    assert summary["top_sources"] == {"198.51.100.1": 10 - LINES_PER_SOURCE}
    assert summary["log_level"] == "warning"
    assert refusals(client, "400", "bad_request") == 10


async def test_all_sources_together_are_capped_per_interval(make_client: ClientFactory, config: Config) -> None:
    """A flood from more addresses than the interval's budget: `LINES_PER_INTERVAL` refusals are logged, the
    others counted; the next interval logs again."""
    client = await behind_proxy(make_client, config)
    sources = [f"198.51.{n // 200}.{n % 200 + 1}" for n in range(LINES_PER_INTERVAL + 30)]
    with capture_logs() as events:
        for source in sources:
            response = await client.post("/webhook", json=alert(secret="wrong"), headers={"X-Forwarded-For": source})
            assert response.status == 401
        client.app[REFUSALS].summarize()
        await client.post("/webhook", json=alert(secret="wrong"), headers={"X-Forwarded-For": "203.0.113.1"})
    assert len(lines(events, "auth.failed")) == LINES_PER_INTERVAL + 1
    [summary] = lines(events, "refusals.suppressed")
    assert summary["count"] == 30
    assert summary["sources"] == 30
    assert len(summary["top_sources"]) == 5


async def test_refusals_of_authenticated_alerts_are_always_logged(make_client: ClientFactory, config: Config) -> None:
    """Only the secret's holder can cause a 422, and the trader needs each one: never sampled away."""
    client = await make_client(config)
    with capture_logs() as events:
        for _ in range(LINES_PER_SOURCE + 5):
            assert (await client.post("/webhook", json=alert(leg(quantity="-1")))).status == 422
    assert len(lines(events, "request.refused")) == LINES_PER_SOURCE + 5


async def test_values_a_client_sent_are_cut_in_answers_and_log_lines(
    make_client: ClientFactory, config: Config
) -> None:
    """A 3,000-character exchange is quoted in the 422 and its log line only in part; so is a 5,000-character
    path in the access line."""
    client = await make_client(config)
    with capture_logs() as events:
        response = await client.post("/webhook", json=alert(leg(exchange="X" * 3000)))
        missing = await client.get("/" + "p" * 5000)
    body = await response.json()
    assert response.status == 422
    [problem] = [line for line in body["errors"] if "exchange" in line]
    assert 500 <= len(problem) < 600
    assert "more characters]" in problem
    [refused] = lines(events, "request.refused")
    assert max(len(line) for line in refused["errors"]) < 600
    assert missing.status == 404
    [access] = [e for e in lines(events, "http.request") if e["status"] == 404]
    assert len(access["path"]) < 300
