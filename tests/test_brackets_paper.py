"""Brackets end to end on paper: an entry with its target and stop, one-cancels-other, trailing, cancelled whole by
`cancel_order` and EXIT_ALL, shown part by part in the answer, the order log and `GET /alerts/<id>`; refused
before sending by a broker without the capability; wrong-side prices refused with a 422 naming the field.

Paper has no market feed: later alerts' prices move resting orders. A "probe" here is an intraday market order
on the same contract (its own position is another product), whose price is the market the bracket sees.
"""

from __future__ import annotations

import asyncio
import csv
import sqlite3
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from durability_server import scripted_orders
from helpers import SECRET, alert, leg, with_accounts
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tvbridge.brackets import parts_of
from tvbridge.broker import BrokerUnavailableError, OrderRequest
from tvbridge.config import FollowupConfig
from tvbridge.keys import BROKERS
from tvbridge.models import OrderLeg
from tvbridge.parsing import make_converter
from tvbridge_brokers.paper.book import Book

if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from pathlib import Path

    from helpers import ClientFactory

    from tvbridge.config import Config

ADMIN = "admin-token-for-bracket-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
WAIT_S = 15.0


def admin(config: Config) -> Config:
    followup = FollowupConfig(first_interval_s=0.05, max_interval_s=0.2, max_lookups_per_s=50)
    return attrs.evolve(config, server=attrs.evolve(config.server, admin_token=ADMIN), followup=followup)


def bracket(**changes: str) -> dict[str, Any]:
    """Buy 10 RELIANCE at market, price 100: target 110, stop 95."""
    fields = {"price": "100", "target_price": "110", "stoploss_price": "95", **changes}
    return leg(**fields)


