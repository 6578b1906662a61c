"""The dedupe guard through the real server: a repeat runs once, also under a burst and across a restart."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
from helpers import SECRET, STORES, ClientFactory, alert, leg, on_store, with_accounts
from server_process import ServerProcess
from structlog.testing import capture_logs

from tvbridge.config import Config, DedupeConfig, RateLimitConfig, ServerConfig
from tvbridge.keys import JOURNAL, STATE
from tvbridge.middlewares.dedupe import dedupe_key

WAIT_S = 10.0


@pytest.fixture(params=STORES)
def config(config: Config, request: pytest.FixtureRequest) -> Config:
    """Every test here runs on the SQLite journal and on PostgreSQL: the same behaviour on either store."""
    return on_store(config, request)


def scripted(config: Config, **settings: Any) -> Config:
    """Orders go to the test broker `scripted`, which writes each one it receives to a JSON-lines file."""
    return with_accounts(config, {"s": {"broker": "scripted", **settings}})


def orders_received(config: Config) -> list[dict[str, Any]]:
    path = config.data_path("scripted-s.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_key_ignores_secret_and_timenow_but_not_the_bar() -> None:
    """A resend (new timenow) or another secret is the same alert; another bar's time or price is not."""
    first = alert(leg(meta={"interval": "1D", "time": "2025-11-20T09:15:00Z", "timenow": "2025-11-20T09:15:01Z"}))
    resend = alert(leg(meta={"interval": "1D", "time": "2025-11-20T09:15:00Z", "timenow": "2025-11-20T09:15:07Z"}))
    resend["secret"] = "another"
    next_bar = alert(leg(meta={"interval": "1D", "time": "2025-11-21T09:15:00Z", "timenow": "2025-11-21T09:15:01Z"}))
    other_price = alert(leg(price="101", orderType="LMT", meta=first["order_legs"][0]["meta"]))
    assert dedupe_key(first) == dedupe_key(resend)
    assert dedupe_key(first) != dedupe_key(next_bar)
    assert dedupe_key(first) != dedupe_key(other_price)
    assert dedupe_key(first).startswith("body:")
    assert SECRET not in dedupe_key(first)


def test_key_is_the_traders_own_id_when_given() -> None:
    """With a root `id` (or `idempotency_key`) only that id counts, whatever the content."""
    assert dedupe_key(alert(leg(symbol="INFY"), id="a-1")) == dedupe_key(alert(leg(symbol="TCS"), id="a-1"))
    assert dedupe_key(alert(id="a-1")) != dedupe_key(alert(id="a-2"))
    assert dedupe_key(alert(idempotency_key="k")) == dedupe_key(alert(leg(quantity="3"), idempotency_key="k"))
    assert dedupe_key(alert(id="a-1")).startswith("id:")


