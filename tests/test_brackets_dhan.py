"""Brackets on Dhan, end to end: the real dhanhq client against the fake Dhan API. A bracket leg is one Super
Order; Dhan's one-cancels-other and trailing (moved on by the test as the exchange would) reach the journal
through order follow-up; `cancel_order` and EXIT_ALL cancel the whole super order."""

from __future__ import annotations

import asyncio
import csv
import shutil
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from fake_dhan import CLIENT_ID, TOKEN, FakeDhan, Misbehave
from helpers import alert, leg, with_accounts

from tvbridge.config import FollowupConfig
from tvbridge_brokers.dhan.instruments import sample_master_path

if TYPE_CHECKING:
    from pathlib import Path

    from helpers import ClientFactory

    from tvbridge.config import Config

ADMIN = "admin-token-for-dhan-bracket-tests-0123456"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
WAIT_S = 15.0


@pytest.fixture
async def fake_dhan() -> AsyncIterator[FakeDhan]:
    fake = FakeDhan()
    await fake.start()
    yield fake
    await fake.close()


def dhan_config(config: Config, fake: FakeDhan, tmp_path: Path) -> Config:
    """A live Dhan account on the fake (a copy of the sample master: live refuses the shipped file itself)."""
    master = tmp_path / "master.csv"
    shutil.copyfile(sample_master_path(), master)
    account = {
        "broker": "dhan",
        "client_id": CLIENT_ID,
        "access_token": TOKEN,
        "live": True,
        "base_url": fake.base_url,
        "instruments_path": str(master),
        "timeout_s": 5,
        "max_orders_per_s": 1000,
    }
    followup = FollowupConfig(first_interval_s=0.05, max_interval_s=0.2, max_lookups_per_s=50)
    config = with_accounts(config, {"dhan": account})
    return attrs.evolve(config, server=attrs.evolve(config.server, admin_token=ADMIN), followup=followup)


def bracket(**changes: str) -> dict[str, Any]:
    """Buy 10 RELIANCE limit 2900: target 3000, stop 2850."""
    fields = {"orderType": "LMT", "price": "2900", "target_price": "3000", "stoploss_price": "2850", **changes}
    return leg(**fields)


