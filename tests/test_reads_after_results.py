"""A strategy's share and its open orders are read from the journal's results, which the answer does not wait
for (`Journal.record_results`, issue 22): the readers must wait for results already handed over, or an exit
that follows an entry closely finds nothing to close."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from helpers import alert
from test_strategies import (
    ALPHA,
    MONDAY_10,
    Clock,
    exit_all,
    intraday,
    make_config_fixture,  # noqa: F401 - the `make_config` fixture, used by name
    net,
    post,
    start,
)

from tvbridge.journal import Journal
from tvbridge.keys import SQUARE_OFF

pytestmark = pytest.mark.sqlite_only  # holds the SQLite journal's group commit back (slow_results)

if TYPE_CHECKING:
    from test_strategies import MakeConfig


def slow_results(monkeypatch: pytest.MonkeyPatch, *readers: str) -> None:
    """Results wait for their commit until one of `readers` is called (a results write queued behind a slow
    group commit, as under `synchronous = full`): a reader that does not wait for them reads without them."""
    committed = asyncio.Event()
    finish = Journal.finish_alert

    async def held(self: Journal, *args: Any, **kwargs: Any) -> None:
        await committed.wait()
        await finish(self, *args, **kwargs)

    monkeypatch.setattr(Journal, "finish_alert", held)
    for name in readers:
        read = getattr(Journal, name)

        async def releasing(self: Journal, *args: Any, _read: Any = read, **kwargs: Any) -> Any:
            committed.set()  # the results may commit from now on; the read must wait for them
            return await _read(self, *args, **kwargs)

        monkeypatch.setattr(Journal, name, releasing)


async def test_an_exit_right_after_the_entry_closes_it(
    aiohttp_client: Any, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_results(monkeypatch, "fills")
    client = await start(aiohttp_client, make_config())
    entry = await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    assert entry["results"][0]["status"] == "success"
    answer = await asyncio.wait_for(post(client, alert(exit_all(), secret=ALPHA)), 10)
    assert [(r["transaction"], r["quantity"]) for r in answer["results"]] == [("S", "10")]
    assert await net(client) == 0


async def test_square_off_right_after_a_limit_order_cancels_it(
    aiohttp_client: Any, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_results(monkeypatch, "fills", "strategy_orders")
    clock = Clock(MONDAY_10)
    client = await start(aiohttp_client, make_config(alpha='square_off_at = "15:15"'), clock)
    resting = await post(client, alert(intraday(orderType="LMT", price="2000", quantity="1"), secret=ALPHA))
    clock.at = MONDAY_10.replace(hour=15, minute=16)
    [report] = await asyncio.wait_for(client.app[SQUARE_OFF].run_due(), 10)
    assert [(r.order_type, r.order_id) for r in report.results] == [("CANCEL", resting["results"][0]["order_id"])]
