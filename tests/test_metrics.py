"""`GET /metrics`: what a Prometheus scrape finds after alerts, who may scrape, and that promtool accepts it."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from helpers import SECRET, ClientFactory, alert, leg, with_accounts
from ops_tools import require_tool
from prometheus_client.parser import text_string_to_metric_families

from tvbridge.broker import BrokerAuthError
from tvbridge.config import Config, MetricsConfig
from tvbridge.keys import CREDENTIALS
from tvbridge.metrics import Metrics, instrument_brokers

Client = TestClient[web.Request, web.Application]


def scripted(config: Config, **settings: Any) -> Config:
    return with_accounts(config, {"s": {"broker": "scripted", **settings}})


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: Client, headers: dict[str, str] | None = None) -> str:
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return await response.text()


async def send_mix(client: Client) -> None:
    """3 placed, 1 repeat of the first, 1 rejected, 1 stale, 1 wrong secret, 1 invalid alert."""
    for n in range(3):
        assert (await client.post("/webhook", json=alert(leg(quantity=str(n + 1), meta=None)))).status == 200
    repeat = await client.post("/webhook", json=alert(leg(quantity="1", meta=None)))
    assert (await repeat.json())["status"] == "duplicate"
    assert (await client.post("/webhook", json=alert(leg(symbol="BAD")))).status == 200
    old = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stale = alert(leg(meta={"interval": "1D", "time": old, "timenow": old}))
    assert (await client.post("/webhook", json=stale)).status == 422
    assert (await client.post("/webhook", json=alert(secret="wrong-secret-xxxxxxxxxxxx"))).status == 401
    assert (await client.post("/webhook", json=alert(leg(quantity="-1")))).status == 422


async def test_counts_after_alerts(make_client: ClientFactory, config: Config) -> None:
    """After a mix of alerts the scrape counts them by outcome, legs by account/broker/status, refusals by
    reason, broker calls and their errors, requests by route, journal commits; no secret is in it."""
    client = await make_client(scripted(config, reject_symbols=["BAD"]))
    started = time.perf_counter()
    await send_mix(client)
    elapsed = time.perf_counter() - started
    text = await scrape(client)
    found = samples(text)
    # each order's time from its request's arrival to the broker call: 4 of them, within the alerts' own time
    assert value(found, "tvbridge_alert_to_broker_seconds_count") == 4
    assert 0 < value(found, "tvbridge_alert_to_broker_seconds_sum") < elapsed
    assert value(found, "tvbridge_alerts_total", outcome="success", strategy="default") == 3
    assert value(found, "tvbridge_alerts_total", outcome="failed", strategy="default") == 1
    assert value(found, "tvbridge_alerts_total", outcome="stale", strategy="default") == 1
    assert value(found, "tvbridge_alerts_total", outcome="duplicate", strategy="default") == 1
    assert value(found, "tvbridge_dedupe_hits_total") == 1
    assert (
        "tvbridge_alerts_total",
        frozenset({("outcome", "partial"), ("strategy", "default")}),
    ) in found  # every outcome, from 0
    assert (
        value(found, "tvbridge_legs_total", account="s", broker="scripted", status="success", strategy="default") == 3
    )
    assert value(found, "tvbridge_legs_total", account="s", broker="scripted", status="failed", strategy="default") == 1
    assert value(found, "tvbridge_refusals_total", status="401", reason="auth") == 1
    assert value(found, "tvbridge_refusals_total", status="422", reason="invalid_alert") == 1
    assert value(found, "tvbridge_broker_duration_seconds_count", account="s", operation="place") == 4
    assert value(found, "tvbridge_broker_errors_total", account="s", operation="place", code="broker_rejected") == 1
    assert value(found, "tvbridge_broker_token_valid", account="s") == 1
    assert value(found, "tvbridge_broker_up", account="s", broker="scripted") == 1
    webhook = {"route": "/webhook", "method": "POST"}
    assert value(found, "tvbridge_request_duration_seconds_count", **webhook, status="200") == 5
    assert value(found, "tvbridge_request_duration_seconds_count", **webhook, status="401") == 1
    assert value(found, "tvbridge_journal_commit_seconds_count") >= 5
    assert value(found, "tvbridge_build_info", version="0.1.0", python=found_python(found)) == 1
    assert value(found, "tvbridge_alerts_in_flight") == 0
    assert value(found, "tvbridge_halted") == 0
    assert all(name.startswith("tvbridge_") for name, _ in found)
    assert SECRET not in text
    assert client.app is not None
    assert client.app[CREDENTIALS].admin_token not in text


async def test_a_paper_order_booked_in_the_alerts_commit_counts_its_arrival_to_broker_time(
    make_client: ClientFactory, config: Config
) -> None:
    """The paper book is joined into the alert's commit on SQLite (`alerts/joined.py`), so its order reaches the
    broker inside that commit, not through `place()`: its time from arrival is in the histogram all the same, once
    per order, within the alert's own time."""
    client = await make_client(config)  # the paper account
    started = time.perf_counter()
    for n in range(2):
        response = await client.post("/webhook", json=alert(leg(quantity=str(n + 1), price="100")))
        assert (await response.json())["status"] == "success"
    elapsed = time.perf_counter() - started
    found = samples(await scrape(client))
    assert value(found, "tvbridge_alert_to_broker_seconds_count") == 2
    assert 0 < value(found, "tvbridge_alert_to_broker_seconds_sum") < elapsed


