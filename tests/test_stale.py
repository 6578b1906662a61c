"""A multi-leg alert is as old as its oldest leg: one stale `meta.timenow` makes the whole alert stale.

Legs of one alert are one decision (a bracket, a hedge); placing the fresh legs of an alert whose other leg is
stale would half-execute an old signal. So the oldest stamp decides, wherever the stale leg stands.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from helpers import alert, leg, with_accounts

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.config import Config


def stamp(age_s: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


ROOTS = {"common parser": {}, "converter": {"comment": "an unknown key: the converter reads this alert"}}
"""The two parsers of an alert (`tvbridge/parsing.py`): the common shape's own, and the converter for the rest."""


@pytest.mark.sqlite_only
@pytest.mark.parametrize("root", ROOTS.values(), ids=ROOTS.keys())
@pytest.mark.parametrize("stale_at", [0, 1, 2], ids=["stale leg first", "stale leg in the middle", "stale leg last"])
async def test_one_stale_leg_makes_the_alert_stale(
    make_client: ClientFactory, config: Config, stale_at: int, root: dict[str, str]
) -> None:
    """Three legs, two fresh and one past `alerts.max_age_s`: 422 `stale`, no order at the broker, every leg
    `stale` in the answer, the order log and the journal; whichever parser read the alert."""
    config = with_accounts(config, {"s": {"broker": "scripted"}})
    client = await make_client(config)
    ages = [0.0, 0.0, 0.0]
    ages[stale_at] = config.alerts.max_age_s + 120
    legs = [
        leg(symbol=symbol, sort_order=str(n), meta={"timenow": stamp(age)})
        for n, (symbol, age) in enumerate(zip(["INFY", "TCS", "SBIN"], ages, strict=True), start=1)
    ]
    response = await client.post("/webhook", json=alert(*legs, **root))
    body = await response.json()

    assert response.status == 422
    assert body["status"] == "stale"
    found = re.fullmatch(r"alert is stale: meta.timenow is (\d+) s old, the limit is 300 s", body["message"])
    assert found, body["message"]
    assert 0 <= int(found[1]) - (config.alerts.max_age_s + 120) < 30  # the stale leg's age, not a fresh one's
    assert [r["status"] for r in body["results"]] == ["stale"] * 3
    assert not config.data_path("scripted-s.jsonl").exists()  # the broker received nothing
    with config.data_path("webhook_orders.csv").open(newline="") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["stale"] * 3
    with sqlite3.connect(config.data_path(config.journal.path)) as conn:
        [(status, response_json)] = conn.execute("SELECT status, response FROM alerts").fetchall()
    assert status == "stale"
    assert json.loads(response_json)["status"] == "stale"


async def test_fresh_legs_together_are_placed(make_client: ClientFactory, config: Config) -> None:
    """The same three legs, all within `alerts.max_age_s` (one near the limit), are placed: the check refuses
    what is old, not what is multi-leg."""
    config = with_accounts(config, {"s": {"broker": "scripted"}})
    client = await make_client(config)
    ages = [0.0, config.alerts.max_age_s - 60, 5.0]
    legs = [
        leg(symbol=symbol, sort_order=str(n), meta={"timenow": stamp(age)})
        for n, (symbol, age) in enumerate(zip(["INFY", "TCS", "SBIN"], ages, strict=True), start=1)
    ]
    response = await client.post("/webhook", json=alert(*legs))
    assert response.status == 200
    assert (await response.json())["status"] == "success"
    placed = config.data_path("scripted-s.jsonl").read_text().splitlines()
    assert [json.loads(line)["symbol"] for line in placed] == ["INFY", "TCS", "SBIN"]