async def post(client: Any, raw: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/webhook", json=raw)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def states(parts: list[dict[str, Any]]) -> dict[str, str]:
    return {part["part"]: part["state"] for part in parts}


async def wait_for_parts(client: Any, alert_id: str, wanted: dict[str, str]) -> dict[str, Any]:
    """GET /alerts/<id> until its leg's bracket parts are in the `wanted` states (bounded)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            response = await client.get(f"/alerts/{alert_id}", headers=AUTH)
            assert response.status == 200
            (found,) = (await response.json())["legs"]
            if states(found["bracket"]) == wanted:
                return dict(found)
            await asyncio.sleep(0.02)  # the pace of asking, not synchronisation: the loop waits for the states


async def test_a_bracket_is_one_super_order_with_its_parts_in_every_record(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path
) -> None:
    client = await make_client(dhan_config(config, fake_dhan, tmp_path))
    body = await post(client, alert(bracket(trailing_jump="5")))
    (result,) = body["results"]
    assert result["status"] == "success"
    (sent,) = fake_dhan.super_placed()
    assert (sent["transactionType"], sent["orderType"], sent["securityId"], sent["quantity"]) == (
        "BUY",
        "LIMIT",
        "2885",
        10,
    )
    assert (sent["price"], sent["targetPrice"], sent["stopLossPrice"], sent["trailingJump"]) == (2900, 3000, 2850, 5)
    assert sent["correlationId"] == result["client_order_id"]
    assert fake_dhan.placed() == [], "no plain order: the entry never goes out without its stop"
    assert [(p["part"], p["price"]) for p in result["bracket"]] == [
        ("entry", "2900"),
        ("target", "3000"),
        ("stop_loss", "2850"),
    ]
    with config.data_path("webhook_orders.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["bracket"].startswith("entry ")
    assert "stop_loss pending 2850" in row["bracket"]
    await wait_for_parts(client, body["alert_id"], {"entry": "open", "target": "open", "stop_loss": "trigger_pending"})


@pytest.mark.parametrize(
    ("filled", "wanted"),
    [
        ("TARGET_LEG", {"entry": "filled", "target": "filled", "stop_loss": "cancelled"}),
        ("STOP_LOSS_LEG", {"entry": "filled", "target": "cancelled", "stop_loss": "filled"}),
    ],
)
async def test_one_exit_filling_cancels_the_other(
    make_client: ClientFactory,
    config: Config,
    fake_dhan: FakeDhan,
    tmp_path: Path,
    *,
    filled: str,
    wanted: dict[str, str],
) -> None:
    client = await make_client(dhan_config(config, fake_dhan, tmp_path))
    body = await post(client, alert(bracket()))
    order_id = body["results"][0]["order_id"]
    fake_dhan.super_trade_entry(order_id, price="2900")
    await wait_for_parts(
        client, body["alert_id"], {"entry": "filled", "target": "open", "stop_loss": "trigger_pending"}
    )
    fake_dhan.super_fill(order_id, filled)
    found = await wait_for_parts(client, body["alert_id"], wanted)
    assert found["order_state"] == "filled"


async def test_the_trailing_stop_shows_where_dhan_moved_it(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path
) -> None:
    client = await make_client(dhan_config(config, fake_dhan, tmp_path))
    body = await post(client, alert(bracket(trailing_jump="10")))
    order_id = body["results"][0]["order_id"]
    fake_dhan.super_trade_entry(order_id, price="2900")
    fake_dhan.super_trail(order_id, stop=2870.0)
    async with asyncio.timeout(WAIT_S):
        while True:
            response = await client.get(f"/alerts/{body['alert_id']}", headers=AUTH)
            (found,) = (await response.json())["legs"]
            stop = next(p for p in found["bracket"] if p["part"] == "stop_loss")
            if stop["price"] == "2870":
                break
            await asyncio.sleep(0.02)  # the pace of asking, not synchronisation: the loop waits for the price
    assert stop["state"] == "trigger_pending"


async def test_cancel_order_cancels_the_whole_super_order(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path
) -> None:
    client = await make_client(dhan_config(config, fake_dhan, tmp_path))
    body = await post(client, alert(bracket()))
    order_id = body["results"][0]["order_id"]
    cancelled = await post(client, alert({"order_id": order_id}, alert_type="cancel_order"))
    assert cancelled["results"][0]["status"] == "success"
    assert fake_dhan.super_cancels() == [(order_id, "ENTRY_LEG")]
    assert [r.path for r in fake_dhan.requests if r.method == "DELETE" and r.path.startswith("/v2/orders")] == []
    await wait_for_parts(
        client, body["alert_id"], {"entry": "cancelled", "target": "cancelled", "stop_loss": "cancelled"}
    )


async def test_exit_all_cancels_the_exit_legs_before_closing(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path
) -> None:
    """The entry traded (long 10): EXIT_ALL cancels the target and stop legs, then sells the 10."""
    client = await make_client(dhan_config(config, fake_dhan, tmp_path))
    body = await post(client, alert(bracket()))
    order_id = body["results"][0]["order_id"]
    fake_dhan.super_trade_entry(order_id, price="2900")
    fake_dhan.set_position("2885", 10, average=2900.0)
    exit_body = await post(client, alert(leg(transactionType="S", quantity="", manage_position="EXIT_ALL")))
    (result,) = exit_body["results"]
    assert (result["status"], result["quantity"]) == ("success", "10"), result
    assert sorted(fake_dhan.super_cancels()) == [(order_id, "STOP_LOSS_LEG"), (order_id, "TARGET_LEG")]
    (closing,) = fake_dhan.placed()
    assert (closing["transactionType"], closing["quantity"]) == ("SELL", 10)
    cancel_at = next(i for i, r in enumerate(fake_dhan.requests) if r.method == "DELETE")
    sell_at = next(i for i, r in enumerate(fake_dhan.requests) if r.method == "POST" and r.path == "/v2/orders")
    assert cancel_at < sell_at, "the stops are cancelled before the position is closed"
    await wait_for_parts(client, body["alert_id"], {"entry": "filled", "target": "cancelled", "stop_loss": "cancelled"})


async def test_a_market_entry_without_a_reference_price_is_refused_unsent(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path
) -> None:
    client = await make_client(dhan_config(config, fake_dhan, tmp_path))
    body = await post(client, alert(bracket(orderType="MKT", price="0")))
    (result,) = body["results"]
    assert result["status"] == "failed"
    assert result["message"].startswith("price: a MKT entry with a bracket on Dhan needs the alert's price")
    assert fake_dhan.super_placed() == []
    assert fake_dhan.placed() == []


async def test_a_lost_placement_answer_is_resolved_from_the_super_order_list(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path
) -> None:
    """Dhan takes the super order and the connection drops: tvbridge finds it by correlation id in the super
    order list and reports it placed, with its parts; it is never sent twice."""
    fake_dhan.next_reply("super_place", Misbehave.drop_after_taking_order())
    client = await make_client(dhan_config(config, fake_dhan, tmp_path))
    body = await post(client, alert(bracket()))
    (result,) = body["results"]
    assert result["status"] == "success", result
    assert "found by correlation id" in result["message"]
    assert list(fake_dhan.super_orders) == [result["order_id"]]
    assert len(fake_dhan.super_placed()) == 1
    assert [p["part"] for p in result["bracket"]] == ["entry", "target", "stop_loss"]


async def test_dry_run_shows_the_super_order_it_would_place(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path
) -> None:
    dry = dhan_config(config, fake_dhan, tmp_path)
    dry = attrs.evolve(dry, accounts={"dhan": {**dry.accounts["dhan"], "live": False}})
    client = await make_client(dry)
    body = await post(client, alert(bracket()))
    (result,) = body["results"]
    assert result["status"] == "test_mode"
    assert "place_super_order(" in result["message"]
    assert '"targetPrice":3000.0' in result["message"]
    assert fake_dhan.super_placed() == []