def found_python(found: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> str:
    (labels,) = [dict(labels) for name, labels in found if name == "tvbridge_build_info"]
    return labels["python"]


async def test_two_apps_in_one_process_count_apart(make_client: ClientFactory, config: Config) -> None:
    """Each app has its own registry: two servers in one process neither clash nor share counts. (Each has its own
    data directory: one SQLite journal serves one server, `serve` holds its lock.)"""
    first = await make_client(scripted(config))
    own_dir = attrs.evolve(config.server, data_dir=config.server.data_dir / "second")
    second = await make_client(scripted(attrs.evolve(config, server=own_dir)))
    await first.post("/webhook", json=alert())
    assert value(samples(await scrape(first)), "tvbridge_alerts_total", outcome="success", strategy="default") == 1
    assert value(samples(await scrape(second)), "tvbridge_alerts_total", outcome="success", strategy="default") == 0


def token_headers(client: Client, scheme: str) -> dict[str, str]:
    assert client.app is not None
    token = client.app[CREDENTIALS].admin_token
    if scheme == "Basic":
        return {"Authorization": "Basic " + base64.b64encode(f"prometheus:{token}".encode()).decode()}
    return {"Authorization": f"Bearer {token}"}


async def test_an_address_outside_the_allowlist_needs_the_admin_token(
    make_client: ClientFactory, config: Config
) -> None:
    """With loopback not allowed, a scrape without the token is 401; Bearer and Basic (token as password) work;
    the webhook secret does not."""
    client = await make_client(attrs.evolve(config, metrics=MetricsConfig(allow=())))
    response = await client.get("/metrics")
    assert response.status == 401
    assert "admin token" in (await response.json())["message"]
    assert (await client.get("/metrics", headers={"Authorization": f"Bearer {SECRET}"})).status == 401
    await scrape(client, token_headers(client, "Bearer"))
    await scrape(client, token_headers(client, "Basic"))


async def test_require_token_applies_to_allowed_addresses_too(make_client: ClientFactory, config: Config) -> None:
    """metrics.require_token = true: even loopback needs the token."""
    client = await make_client(attrs.evolve(config, metrics=MetricsConfig(require_token=True)))
    assert (await client.get("/metrics")).status == 401
    await scrape(client, token_headers(client, "Bearer"))


async def test_metrics_can_be_turned_off(make_client: ClientFactory, config: Config) -> None:
    """metrics.enabled = false: there is no /metrics route."""
    client = await make_client(attrs.evolve(config, metrics=MetricsConfig(enabled=False)))
    assert (await client.get("/metrics")).status == 404


class ExpiredBroker:
    async def place(self, _request: object) -> object:
        raise BrokerAuthError("access token expired")

    async def cancel(self, _request: object) -> object:
        error = BrokerAuthError("access token expired")
        error.code = "DH-901"  # type: ignore[attr-defined]  # a plugin's own attribute
        raise error


async def test_an_auth_error_marks_the_token_invalid() -> None:
    """A broker call refused for its credentials sets tvbridge_broker_token_valid to 0 and counts the error,
    by the exception's own short `code` when the plugin sets one, else by its class."""
    metrics = Metrics()
    broker = instrument_brokers({"dhan": ExpiredBroker()}, metrics)["dhan"]  # type: ignore[dict-item]  # a stub
    with pytest.raises(BrokerAuthError):
        await broker.place(None)  # type: ignore[arg-type]  # the stub takes anything
    with pytest.raises(BrokerAuthError):
        await broker.cancel(None)  # type: ignore[arg-type]  # same
    found = samples(metrics.exposition().decode())
    assert value(found, "tvbridge_broker_token_valid", account="dhan") == 0
    assert value(found, "tvbridge_broker_errors_total", account="dhan", operation="place", code="broker_auth") == 1
    assert value(found, "tvbridge_broker_errors_total", account="dhan", operation="cancel", code="DH-901") == 1


async def test_promtool_accepts_the_exposition(make_client: ClientFactory, config: Config) -> None:
    """`promtool check metrics` (Prometheus' own linter) finds no problem in a scrape taken after alerts."""
    promtool = require_tool("promtool", "prometheus")
    client = await make_client(scripted(config, reject_symbols=["BAD"]))
    await send_mix(client)
    text = await scrape(client)
    command = [promtool, "check", "metrics"]
    result = await asyncio.to_thread(subprocess.run, command, input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


async def test_halted_follows_the_kill_switch(make_client: ClientFactory, config: Config) -> None:
    """tvbridge_halted reads the kill switch's halt file at each scrape (the CLI can halt without the server):
    1 while it is on, 0 after resume."""
    from tvbridge.halt import clear_halt, halt_path, set_halt  # noqa: PLC0415 - only here

    client = await make_client(scripted(config))
    assert value(samples(await scrape(client)), "tvbridge_halted") == 0
    set_halt(halt_path(config.server.data_dir), reason="test", by="test")
    assert value(samples(await scrape(client)), "tvbridge_halted") == 1
    clear_halt(halt_path(config.server.data_dir))
    assert value(samples(await scrape(client)), "tvbridge_halted") == 0
