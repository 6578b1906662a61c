"""What the conformance kit is told about the plugin under test: `--tvbridge-broker` and the settings file.

Kept apart from the pytest hooks so the contract (the file's keys, their defaults, the errors for a bad file)
is plain code with plain tests.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import cattrs

from tvbridge.models import OrderLeg, OrderType
from tvbridge.parsing import make_converter

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager

    VenueFactory = Callable[[Mapping[str, object]], AbstractAsyncContextManager[Mapping[str, object]]]

DEFAULT_LEG: Final[Mapping[str, object]] = {
    "transactionType": "B",
    "orderType": "MKT",
    "quantity": "1",
    "exchange": "NSE",
    "symbol": "RELIANCE",
    "instrument": "EQ",
    "productType": "C",
    "price": "0",
}
TOP_KEYS: Final = frozenset({"venue", "call_timeout_s", "settings", "leg", "prices", "reject", "unknown_outcome"})


class SpecError(Exception):
    """The settings file is not usable; the message names the file and the key."""


@attrs.frozen(kw_only=True)
class KitSpec:
    broker: str
    settings: Mapping[str, object] = attrs.field(factory=dict)
    venue: str = ""
    call_timeout_s: float = 5.0
    leg: Mapping[str, object] = attrs.field(factory=lambda: dict(DEFAULT_LEG))
    limit_price: Decimal = Decimal(100)
    trigger_price: Decimal = Decimal(95)
    resting_price: Decimal | None = None
    reject: Mapping[str, object] | None = None
    unknown_outcome: Mapping[str, object] | None = None
    base_dir: Path = Path()

    def order_leg(self, order_type: OrderType = OrderType.MARKET, **overrides: object) -> OrderLeg:
        """A leg the venue accepts, of `order_type`, with alert-key `overrides`, parsed like a real alert's."""
        raw: dict[str, object] = {**self.leg, "orderType": order_type.value}
        if order_type in {OrderType.LIMIT, OrderType.STOP_LOSS}:
            raw["price"] = str(self.limit_price)
        if order_type in {OrderType.STOP_LOSS, OrderType.STOP_LOSS_MARKET}:
            raw["triggerPrice"] = str(self.trigger_price)
        raw.update(overrides)
        try:
            return make_converter().structure(raw, OrderLeg)
        except cattrs.BaseValidationError as e:
            lines = "; ".join(cattrs.transform_error(e))
            raise SpecError(f"the leg {raw} is not a valid alert leg: {lines}") from None

    def venue_factory(self) -> VenueFactory | None:
        if not self.venue:
            return None
        module_name, _, attr = self.venue.partition(":")
        if str(self.base_dir) not in sys.path:
            sys.path.insert(0, str(self.base_dir))
        try:
            factory: VenueFactory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise SpecError(f"venue = {self.venue!r} cannot be imported: {type(e).__name__}: {e}") from None
        return factory


def load_spec(broker: str, path: Path | None) -> KitSpec:
    """The kit's view of the plugin under test; `SpecError` names the file and key that are wrong."""
    if path is None:
        return KitSpec(broker=broker)
    try:
        tree: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"{path}: {e}") from None
    unknown = sorted(set(tree) - TOP_KEYS)
    if unknown:
        raise SpecError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(TOP_KEYS))})")
    for table in ("settings", "leg", "prices", "reject", "unknown_outcome"):
        if not isinstance(tree.get(table, {}), dict):
            raise SpecError(f"{path}: {table} must be a table")
    prices: dict[str, Any] = tree.get("prices", {})
    try:
        return KitSpec(
            broker=broker,
            settings=tree.get("settings", {}),
            venue=str(tree.get("venue", "")),
            call_timeout_s=float(tree.get("call_timeout_s", 5.0)),
            leg={**DEFAULT_LEG, **tree.get("leg", {})},
            limit_price=Decimal(str(prices.get("limit", 100))),
            trigger_price=Decimal(str(prices.get("trigger", 95))),
            resting_price=Decimal(str(prices["resting"])) if "resting" in prices else None,
            reject=tree.get("reject"),
            unknown_outcome=tree.get("unknown_outcome"),
            base_dir=path.resolve().parent,
        )
    except (ArithmeticError, ValueError) as e:
        raise SpecError(f"{path}: {e}") from None
