"""Building blocks for tests: the guide's alert, one leg, a config with other accounts.

Tests import these from here, never from `conftest` (two conftest modules would shadow each other).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
from aiohttp import web
from aiohttp.test_utils import TestClient
from pgcluster import SHARED_KEY

from tvbridge.config import Config, RoutingConfig
from tvbridge.models import Exchange, Instrument, OrderLeg, OrderType, Product, Side

SECRET = "test-secret-0123456789abcdef"
STORES = ("sqlite", "postgresql")
"""Both stores: a test module runs its tests on each with a `config` fixture of its own, params=STORES, that
returns `on_store(config, request)`."""


def on_store(config: Config, request: Any) -> Config:
    """`config` on the store `request.param` names: unchanged for SQLite, a new PostgreSQL database else."""
    if request.param != "postgresql":
        return config
    journal = attrs.evolve(config.journal, url=request.getfixturevalue("pg_url"), shared_secret_key=SHARED_KEY)
    return attrs.evolve(config, journal=journal)


ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def leg(**overrides: Any) -> dict[str, Any]:
    """One order leg as the guide's alert template sends it (all strings)."""
    base: dict[str, Any] = {
        "transactionType": "B",
        "orderType": "MKT",
        "quantity": "10",
        "exchange": "NSE",
        "symbol": "RELIANCE",
        "instrument": "EQ",
        "productType": "C",
        "sort_order": "1",
        "price": "0",
        "meta": {"interval": "1D", "time": "2025-11-20T09:15:00Z", "timenow": now_iso()},
    }
    base.update(overrides)
    return base


def alert(
    *legs: dict[str, Any], secret: str = SECRET, alert_type: str = "multi_leg_order", **root: Any
) -> dict[str, Any]:
    return {"secret": secret, "alertType": alert_type, "order_legs": list(legs) or [leg()], **root}


def with_accounts(config: Config, accounts: dict[str, dict[str, Any]], routes: list[str] | None = None) -> Config:
    return attrs.evolve(config, accounts=accounts, routing=RoutingConfig(accounts=tuple(routes or accounts)))


@contextlib.contextmanager
def in_time_zone(name: str) -> Iterator[None]:
    """The process's local time zone set to `name` (as on a server outside UTC) for the block, then put back."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@contextlib.contextmanager
def refusing_writes(path: Path) -> Iterator[None]:
    """While inside: this process's open descriptor of `path` leads to /dev/full, so every write to it fails with
    ENOSPC as on a full disk (also as root, where permissions stop nothing). Afterwards it leads nowhere useful:
    for files the code under test is done with writing."""
    [descriptor] = [link for link in Path("/proc/self/fd").iterdir() if link.resolve() == path.resolve()]
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, int(descriptor.name))
        yield
    finally:
        os.close(full)


TYPED_LEG = OrderLeg(
    side=Side.BUY,
    order_type=OrderType.MARKET,
    quantity=10,
    exchange=Exchange.NSE,
    symbol="RELIANCE",
    instrument=Instrument.EQUITY,
    product=Product.INTRADAY,
)


def typed_leg(**changes: Any) -> OrderLeg:
    """A parsed order leg, as a broker plugin gets it: a buy of 10 RELIANCE on NSE at market, intraday; `changes`
    overrides any field (typed Any: each test passes the few fields it is about)."""
    return attrs.evolve(TYPED_LEG, **changes)
