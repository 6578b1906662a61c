"""The conformance kit's venue for the Dhan broker: the fake Dhan API (`fake_dhan.py`, beside this file), told
to refuse one symbol and to hang after taking an order for another, and a live account pointing at it.

    pytest --tvbridge-broker=dhan --tvbridge-broker-settings=tests/support/dhan-conformance.toml

The kit puts this directory on `sys.path`, so `fake_dhan` imports as it does in the Dhan tests.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

from fake_dhan import BODY, CLIENT_ID, TOKEN, FakeDhan, Misbehave

from tvbridge_brokers.dhan.instruments import sample_master_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from aiohttp import web

REJECTED_SECURITY_ID: Final = "11536"  # TCS: the fake answers DH-906, order rejected
HANGING_SECURITY_ID: Final = "1594"  # INFY: the fake takes the order, then never answers


class ConformanceFakeDhan(FakeDhan):
    """The fake, misbehaving by security id: the kit's contract is "this leg is refused / loses its answer".
    A market order it takes is traded at once and moves the position, as an exchange would (limit orders rest)."""

    async def _place(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        security_id = str(body.get("securityId"))
        if security_id == REJECTED_SECURITY_ID:
            self.next_reply("place", Misbehave.error("DH-906"))
        elif security_id == HANGING_SECURITY_ID:
            self.next_reply("place", Misbehave.hang_after_taking_order())
        known = set(self.orders)
        response = await super()._place(request)
        for order_id in set(self.orders) - known:
            if body.get("orderType") == "MARKET" and security_id != HANGING_SECURITY_ID:
                self._trade(order_id)
        return response

    def _trade(self, order_id: str) -> None:
        order = self.orders[order_id]
        quantity = int(order["quantity"]) * (1 if order["transactionType"] == "BUY" else -1)
        self.set_status(order_id, "TRADED", filledQty=abs(quantity), averageTradedPrice=100.0)
        key = (order["securityId"], order["exchangeSegment"], order["productType"])
        held = next(
            (p["netQty"] for p in self.positions if (p["securityId"], p["exchangeSegment"], p["productType"]) == key),
            0,
        )
        self.set_position(key[0], held + quantity, segment=key[1], product=key[2], average=100.0)


@contextlib.asynccontextmanager
async def venue(settings: Mapping[str, object]) -> AsyncIterator[dict[str, object]]:
    fake = ConformanceFakeDhan()
    await fake.start()
    with tempfile.TemporaryDirectory() as tmp:
        master = Path(tmp) / "master.csv"
        shutil.copyfile(sample_master_path(), master)  # a live account refuses the shipped sample itself
        try:
            yield {
                "client_id": CLIENT_ID,
                "access_token": TOKEN,
                "live": True,
                "base_url": fake.base_url,
                "instruments_path": str(master),
                "max_orders_per_s": 1000,
                **settings,
            }
        finally:
            await fake.close()
