"""Order follow-up: an order the broker accepted is followed until it is final, and every change reaches the
journal (`GET /alerts/<id>`), `/status`, the metrics, the log and notifications.

Dhan through the real dhanhq client against the fake Dhan API, which the tests move on as an exchange would
(`trade`, `reject`); paper through its own resting limit orders. Waits are for a condition, bounded.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from aiohttp import web
from fake_dhan import CLIENT_ID, TOKEN, FakeDhan
from helpers import SECRET, alert, leg, with_accounts
from notify_sink import Sink, running_sink
from server_process import ServerProcess
from structlog.testing import capture_logs

from tvbridge.config import FollowupConfig, NotifyConfig
from tvbridge.keys import FOLLOWUP
from tvbridge_brokers.dhan.instruments import sample_master_path

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp.test_utils import TestClient
    from helpers import ClientFactory

    from tvbridge.config import Config

ADMIN = "admin-token-for-followup-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
WAIT_S = 15.0
FAST = FollowupConfig(first_interval_s=0.05, max_interval_s=0.2, max_lookups_per_s=50)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    """A chat API on loopback: the notifications the operator would get."""
    async with running_sink() as running:
        yield running


@pytest.fixture
async def fake_dhan() -> AsyncIterator[FakeDhan]:
    fake = FakeDhan()
    await fake.start()
    yield fake
    await fake.close()


def admin(config: Config, followup: FollowupConfig = FAST, **changes: Any) -> Config:
    server = attrs.evolve(config.server, admin_token=ADMIN)
    return attrs.evolve(config, server=server, followup=followup, **changes)


def dhan_config(config: Config, fake: FakeDhan, tmp_path: Path, **changes: Any) -> Config:
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
    return admin(with_accounts(config, {"dhan": account}), **changes)


async def get_leg(
    client: TestClient[web.Request, web.Application], alert_id: str, number: int | None = None
) -> dict[str, Any]:
    """The alert's leg `number`, or its only leg."""
    response = await client.get(f"/alerts/{alert_id}", headers=AUTH)
    assert response.status == 200
    record: dict[str, Any] = await response.json()
    legs: list[dict[str, Any]] = record["legs"]
    if number is not None:
        return next(found for found in legs if found["leg_number"] == number)
    (only,) = legs
    return only


