"""The daily order count after a crash (`max_orders_per_day`, `tvbridge/risk.py`): a leg recorded with its alert
and resent by crash recovery counts once, not twice. (A leg already journaled `sending` when the process died is
tested with a real `kill -9`: `tests/test_crash_recovery.py`, the daily limit it already counts in.)"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from helpers import ClientFactory, alert, leg, with_accounts

from tvbridge.alerts import flow
from tvbridge.config import RiskConfig

if TYPE_CHECKING:
    from tvbridge.config import Config


class KilledError(Exception):
    """The process dying at a crash point, in process: nothing after it runs."""


def sent(config: Config) -> list[str]:
    path = config.data_path("scripted-s.jsonl")
    return [json.loads(line)["symbol"] for line in path.read_text().splitlines()]


async def test_a_leg_resent_by_recovery_counts_once(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = attrs.evolve(with_accounts(config, {"s": {"broker": "scripted"}}), risk=RiskConfig(max_orders_per_day=3))
    client = await make_client(config)
    first = await (await client.post("/webhook", json=alert(leg(symbol="A")))).json()
    assert first["status"] == "success"  # the day's count is read: the next alert's leg is marked with it

    def crash(point: str) -> None:
        if point == "after_record":
            raise KilledError(point)

    monkeypatch.setattr(flow, "crash_point", crash)
    response = await client.post("/webhook", json=alert(leg(symbol="B")))  # journaled `pending`, never sent
    assert response.status == 500
    await client.close()
    monkeypatch.undo()

    client = await make_client(config)  # recovery sends B: the second order of the day
    assert sent(config) == ["A", "B"]
    third: dict[str, Any] = await (await client.post("/webhook", json=alert(leg(symbol="C")))).json()
    assert third["status"] == "success", third
    fourth = await (await client.post("/webhook", json=alert(leg(symbol="D")))).json()
    assert (
        fourth["results"][0]["message"] == "risk: 3 order(s) already sent today on account s; max_orders_per_day is 3"
    )
    assert sent(config) == ["A", "B", "C"]
