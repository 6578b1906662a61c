"""Builders shared by the Dhan tests: legs and requests with sensible defaults, the fixed exchange clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import attrs
from helpers import typed_leg

from tvbridge.broker import OrderRequest
from tvbridge.models import OrderLeg, Product
from tvbridge_brokers.dhan import DhanBroker
from tvbridge_brokers.dhan.broker import IST

MakeDhan = Callable[..., Awaitable["DhanBroker"]]
"""The `make_dhan` fixture: `await make_dhan(settings, account=...)` builds and starts a broker."""

NOW: Final = datetime(2026, 11, 25, 10, 0, tzinfo=IST)
"""A Wednesday: NIFTY's November future (2026-11-24) has expired, December's is the nearest."""

EQUITY: Final = typed_leg(product=Product.CNC)
"""A delivery (CNC) buy of 10 RELIANCE on NSE at market."""


def leg(**changes: Any) -> OrderLeg:
    for key in ("price", "trigger_price", "strike_price"):
        if isinstance(changes.get(key), str | int):
            changes[key] = Decimal(changes[key])
    return attrs.evolve(EQUITY, **changes)


def request(the_leg: OrderLeg | None = None, *, cid: str = "A1B2C3-1", alert_id: str = "A1B2C3") -> OrderRequest:
    return OrderRequest(client_order_id=cid, alert_id=alert_id, leg_number=1, leg=the_leg or EQUITY)


def now() -> datetime:
    return NOW
