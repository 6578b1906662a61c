"""The broker plugin interface: the whole surface a plugin author reads.

A broker plugin is a class registered under the entry point group `tvbridge.brokers` (the entry point's name is
what users write as `broker = "..."` in `[accounts.NAME]`). tvbridge builds one instance per account with
`from_settings(settings, context)`, calls `start()` once before the first order and `aclose()` once at shutdown.

Rules every plugin keeps, because real money depends on them:

* `place()` is idempotent on `request.client_order_id`: asked twice for the same id, it must not place twice
  (look the order up first, or let the broker reject the duplicate id).
* A call whose outcome is not known (timeout, dropped connection after sending) raises
  `BrokerUnknownOutcomeError`, never `BrokerRejectedError`: tvbridge then asks `lookup()` before any retry.
* Errors are raised as the types below; anything else is treated as an unknown outcome.
* No secret (token, password) in an exception message, a result message or a log line.

Errors::

    BrokerError
    +-- BrokerRejectedError        the broker refused the order; nothing was placed
    +-- BrokerUnsupportedError     the leg asks for something this broker cannot do; nothing was sent
    +-- BrokerUnavailableError     transient: nothing was placed, a later try may work
    |   +-- BrokerAuthError        credentials expired or wrong; nothing was placed
    +-- BrokerUnknownOutcomeError  the order may or may not exist: resolve with lookup()
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Final, Protocol, Self, runtime_checkable

import attrs

from tvbridge.models import (
    CancelLeg,
    Exchange,
    Instrument,
    OrderLeg,
    OrderType,
    Product,
)

API_VERSION: Final = 1
"""Bumped when a change to this module would break existing plugins. A plugin declares the version it was
written for as the class attribute `api_version`; tvbridge refuses a plugin whose version differs."""

ENTRY_POINT_GROUP: Final = "tvbridge.brokers"


class BrokerError(Exception):
    """Base of every error a broker plugin raises; the message is shown to the trader, so no secrets."""


class BrokerRejectedError(BrokerError):
    pass


class BrokerUnsupportedError(BrokerError):
    pass


class BrokerUnavailableError(BrokerError):
    pass


class BrokerAuthError(BrokerUnavailableError):
    pass


class BrokerUnknownOutcomeError(BrokerError):
    pass


class OrderState(enum.StrEnum):
    """Where an order stands at the broker, as the broker reported it (never assumed)."""

    PENDING = "pending"
    OPEN = "open"
    TRIGGER_PENDING = "trigger_pending"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    DRY_RUN = "dry_run"
    """Validated and resolved, deliberately not sent (test mode)."""


@attrs.frozen(kw_only=True)
class BrokerContext:
    """What tvbridge tells a plugin about where it runs."""

    account: str
    data_dir: Path


@attrs.frozen(kw_only=True)
class OrderRequest:
    """Place `leg` on the account. `client_order_id` is deterministic (alert id + leg number), at most 25
    characters of `[A-Za-z0-9_-]`, and is the key for idempotency and `lookup()`."""

    client_order_id: str
    alert_id: str
    leg_number: int
    leg: OrderLeg


@attrs.frozen(kw_only=True)
class CancelRequest:
    alert_id: str
    leg_number: int
    leg: CancelLeg


@attrs.frozen(kw_only=True)
class OrderResult:
    """The broker's answer for one order. `message` is for the trader; `details` may hold what was sent
    (dry-run) or the broker's own status text."""

    order_id: str | None
    state: OrderState
    message: str = ""
    client_order_id: str | None = None
    filled_quantity: int = 0
    average_price: Decimal | None = None
    details: Mapping[str, object] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Capabilities:
    """What the broker can do; a leg outside it fails before anything is sent."""

    order_types: frozenset[OrderType] = frozenset(OrderType)
    products: frozenset[Product] = frozenset(Product)
    exchanges: frozenset[Exchange] = frozenset(Exchange)
    instruments: frozenset[Instrument] = frozenset(Instrument)
    cancel: bool = True
    live: bool = False
    """True when orders reach a real market (used for the weak-secret refusal and the README's warnings)."""


@attrs.frozen(kw_only=True)
class Health:
    ok: bool
    detail: str = ""


@runtime_checkable
class Broker(Protocol):
    """What every broker plugin class implements (class attributes `api_version`, `capabilities`)."""

    api_version: int

    @classmethod
    def from_settings(cls, settings: Mapping[str, object], context: BrokerContext) -> Self:
        """Build from the account's config table (minus `broker`). Raise `ValueError` naming the bad key."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def start(self) -> None:
        """Open sessions, load reference data; raise `BrokerError` if the account cannot work at all."""
        ...

    async def place(self, request: OrderRequest) -> OrderResult: ...

    async def cancel(self, request: CancelRequest) -> list[OrderResult]:
        """Cancel by `leg.order_id`, or every open order this plugin placed for `leg.symbol` (and `leg.side`)."""
        ...

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        """The order placed with this client order id, or None if the broker has none."""
        ...

    async def health(self) -> Health: ...

    async def aclose(self) -> None: ...


def check_supported(capabilities: Capabilities, leg: OrderLeg) -> None:
    """Raise `BrokerUnsupportedError` naming the field when the leg is outside the broker's capabilities."""
    checks = (
        ("orderType", leg.order_type, capabilities.order_types),
        ("productType", leg.product, capabilities.products),
        ("exchange", leg.exchange, capabilities.exchanges),
        ("instrument", leg.instrument, capabilities.instruments),
    )
    for field, value, allowed in checks:
        if value not in allowed:
            supported = ", ".join(sorted(allowed))
            msg = f"{field} {value} is not supported by this broker (supported: {supported})"
            raise BrokerUnsupportedError(msg)
