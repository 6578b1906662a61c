"""The broker-call metrics count a paper order booked inside the alert's commit (`alerts/joined.py`) as they count
a `place()`: `tvbridge_broker_duration_seconds{operation="place"}` gets the booking's own time (not the commit
around it) and `tvbridge_broker_errors_total` the book's refusals, as a Prometheus scrape of `GET /metrics` shows.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
from helpers import alert, leg
from prometheus_client.parser import text_string_to_metric_families

from tvbridge.keys import JOINED

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.config import Config


@pytest.fixture(autouse=True)
def _sqlite_only(store_env: dict[str, str]) -> None:
    if store_env:
        pytest.skip("the paper book joins the SQLite journal only")


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


async def test_a_joined_booking_is_a_timed_broker_call(make_client: ClientFactory, config: Config) -> None:
    """Two paper alerts booked in their commits, the second refused by the book (a buy SL whose limit is under
    its trigger): two `place` calls in the histogram, their time within the alerts' own, one error counted."""
    client = await make_client(config)
    joined = client.app[JOINED]
    assert sorted(joined) == ["paper"]  # the account joined: these are bookings, not place() calls
    started = time.perf_counter()
    booked = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    assert (await booked.json())["status"] == "success"
    refused = await client.post(
        "/webhook", json=alert(leg(symbol="INFY", orderType="SL", price="90", triggerPrice="100"))
    )
    assert (await refused.json())["status"] == "failed"
    elapsed = time.perf_counter() - started
    text = await (await client.get("/metrics")).text()
    labels = {"account": "paper", "operation": "place"}
    assert sample(text, "tvbridge_broker_duration_seconds_count", **labels) == 2
    assert 0 < sample(text, "tvbridge_broker_duration_seconds_sum", **labels) < elapsed
    assert sample(text, "tvbridge_broker_errors_total", **labels, code="broker_rejected") == 1