async def test_repeat_gets_duplicate_with_the_first_results(make_client: ClientFactory, config: Config) -> None:
    """The same alert again: 200, status duplicate, duplicate_of the first id, its results; one order placed."""
    config = scripted(config)
    client = await make_client(config)
    raw = alert()
    first = await client.post("/webhook", json=raw)
    first_body = await first.json()
    assert first.status == 200
    assert first_body["status"] == "success"
    with capture_logs() as events:
        again = await client.post("/webhook", json={**raw, "order_legs": [leg()]})  # new timenow: a resend
    body = await again.json()
    assert again.status == 200
    assert body["status"] == "duplicate"
    assert body["duplicate_of"] == first_body["alert_id"]
    assert body["alert_id"] != first_body["alert_id"]
    assert body["first_status"] == "success"
    assert body["results"] == first_body["results"]
    assert again.headers["X-Request-ID"] == body["alert_id"]
    assert len(orders_received(config)) == 1
    [line] = [e for e in events if e["event"] == "dedupe.duplicate"]
    assert line["duplicate_of"] == first_body["alert_id"]
    assert line["reason"]


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_fifty_simultaneous_copies_place_one_order(
    make_client: ClientFactory, config: Config, synchronous: Literal["normal", "full"]
) -> None:
    """Fifty identical alerts sent at once: one runs, forty-nine are answered as its duplicates, and the broker
    (strict: it counts every placement) received one order; with `journal.synchronous = "full"` too, where every
    journal read is a hop to the journal's thread, so a claim taken after a journal look-up would come too late.

    With the default rate limits (a strategy burst of 20): the repeats cost no strategy tokens.
    """
    config = attrs.evolve(scripted(config), journal=attrs.evolve(config.journal, synchronous=synchronous))
    assert config.rate_limit == RateLimitConfig()
    client = await make_client(config)
    raw = alert()
    responses = await asyncio.wait_for(asyncio.gather(*(client.post("/webhook", json=raw) for _ in range(50))), WAIT_S)
    bodies = [await r.json() for r in responses]
    assert len(orders_received(config)) == 1, "fifty identical alerts placed more than one order"
    assert [r.status for r in responses] == [200] * 50
    statuses = sorted(b["status"] for b in bodies)
    assert statuses == ["duplicate"] * 49 + ["success"]
    [first] = [b for b in bodies if b["status"] == "success"]
    assert {b["duplicate_of"] for b in bodies if b["status"] == "duplicate"} == {first["alert_id"]}


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_fifty_copies_of_an_alert_whose_key_left_the_window_place_one_more_order(
    make_client: ClientFactory, config: Config, synchronous: Literal["normal", "full"]
) -> None:
    """An alert ran; its dedupe key has left the window since (cleared, as the background task clears it); then
    fifty identical copies arrive at once: it runs once more (one more order at the strict broker), forty-nine
    are its duplicates. The journal has seen this key, so every copy's look-up is a real query (with
    `journal.synchronous = "full"` a hop to the journal's thread, where the other copies run on): a copy that
    looked before claiming would find nothing and run too."""
    config = attrs.evolve(scripted(config), journal=attrs.evolve(config.journal, synchronous=synchronous))
    client = await make_client(config)
    raw = alert()
    assert (await (await client.post("/webhook", json=raw)).json())["status"] == "success"
    assert await client.app[JOURNAL].prune_dedupe_keys((datetime.now(UTC) + timedelta(seconds=1)).isoformat()) == 1
    responses = await asyncio.wait_for(asyncio.gather(*(client.post("/webhook", json=raw) for _ in range(50))), WAIT_S)
    bodies = [await r.json() for r in responses]
    assert len(orders_received(config)) == 2, "fifty copies of an alert out of its window placed more than one order"
    assert sorted(b["status"] for b in bodies) == ["duplicate"] * 49 + ["success"]
    [second] = [b for b in bodies if b["status"] == "success"]
    assert {b["duplicate_of"] for b in bodies if b["status"] == "duplicate"} == {second["alert_id"]}


async def test_duplicate_after_a_restart_is_caught(make_client: ClientFactory, config: Config) -> None:
    """A new server on the same data directory still knows the alert from its journal."""
    config = scripted(config)
    client = await make_client(config)
    raw = alert()
    first = await (await client.post("/webhook", json=raw)).json()
    await client.close()

    restarted = await make_client(config)
    response = await restarted.post("/webhook", json=raw)
    body = await response.json()
    assert response.status == 200
    assert body["status"] == "duplicate"
    assert body["duplicate_of"] == first["alert_id"]
    assert body["results"] == first["results"]
    assert len(orders_received(config)) == 1


async def test_repeat_while_the_first_runs_gets_202(make_client: ClientFactory, config: Config) -> None:
    """Past the deadline the first is answered 202; a repeat then gets 202 too, and 200 once the first is done."""
    config = scripted(config, delay_s=1.0)
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=0.2))
    client = await make_client(config)
    raw = alert()
    first = await client.post("/webhook", json=raw)
    assert first.status == 202
    first_id = (await first.json())["alert_id"]
    running = await client.post("/webhook", json=raw)
    body = await running.json()
    assert running.status == 202
    assert body["status"] == "duplicate"
    assert body["duplicate_of"] == first_id
    await asyncio.wait_for(asyncio.gather(*client.app[STATE].tasks), WAIT_S)
    done = await client.post("/webhook", json=raw)
    body = await done.json()
    assert done.status == 200
    assert body["first_status"] == "success"
    assert body["results"][0]["status"] == "success"
    assert len(orders_received(config)) == 1


async def test_a_refused_first_copy_is_not_remembered(make_client: ClientFactory, config: Config) -> None:
    """A stale alert is refused (422); the same alert resent with a fresh timenow runs."""
    config = scripted(config)
    client = await make_client(config)
    old = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = {"interval": "1D", "time": "2025-11-20T09:15:00Z"}
    stale = await client.post("/webhook", json=alert(leg(meta={**meta, "timenow": old})))
    assert stale.status == 422
    fresh = await client.post("/webhook", json=alert(leg(meta=meta)))
    assert fresh.status == 200
    assert (await fresh.json())["status"] == "success"
    assert len(orders_received(config)) == 1


