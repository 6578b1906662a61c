"""The test doubles forgive nothing: a repeated client order id is a second order, as at a real broker that does
not deduplicate. The crash, unknown-outcome and recovery tests count orders there; if these doubles dropped a
repeat, a core that places twice would pass them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from dhan_support import request
from durability_server import scripted_orders
from fake_dhan import CLIENT_ID, TOKEN, FakeDhan
from tvbridge_testbrokers import ScriptedBroker

from tvbridge.broker import BrokerContext

if TYPE_CHECKING:
    from pathlib import Path


def scripted(tmp_path: Path, **settings: object) -> ScriptedBroker:
    return ScriptedBroker.from_settings(settings, BrokerContext(account="sim", data_dir=tmp_path))


async def test_scripted_places_a_repeat_again_and_lookup_finds_the_first(tmp_path: Path) -> None:
    """By default a second place() with one client order id is a second order (new order id, second line);
    lookup() finds the first; after a restart the broker still has both and numbers the next order after them."""
    broker = scripted(tmp_path)
    await broker.start()
    first = await broker.place(request(cid="A1-1"))
    second = await broker.place(request(cid="A1-1"))
    assert first.order_id != second.order_id
    assert [o["client_order_id"] for o in scripted_orders(tmp_path)] == ["A1-1", "A1-1"]
    found = await broker.lookup("A1-1")
    assert found is not None
    assert found.order_id == first.order_id

    restarted = scripted(tmp_path)
    await restarted.start()
    third = await restarted.place(request(cid="A2-1"))
    assert third.order_id not in {first.order_id, second.order_id}
    found = await restarted.lookup("A1-1")
    assert found is not None
    assert found.order_id == first.order_id


async def test_scripted_forgives_only_when_told(tmp_path: Path) -> None:
    """`forgive_repeats = true` (the conformance kit's setting) returns the first order for a repeat."""
    broker = scripted(tmp_path, forgive_repeats=True)
    await broker.start()
    first = await broker.place(request(cid="A1-1"))
    assert (await broker.place(request(cid="A1-1"))).order_id == first.order_id
    assert len(scripted_orders(tmp_path)) == 1


async def test_fake_dhan_keeps_a_repeated_correlation_id_as_a_second_order() -> None:
    """Two POST /orders with one correlationId: two order ids, two orders in the fake's book."""
    fake = FakeDhan()
    await fake.start()
    try:
        body = {"dhanClientId": CLIENT_ID, "correlationId": "A1-1", "transactionType": "BUY", "quantity": 1}
        headers = {"access-token": TOKEN, "client-id": CLIENT_ID}
        ids = []
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.post(f"{fake.base_url}/orders", json=body, headers=headers) as response:
                    assert response.status == 200
                    ids.append((await response.json())["orderId"])
        assert ids[0] != ids[1]
        assert sorted(fake.orders) == sorted(ids)
        assert [o["correlationId"] for o in fake.placed()] == ["A1-1", "A1-1"]
    finally:
        await fake.close()
