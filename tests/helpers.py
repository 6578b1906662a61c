"""Building blocks for tests: the guide's alert, one leg, a config with other accounts.

Tests import these from here, never from `conftest` (two conftest modules would shadow each other).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import attrs
from aiohttp import web
from aiohttp.test_utils import TestClient

from tvbridge.config import Config, RoutingConfig

SECRET = "test-secret-0123456789abcdef"
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