async def post(client: Any, raw: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = await client.post("/webhook", json=raw)
    assert response.status == status, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def probe(client: Any, price: str, symbol: str = "RELIANCE") -> None:
    """An alert that brings `price` to the contract (an intraday market buy of 1)."""
    await post(client, alert(leg(symbol=symbol, quantity="1", productType="I", price=price)))


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


async def paper_orders(client: Any) -> dict[str, tuple[str, str | None]]:
    """order id -> (state, trigger price) as the paper book holds them."""
    paper: Any = client.app[BROKERS]["paper"]
    return {
        o.order_id: (o.state.value, None if o.trigger_price is None else str(o.trigger_price))
        for o in await paper.orders()
    }


async def test_target_fill_cancels_the_stop_and_every_record_shows_the_parts(
    make_client: ClientFactory, config: Config
) -> None:
    client = await make_client(admin(config))
    body = await post(client, alert(bracket()))
    (result,) = body["results"]
    assert (result["status"], result["order_state"]) == ("success", "filled")
    parts = result["bracket"]
    assert [(p["part"], p["state"], p["price"]) for p in parts] == [
        ("entry", "filled", "100"),
        ("target", "open", "110"),
        ("stop_loss", "trigger_pending", "95"),
    ]
    ids = {p["part"]: p["order_id"] for p in parts}
    with config.data_path("webhook_orders.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["bracket"] == (
        f"entry filled 100 {ids['entry']}; target open 110 {ids['target']}; stop_loss trigger_pending 95 {ids['stop_loss']}"
    )
    await probe(client, "111")
    found = await wait_for_parts(
        client, body["alert_id"], {"entry": "filled", "target": "filled", "stop_loss": "cancelled"}
    )
    assert found["order_state"] == "filled"
    book = await paper_orders(client)
    assert (book[ids["target"]][0], book[ids["stop_loss"]][0]) == ("filled", "cancelled")
    paper: Any = client.app[BROKERS]["paper"]
    delivery = [(p.product.value, p.net_quantity) for p in await paper.book_positions()]
    assert ("C", 10) not in delivery  # the target closed the bracket's position
    # a later fall through the old stop opens nothing: it was cancelled with the target's fill
    await probe(client, "90")
    assert ("C", -10) not in [(p.product.value, p.net_quantity) for p in await paper.book_positions()]


async def test_stop_fill_cancels_the_target(make_client: ClientFactory, config: Config) -> None:
    client = await make_client(admin(config))
    body = await post(client, alert(bracket()))
    await probe(client, "94")
    found = await wait_for_parts(
        client, body["alert_id"], {"entry": "filled", "target": "cancelled", "stop_loss": "filled"}
    )
    stop = next(p for p in found["bracket"] if p["part"] == "stop_loss")
    assert stop["order_id"] is not None
    await probe(client, "120")  # through the old target: nothing more happens to the bracket
    book = await paper_orders(client)
    target = next(p for p in found["bracket"] if p["part"] == "target")
    assert book[target["order_id"]][0] == "cancelled"


async def test_a_short_bracket_and_its_trailing_stop_follow_the_price_down(
    make_client: ClientFactory, config: Config
) -> None:
    """Short at 100, stop 105, trailing 2: prices 97 and 95.5 move the stop to 103 then 101; it never moves back
    up at 99; a rise to 101 fills it and cancels the target at 80."""
    client = await make_client(admin(config))
    body = await post(
        client,
        alert(bracket(transactionType="S", target_price="80", stoploss_price="105", trailing_jump="2")),
    )
    stop_id = next(p["order_id"] for p in body["results"][0]["bracket"] if p["part"] == "stop_loss")
    await probe(client, "97")
    assert (await paper_orders(client))[stop_id] == ("trigger_pending", "103")
    await probe(client, "95.5")
    assert (await paper_orders(client))[stop_id] == ("trigger_pending", "101")
    await probe(client, "99")
    assert (await paper_orders(client))[stop_id] == ("trigger_pending", "101")
    await probe(client, "101")
    await wait_for_parts(client, body["alert_id"], {"entry": "filled", "target": "cancelled", "stop_loss": "filled"})


async def test_cancel_order_by_the_entry_id_cancels_every_part(make_client: ClientFactory, config: Config) -> None:
    """A limit entry not filled yet: its exits wait; cancelling the entry's id cancels all three."""
    client = await make_client(admin(config))
    body = await post(client, alert(bracket(orderType="LMT", price="98", target_price="110", stoploss_price="95")))
    parts = body["results"][0]["bracket"]
    assert states(parts) == {"entry": "open", "target": "pending", "stop_loss": "pending"}
    entry = parts[0]["order_id"]
    cancelled = await post(client, alert({"order_id": entry}, alert_type="cancel_order"))
    assert cancelled["results"][0]["status"] == "success"
    assert sorted(cancelled["results"][0]["order_id"].split(",")) == sorted(p["order_id"] for p in parts)
    await wait_for_parts(
        client, body["alert_id"], {"entry": "cancelled", "target": "cancelled", "stop_loss": "cancelled"}
    )
    await probe(client, "90")  # would have filled the entry and then its stop: nothing is left to fill
    book = await paper_orders(client)
    assert {book[p["order_id"]][0] for p in parts} == {"cancelled"}


async def test_cancel_order_by_symbol_cancels_the_live_exits_of_a_filled_bracket(
    make_client: ClientFactory, config: Config
) -> None:
    client = await make_client(admin(config))
    body = await post(client, alert(bracket()))
    cancelled = await post(client, alert({"symbol": "RELIANCE"}, alert_type="cancel_order"))
    assert cancelled["results"][0]["message"].startswith("cancelled 2 order(s)")
    await wait_for_parts(client, body["alert_id"], {"entry": "filled", "target": "cancelled", "stop_loss": "cancelled"})


async def test_exit_all_cancels_the_bracket_before_closing(make_client: ClientFactory, config: Config) -> None:
    """EXIT_ALL sells the 10 and cancels target and stop first: a later drop through 95 sells nothing more."""
    client = await make_client(admin(config))
    body = await post(client, alert(bracket()))
    with capture_logs(processors=[merge_contextvars]) as logs:
        exit_body = await post(
            client, alert(leg(transactionType="S", quantity="", price="102", manage_position="EXIT_ALL"))
        )
    (result,) = exit_body["results"]
    assert (result["status"], result["transaction"], result["quantity"]) == ("success", "S", "10")
    assert "cancelled bracket order(s) first" in result["message"]
    assert [(e["log_level"], e["alert_id"], e["leg"], e["account"], e["net_quantity"]) for e in exit_lines(logs)] == [
        ("info", exit_body["alert_id"], 1, "paper", 10)
    ]
    [line] = [e for e in logs if e["event"] == "leg.brackets_cancelled"]
    resting = {p["order_id"] for p in body["results"][0]["bracket"] if p["part"] != "entry"}
    assert (line["alert_id"], line["leg"], line["account"], set(line["order_ids"])) == (
        exit_body["alert_id"],
        1,
        "paper",
        resting,
    )
    assert result["message"].endswith(f"; cancelled bracket order(s) first: {', '.join(line['order_ids'])}")
    await wait_for_parts(client, body["alert_id"], {"entry": "filled", "target": "cancelled", "stop_loss": "cancelled"})
    await probe(client, "90")
    paper: Any = client.app[BROKERS]["paper"]
    assert [(p.product.value, p.net_quantity) for p in await paper.positions()] == [("I", 1)]


def exit_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "leg.exit_all"]