async def test_invalid_first_copy_does_not_block_the_corrected_one(make_client: ClientFactory, config: Config) -> None:
    """An alert refused with 4xx leaves no claim: sending it again is judged again, not called a duplicate."""
    config = scripted(config)
    client = await make_client(config)
    raw = alert(leg(quantity="0"))
    assert (await client.post("/webhook", json=raw)).status == 422
    second = await client.post("/webhook", json=raw)
    assert second.status == 422
    assert (await second.json())["status"] == "error"


async def test_out_of_the_window_the_alert_runs_again(make_client: ClientFactory, config: Config) -> None:
    """Once the journal's key is pruned (out of the window) and a new server starts, the alert runs again."""
    config = scripted(config)
    client = await make_client(config)
    raw = alert()
    assert (await (await client.post("/webhook", json=raw)).json())["status"] == "success"
    journal = client.app[JOURNAL]
    cleared = await journal.prune_dedupe_keys((datetime.now(UTC) + timedelta(seconds=1)).isoformat())
    assert cleared == 1
    await client.close()
    restarted = await make_client(config)
    assert (await (await restarted.post("/webhook", json=raw)).json())["status"] == "success"
    assert len(orders_received(config)) == 2


async def test_a_rate_limited_first_copy_is_not_remembered(make_client: ClientFactory, config: Config) -> None:
    """A first copy refused 429 by its strategy's limit leaves no claim: the copy after the refill runs."""
    config = attrs.evolve(scripted(config), rate_limit=RateLimitConfig(per_strategy_burst=1, per_strategy_per_s=1e-6))
    client = await make_client(config)
    assert (await client.post("/webhook", json=alert(id="first"))).status == 200
    raw = alert(id="second")
    assert (await client.post("/webhook", json=raw)).status == 429
    assert (await client.post("/webhook", json=raw)).status == 429  # judged again, not "duplicate"
    assert len(orders_received(config)) == 1


async def test_a_copy_with_a_wrong_secret_is_refused_not_answered(make_client: ClientFactory, config: Config) -> None:
    """The key leaves the secret out, but auth runs first: a replay with a wrong secret gets 401, no results."""
    config = scripted(config)
    client = await make_client(config)
    raw = alert()
    assert (await client.post("/webhook", json=raw)).status == 200
    replay = await client.post("/webhook", json={**raw, "secret": "not-the-secret"})
    assert replay.status == 401
    assert "results" not in await replay.json()


async def test_journal_that_cannot_answer_means_503(make_client: ClientFactory, config: Config) -> None:
    """If the journal cannot tell whether the alert is a repeat, it is refused with 503 (resend), not run."""
    config = scripted(config)
    client = await make_client(config)
    await client.app[JOURNAL].close()
    response = await client.post("/webhook", json=alert())
    assert response.status == 503
    assert (await response.json())["message"].startswith("journal unreadable")
    assert orders_received(config) == []


def test_duplicate_after_a_process_restart(tmp_path: Path) -> None:
    """`tvbridge serve` stopped and started again on the same data directory still answers the repeat."""
    env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path)}
    body = json.dumps(alert()).encode()
    first_server = ServerProcess(tmp_path, env).start()
    try:
        status, _, first = first_server.post("/webhook", body)
    finally:
        assert first_server.stop() == 0
    assert status == 200
    second_server = ServerProcess(tmp_path, env).start()
    try:
        status, _, again = second_server.post("/webhook", body)
    finally:
        assert second_server.stop() == 0
    assert status == 200
    assert again["status"] == "duplicate"
    assert again["duplicate_of"] == first["alert_id"]
    assert again["results"] == first["results"]


async def test_dedupe_can_be_turned_off(make_client: ClientFactory, config: Config) -> None:
    """With dedupe.enabled = false every copy runs."""
    config = attrs.evolve(scripted(config), dedupe=DedupeConfig(enabled=False))
    client = await make_client(config)
    raw = alert()
    for _ in range(2):
        assert (await (await client.post("/webhook", json=raw)).json())["status"] == "success"
    assert len(orders_received(config)) == 2


async def test_different_bars_both_run(make_client: ClientFactory, config: Config) -> None:
    """Two alerts that differ in the bar's time are two alerts."""
    config = scripted(config)
    client = await make_client(config)
    for bar in ("2025-11-20T09:15:00Z", "2025-11-20T09:16:00Z"):
        raw = alert(leg(meta={"interval": "1", "time": bar}))
        assert (await (await client.post("/webhook", json=raw)).json())["status"] == "success"
    assert len(orders_received(config)) == 2


def test_defaults_are_the_contracts() -> None:
    """The dedupe window defaults to 60 s; TLS is off unless configured."""
    assert DedupeConfig().window_s == 60.0
    assert ServerConfig().tls_cert == ""