async def wait_for_state(client: TestClient[web.Request, web.Application], alert_id: str, state: str) -> dict[str, Any]:
    """GET /alerts/<id> until its leg's `order_state` is `state` (bounded)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            found = await get_leg(client, alert_id)
            if found["order_state"] == state:
                return found
            await asyncio.sleep(0.02)  # the pace of asking, not synchronisation: the loop waits for the state


async def until_not_followed(client: TestClient[web.Request, web.Application], account: str) -> None:
    """Until follow-up let go of every order of `account` (it does so right after journaling the final state)."""
    followup = client.app[FOLLOWUP]
    async with asyncio.timeout(WAIT_S):
        while True:
            if not followup.followed(account):
                return
            await asyncio.sleep(0.01)  # the pace of asking, not synchronisation: the loop waits for the condition


async def place(client: TestClient[web.Request, web.Application], body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    response = await client.post("/webhook", json=body)
    answer: dict[str, Any] = await response.json()
    assert response.status == 200, answer
    (result,) = answer["results"]
    assert result["status"] == "success", result
    return answer["alert_id"], result


async def metrics_text(client: TestClient[web.Request, web.Application]) -> str:
    response = await client.get("/metrics", headers=AUTH)
    assert response.status == 200
    return await response.text()


async def test_dhan_order_traded_later_shows_filled_and_polling_stops(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path, sink: Sink
) -> None:
    """A market order Dhan answers TRANSIT is `pending` at first; when the exchange fills it later, GET
    /alerts/<id> shows `order_state: filled` at the leg's top level with the filled quantity and average price,
    the metrics count the change and stop following, `order_filled` notifies, and Dhan is asked no more."""
    notify = NotifyConfig(urls=(sink.url,), min_interval_s=0)
    client = await make_client(dhan_config(config, fake_dhan, tmp_path, notify=notify))
    alert_id, result = await place(client, alert(leg()))
    assert result["order_state"] == "pending"
    order_id = result["order_id"]
    cid = result["client_order_id"]
    first = await wait_for_state(client, alert_id, "open")  # Dhan's PENDING: resting at the exchange
    assert (first["filled_quantity"], first["average_price"]) == (0, None)

    with capture_logs() as logs:
        fake_dhan.trade(order_id, price="2901.5")
        filled = await wait_for_state(client, alert_id, "filled")
    assert (filled["filled_quantity"], filled["average_price"]) == (10, "2901.5")
    assert filled["state"] == "placed"
    assert filled["order_id"] == order_id
    assert filled["result"]["order_state"] == "pending", "the placement's answer stays as it was"
    changes = [e for e in logs if e["event"] == "order.state_changed"]
    assert [(e["previous"], e["state"], e["filled_quantity"]) for e in changes] == [("open", "filled", 10)]

    await until_not_followed(client, "dhan")
    text = await metrics_text(client)
    assert 'tvbridge_orders_followed{account="dhan"} 0.0' in text
    assert 'tvbridge_order_state_changes_total{account="dhan",state="filled"} 1.0' in text
    assert 'tvbridge_order_state_changes_total{account="dhan",state="open"} 1.0' in text

    (message,) = await sink.wait_for(1)
    assert "order filled" in message["title"]
    assert f"dhan leg 1 (B 10 RELIANCE): filled 10 at 2901.5 [alert {alert_id}, order {order_id}]" in message["message"]

    asked = fake_dhan.lookups(cid)
    followup = client.app[FOLLOWUP]
    assert await followup.check_due("dhan") is None  # a pass now: nothing to ask about
    assert fake_dhan.lookups(cid) == asked


async def test_dhan_order_rejected_after_acceptance_notifies(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path, sink: Sink
) -> None:
    """An order the exchange refuses after Dhan took it shows `order_state: rejected` with Dhan's reason, and
    the operator gets an `order_rejected` message naming the account, the leg and the reason."""
    notify = NotifyConfig(urls=(sink.url,), min_interval_s=0)
    client = await make_client(dhan_config(config, fake_dhan, tmp_path, notify=notify))
    alert_id, result = await place(client, alert(leg(orderType="LMT", price="2800")))
    with capture_logs() as logs:
        fake_dhan.reject(result["order_id"], "RMS: margin shortfall")
        rejected = await wait_for_state(client, alert_id, "rejected")
    assert rejected["filled_quantity"] == 0
    assert "REJECTED (RMS: margin shortfall)" in rejected["order_message"]
    (change,) = [e for e in logs if e["event"] == "order.state_changed" and e["state"] == "rejected"]
    assert change["log_level"] == "warning"
    (message,) = await sink.wait_for(1)
    assert "REJECTED" in message["title"]
    assert "dhan leg 1 (B 10 RELIANCE): rejected:" in message["message"]
    assert "RMS: margin shortfall" in message["message"]
    assert TOKEN not in str(message)
    assert 'tvbridge_order_state_changes_total{account="dhan",state="rejected"} 1.0' in await metrics_text(client)


async def test_follow_up_resumes_after_a_restart(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path
) -> None:
    """The server stops while an order rests at Dhan and the exchange fills it meanwhile; the next start, on
    the same data directory, reads the open order from the journal and records the fill."""
    dhan = dhan_config(config, fake_dhan, tmp_path)
    first = await make_client(dhan)
    alert_id, result = await place(first, alert(leg(orderType="LMT", price="2800")))
    await wait_for_state(first, alert_id, "open")
    await first.close()

    fake_dhan.trade(result["order_id"], price="2800")
    asked = fake_dhan.lookups(result["client_order_id"])
    with capture_logs() as logs:
        second = await make_client(dhan)
        filled = await wait_for_state(second, alert_id, "filled")
    assert (filled["filled_quantity"], filled["average_price"]) == (10, "2800.0")
    assert fake_dhan.lookups(result["client_order_id"]) > asked
    assert fake_dhan.placed() == [fake_dhan.placed()[0]], "the restart sent nothing again"
    assert [e["orders"] for e in logs if e["event"] == "followup.resumed"] == [1]


async def test_partial_fill_is_shown_and_still_followed(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path
) -> None:
    """PART_TRADED is `partially_filled` with the quantity so far; the order is followed on to its fill."""
    client = await make_client(dhan_config(config, fake_dhan, tmp_path))
    alert_id, result = await place(client, alert(leg(orderType="LMT", price="2800")))
    fake_dhan.trade(result["order_id"], price="2800", quantity=4)
    part = await wait_for_state(client, alert_id, "partially_filled")
    assert (part["filled_quantity"], part["average_price"]) == (4, "2800.0")
    assert client.app[FOLLOWUP].followed("dhan") == 1
    fake_dhan.trade(result["order_id"], price="2799.5")
    done = await wait_for_state(client, alert_id, "filled")
    assert (done["filled_quantity"], done["average_price"]) == (10, "2799.5")


@pytest.mark.parametrize("filling_leg", [1, 2])
async def test_paper_resting_limit_filled_by_a_later_alert_shows_filled(
    make_client: ClientFactory, config: Config, filling_leg: int
) -> None:
    """A paper BUY limit below the reference price rests `open`; a later alert whose price reaches it fills it,
    and GET /alerts/<first> shows it filled at the limit. The first look-up is a minute away, so only the paper
    broker's report of the orders it moved (`details["moved_orders"]`) can make it show this soon. The filling
    order is the later alert's first leg (on SQLite booked inside the alert's commit) or its second (sent)."""
    prices = {"RELIANCE": 2900, "TCS": 4000}
    paper = with_accounts(config, {"paper": {"broker": "paper", "prices": prices}})
    client = await make_client(admin(paper, FollowupConfig(first_interval_s=60, max_interval_s=60)))
    resting_id, resting = await place(client, alert(leg(orderType="LMT", price="2800")))
    assert resting["order_state"] == "open"
    assert (await get_leg(client, resting_id))["order_state"] == "open"

    filling = leg(orderType="LMT", price="2790", transactionType="S", sort_order=str(filling_leg))
    legs = [filling] if filling_leg == 1 else [leg(symbol="TCS", quantity="1"), filling]
    answer = await (await client.post("/webhook", json=alert(*legs))).json()
    assert [r["status"] for r in answer["results"]] == ["success"] * len(legs), answer
    later_id, later = answer["alert_id"], answer["results"][filling_leg - 1]
    assert later["order_state"] == "filled"
    filled = await wait_for_state(client, resting_id, "filled")
    assert (filled["filled_quantity"], filled["average_price"]) == (10, "2800")
    later_leg = await get_leg(client, later_id, filling_leg)
    assert (later_leg["order_state"], later_leg["filled_quantity"], later_leg["average_price"]) == (
        "filled",
        10,
        "2900",
    )


async def test_status_shows_the_orders_current_state(make_client: ClientFactory, config: Config) -> None:
    """/status (JSON and HTML) shows each leg's order state with what is filled, and how many orders are
    followed."""
    paper = with_accounts(config, {"paper": {"broker": "paper", "prices": {"RELIANCE": 2900}}})
    client = await make_client(admin(paper))
    await place(client, alert(leg(orderType="LMT", price="2800")))
    await place(client, alert(leg(symbol="TCS", price="4000")))
    response = await client.get("/status", headers={**AUTH, "Accept": "application/json"})
    data = await response.json()
    states = sorted(
        (leg["symbol"], leg["order_state"], leg["filled_quantity"]) for a in data["alerts"] for leg in a["legs"]
    )
    assert states == [("RELIANCE", "open", 0), ("TCS", "filled", 10)]
    assert data["followup"] == {"orders": 1, "by_account": {"paper": 1}}
    page = await (await client.get("/status", headers=AUTH)).text()
    assert " filled 10 @ 4000)" in page
    assert "1 order(s) followed" in page


async def test_dhan_order_that_expires_is_expired_not_cancelled(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path
) -> None:
    """Dhan's EXPIRED (a protected market order that found no price, a day order at the close) is shown as
    `expired`: nobody cancelled it. It is final: the order is no longer followed."""
    client = await make_client(dhan_config(config, fake_dhan, tmp_path))
    alert_id, result = await place(client, alert(leg()))
    fake_dhan.set_status(result["order_id"], "EXPIRED")
    expired = await wait_for_state(client, alert_id, "expired")
    assert expired["filled_quantity"] == 0
    await until_not_followed(client, "dhan")
    assert 'tvbridge_order_state_changes_total{account="dhan",state="expired"} 1.0' in await metrics_text(client)


async def test_a_real_server_restart_resumes_follow_up(tmp_path: Path, fake_dhan: FakeDhan) -> None:
    """`python -m tvbridge serve` places a Dhan limit order that rests; it is stopped with SIGTERM, the exchange
    fills the order meanwhile, and the next process on the same data directory records the fill from the
    journal's work list (no alert needed), without sending anything again."""
    master = tmp_path / "master.csv"
    shutil.copyfile(sample_master_path(), master)
    (tmp_path / "config.toml").write_text(
        f'[server]\nadmin_token = "{ADMIN}"\n'
        "[followup]\nfirst_interval_s = 0.05\nmax_interval_s = 0.2\nmax_lookups_per_s = 50\n"
        '[routing]\naccounts = ["dhan"]\n'
        f'[accounts.dhan]\nbroker = "dhan"\nclient_id = "{CLIENT_ID}"\nlive = true\nbase_url = "{fake_dhan.base_url}"\n'
        f'instruments_path = "{master}"\ntimeout_s = 5\n'
    )
    env = {"WEBHOOK_SECRET": SECRET, "DHAN_ACCESS_TOKEN": TOKEN}

    async def get_leg_of(server: ServerProcess, alert_id: str) -> dict[str, Any]:
        status, _, record = await asyncio.to_thread(server.get, f"/alerts/{alert_id}", AUTH)
        assert status == 200, record
        legs: list[dict[str, Any]] = record["legs"]
        return legs[0]

    async def wait_for(server: ServerProcess, alert_id: str, state: str) -> dict[str, Any]:
        async with asyncio.timeout(WAIT_S):
            while True:
                found = await get_leg_of(server, alert_id)
                if found["order_state"] == state:
                    return found
                await asyncio.sleep(0.05)  # the pace of asking, not synchronisation

    first = await asyncio.to_thread(ServerProcess(tmp_path, env).start)
    try:
        body = json.dumps(alert(leg(orderType="LMT", price="2800"))).encode()
        status, _, answer = await asyncio.to_thread(first.post, "/webhook", body)
        assert status == 200, answer
        alert_id, order_id = answer["alert_id"], answer["results"][0]["order_id"]
        await wait_for(first, alert_id, "open")
    finally:
        assert await asyncio.to_thread(first.stop) == 0

    fake_dhan.trade(order_id, price="2800")
    second = await asyncio.to_thread(ServerProcess(tmp_path, env).start)
    try:
        filled = await wait_for(second, alert_id, "filled")
        assert (filled["filled_quantity"], filled["average_price"]) == (10, "2800.0")
    finally:
        assert await asyncio.to_thread(second.stop) == 0
    assert [e["orders"] for e in second.events() if e["event"] == "followup.resumed"] == [1]
    assert len(fake_dhan.placed()) == 1
    assert TOKEN not in second.output