@pytest.mark.parametrize(
    ("error", "bug"),
    [(BrokerUnavailableError("bracket API down"), False), (RuntimeError("bracket table missing"), True)],
)
async def test_an_exit_whose_brackets_cannot_be_cancelled_first_sends_nothing(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch, error: Exception, bug: bool
) -> None:
    """EXIT_ALL cancels the brackets first; when the broker cannot, nothing is sent (the stops still protect the
    position, and a close without them gone could be reopened the wrong way by a stop): the leg fails with the
    reason under its account, number and client order id, in the answer and the journal; a plugin bug is logged
    with its trace."""
    client = await make_client(admin(config))
    await post(client, alert(bracket()))
    paper: Any = client.app[BROKERS]["paper"]

    async def cannot_cancel(leg: OrderLeg) -> list[Any]:
        raise error

    monkeypatch.setattr(paper, "cancel_brackets", cannot_cancel)
    with capture_logs(processors=[merge_contextvars]) as logs:
        body = await post(client, alert(leg(transactionType="S", quantity="", price="102", manage_position="EXIT_ALL")))

    alert_id = body["alert_id"]
    (result,) = body["results"]
    message = f"not sent: the brackets on RELIANCE could not be cancelled first ({error})"
    assert (result["status"], result["message"]) == ("failed", message)
    assert (result["account"], result["leg_number"], result["client_order_id"], result["symbol"]) == (
        "paper",
        1,
        f"{alert_id}-1",
        "RELIANCE",
    )
    response = await client.get(f"/alerts/{alert_id}", headers=AUTH)
    (journaled,) = (await response.json())["legs"]
    assert (journaled["state"], journaled["message"]) == ("failed", message)
    assert [(p.product.value, p.net_quantity) for p in await paper.positions()] == [("C", 10)]
    assert exit_lines(logs) == []
    bugs = [
        (e["log_level"], e["alert_id"], e["leg"], e["account"]) for e in logs if e["event"] == "broker.unexpected_error"
    ]
    assert bugs == ([("error", alert_id, 1, "paper")] if bug else [])


async def test_a_broker_without_brackets_refuses_the_leg_before_sending(
    make_client: ClientFactory, config: Config, tmp_path: Path
) -> None:
    """The scripted test broker declares no brackets: the leg fails naming the capability and nothing is sent."""
    client = await make_client(with_accounts(config, {"sim": {"broker": "scripted"}}))
    body = await post(client, alert(bracket()))
    (result,) = body["results"]
    assert result["status"] == "failed"
    assert "capability `brackets`" in result["message"]
    assert scripted_orders(tmp_path) == []


@pytest.mark.parametrize(
    ("changes", "field", "text"),
    [
        ({"stoploss_price": "101"}, "stoploss_price", "must be below the entry price 100"),
        ({"target_price": "99"}, "target_price", "must be above the entry price 100"),
        ({"transactionType": "S"}, "target_price", "must be below the entry price 100"),
        ({"transactionType": "S", "target_price": "90"}, "stoploss_price", "must be above the entry price 100"),
        ({"price": "0", "target_price": "90", "stoploss_price": "95"}, "target_price", "above the stoploss_price 95"),
        ({"stoploss_price": "", "trailing_jump": "1"}, "stoploss_price", "is required with trailing_jump"),
        ({"trailing_jump": "0"}, "trailing_jump", "must be > 0"),
    ],
)
async def test_wrong_side_prices_are_a_422_naming_the_field(
    make_client: ClientFactory, config: Config, changes: dict[str, str], field: str, text: str
) -> None:
    client = await make_client(config)
    raw = bracket(**changes)
    if raw.get("stoploss_price") == "":
        del raw["stoploss_price"]
    body = await post(client, alert(raw), status=422)
    lines = [line for line in body["errors"] if field in line]
    assert lines, body
    assert text in lines[0], lines
    paper: Any = client.app[BROKERS]["paper"]
    assert await paper.orders() == []


async def test_a_sound_market_bracket_without_a_price_is_accepted(make_client: ClientFactory, config: Config) -> None:
    """MKT with price 0 and no reference: only target vs stop is checked."""
    client = await make_client(config)
    body = await post(client, alert(bracket(price="0"), secret=SECRET))
    assert body["results"][0]["status"] == "success"


async def test_follow_up_resumes_an_open_bracket_after_a_restart(make_client: ClientFactory, config: Config) -> None:
    """The entry filled (final) but its exits rest: after a restart follow-up still follows the bracket (the
    journal's parts say it is open), so the target's later fill reaches GET /alerts/<id>."""
    first = await make_client(admin(config))
    body = await post(first, alert(bracket()))
    await first.close()
    second = await make_client(admin(config))
    await probe(second, "111")
    await wait_for_parts(second, body["alert_id"], {"entry": "filled", "target": "filled", "stop_loss": "cancelled"})


async def test_a_paper_database_from_before_brackets_is_upgraded(tmp_path: Path) -> None:
    """A version 1 paper file (no `brackets` table) gets the table when opened, and takes a bracket."""
    path = tmp_path / "paper.sqlite3"
    Book.open(path, {}).close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE brackets")
        db.execute("PRAGMA user_version = 1")
    db.close()
    book = Book.open(path, {})
    try:
        the_leg = make_converter().structure(bracket(), OrderLeg)
        result = book.place(OrderRequest(client_order_id="OLD-1", alert_id="OLD", leg_number=1, leg=the_leg))
        assert [p["part"] for p in parts_of(result.details)] == ["entry", "target", "stop_loss"]
    finally:
        book.close()
