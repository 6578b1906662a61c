"""One account's legs, in order, through the real app in-process against the scripted broker: what comes after a
leg that failed or whose outcome is unknown, each leg's own debug line, and the journal while a cancel leg is at
the broker.

In-process on purpose: these are the executor's `_run_account` and `_leg` (mutation testing's `executor-core`
group, scripts/mutation.sh, sees only tests that run the code in this process).
"""

from __future__ import annotations

import asyncio
import csv
import json
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from helpers import alert, leg, with_accounts
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tvbridge.config import AlertsConfig
from tvbridge.keys import BROKERS, CREDENTIALS

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.config import Config


def scripted(config: Config, **settings: Any) -> Config:
    return with_accounts(config, {"s": {"broker": "scripted", **settings}})


def orders_received(config: Config) -> list[dict[str, Any]]:
    path = config.data_path("scripted-s.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def order_log(config: Config) -> list[dict[str, str]]:
    with config.data_path(config.order_log.file).open(newline="") as f:
        return list(csv.DictReader(f))


async def stored(client: Any, alert_id: str) -> dict[str, Any]:
    """`GET /alerts/<id>`, as an operator reads it (admin token)."""
    headers = {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}
    response = await client.get(f"/alerts/{alert_id}", headers=headers)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


@pytest.mark.parametrize(
    ("settings", "status", "reason"),
    [
        ({"reject_symbols": ["FIRST"]}, "failed", "leg 1 failed"),
        ({"unknown_symbols": ["FIRST"]}, "unknown", "leg 1 has an unknown outcome"),
    ],
)
async def test_after_a_leg_that_failed_or_is_unknown_every_later_leg_is_skipped(
    make_client: ClientFactory, config: Config, settings: dict[str, Any], status: str, reason: str
) -> None:
    """Leg 1 of four is refused (or its outcome is lost): legs 2, 3 and 4 are each answered `skipped` with why,
    written to the order log, and never sent. Not only the next leg: every later one is in the answer, so the
    trader sees the whole alert and none of it goes to the broker."""
    config = scripted(config, **settings)
    client = await make_client(config)
    symbols = ["FIRST", "SECOND", "THIRD", "FOURTH"]
    legs = [leg(symbol=symbol, sort_order=str(n)) for n, symbol in enumerate(symbols, start=1)]
    response = await client.post("/webhook", json=alert(*legs))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert [(r["leg_number"], r["symbol"], r["status"]) for r in body["results"]] == [
        (1, "FIRST", status),
        (2, "SECOND", "skipped"),
        (3, "THIRD", "skipped"),
        (4, "FOURTH", "skipped"),
    ]
    assert [r["message"] for r in body["results"][1:]] == [f"skipped: {reason}"] * 3
    assert orders_received(config) == []
    assert [(row["symbol"], row["status"]) for row in order_log(config)] == [
        ("FIRST", status),
        ("SECOND", "skipped"),
        ("THIRD", "skipped"),
        ("FOURTH", "skipped"),
    ]
    record = await stored(client, body["alert_id"])
    assert [(lg["leg_number"], lg["state"]) for lg in record["legs"]] == [
        (1, status),
        (2, "skipped"),
        (3, "skipped"),
        (4, "skipped"),
    ], record["legs"]


async def test_each_sent_leg_has_its_debug_line_with_its_facts_and_time(
    make_client: ClientFactory, config: Config
) -> None:
    """docs/logging.md: at debug, `leg.done` for a leg placed and `leg.failed` for one that was not, each with the
    alert id, leg number, account, broker, status, order id, message and the leg's own milliseconds: the same
    time `alert.done` gives the leg (to the microsecond, more than nothing, and all the legs' times within the
    alert's)."""
    config = attrs.evolve(scripted(config, reject_symbols=["BAD"]), alerts=AlertsConfig(on_leg_failure="continue"))
    client = await make_client(config)
    symbols = ["GOOD", "BAD", "ALSO", "MORE", "LAST"]
    legs = [leg(symbol=symbol, sort_order=str(n)) for n, symbol in enumerate(symbols, start=1)]
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post("/webhook", json=alert(*legs))
    assert response.status == 200, await response.text()
    body = await response.json()
    alert_id = body["alert_id"]
    placed = {o["symbol"]: o["order_id"] for o in orders_received(config)}
    assert list(placed) == ["GOOD", "ALSO", "MORE", "LAST"]
    lines = [e for e in events if e["event"] in {"leg.done", "leg.failed"}]
    fields = ("event", "log_level", "alert_id", "leg", "account", "broker", "status", "order_id", "message")
    assert [{k: line.get(k) for k in fields} for line in lines] == [
        {
            "event": "leg.failed" if symbol == "BAD" else "leg.done",
            "log_level": "debug",
            "alert_id": alert_id,
            "leg": n,
            "account": "s",
            "broker": "scripted",
            "status": "failed" if symbol == "BAD" else "success",
            "order_id": placed.get(symbol),
            "message": "BAD is not tradeable here" if symbol == "BAD" else "filled",
        }
        for n, symbol in enumerate(symbols, start=1)
    ]
    [done] = [e for e in events if e["event"] == "alert.done"]
    times = [line["latency_ms"] for line in lines]
    assert times == [line["latency_ms"] for line in done["legs"]]
    for time_ms in times:
        assert isinstance(time_ms, float), times
        assert time_ms > 0, times
        assert time_ms == round(time_ms, 3), times  # milliseconds to the microsecond
    assert sum(times) <= done["latency_ms"] + 0.001 * len(times), (times, done["latency_ms"])


async def test_while_a_cancel_leg_is_at_the_broker_the_earlier_legs_result_is_journaled(
    make_client: ClientFactory, config: Config
) -> None:
    """A `cancel_order` alert of two legs: leg 2's `sending` mark carries leg 1's result (one commit a leg, as
    for order legs). While the broker holds leg 2's cancel, `GET /alerts/<id>` already shows leg 1's cancel done
    with the order it cancelled, so a crash then finds leg 1 settled instead of leaving it `sending`; once the
    broker answers, both legs are done and each order was cancelled once."""
    config = scripted(config, cancel_answer="cancel", hold_legs=[2])
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=60))
    client = await make_client(config)
    for symbol in ("INFY", "TCS"):
        placed = await client.post("/webhook", json=alert(leg(symbol=symbol)))
        assert placed.status == 200, await placed.text()
    order_ids = {o["symbol"]: o["order_id"] for o in orders_received(config)}
    broker: Any = client.app[BROKERS]["s"]  # the scripted broker, behind its guard
    cancels = alert({"symbol": "INFY"}, {"symbol": "TCS", "sort_order": "2"}, alert_type="cancel_order")
    response = asyncio.create_task(client.post("/webhook", json=cancels))
    try:
        async with asyncio.timeout(10):  # bounded: the broker has leg 2's cancel once leg 1's is answered
            await broker.holding.wait()
        [alert_id] = {request.alert_id for request in broker.cancel_requests}
        record = await stored(client, alert_id)
        assert [(lg["leg_number"], lg["state"], lg["order_id"]) for lg in record["legs"]] == [
            (1, "cancelled", order_ids["INFY"]),
            (2, "sending", None),
        ], record["legs"]
    finally:
        broker.release()
        answer = await response
    assert answer.status == 200, await answer.text()
    body = await answer.json()
    assert [(r["leg_number"], r["status"], r["order_id"]) for r in body["results"]] == [
        (1, "success", order_ids["INFY"]),
        (2, "success", order_ids["TCS"]),
    ]
    assert [(r.leg_number, r.leg.symbol) for r in broker.cancel_requests] == [(1, "INFY"), (2, "TCS")]
