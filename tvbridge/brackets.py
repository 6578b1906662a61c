"""Brackets: an entry that carries its own target and stop-loss (and a trailing stop), checked and reported here.

A leg with `target_price`, `stoploss_price` or `trailing_jump` is a bracket. It is one order for tvbridge: one
client order id, one leg result, one journal row. The broker places its parts together (Dhan: a Super Order;
paper: an entry and, once it fills, a target and a stop that cancel each other) and reports them in
`OrderResult.details["bracket"]`, a list of parts::

    {"part": "entry" | "target" | "stop_loss", "order_id": "...", "state": "<OrderState>", "price": "..."}

Why the checks live here and run at parsing: a bracket whose stop is on the wrong side of the entry would fill
the moment it is placed (a long's stop above the price), closing the trade at once or, worse, opening the
opposite position. So a wrong-side price is a 422 naming the field, before anything is journaled or sent. A
broker that cannot place brackets refuses the leg before sending (`tvbridge.broker.check_supported`): never a
naked entry whose stop was silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from tvbridge.models import OrderType, Side

if TYPE_CHECKING:
    from collections.abc import Sequence
    from decimal import Decimal

    from tvbridge.models import OrderLeg

PARTS: Final = ("entry", "target", "stop_loss")
FIELDS: Final = ("target_price", "stoploss_price", "trailing_jump")
OPEN_STATE_VALUES: Final = frozenset({"pending", "open", "trigger_pending", "partially_filled"})
"""`tvbridge.broker.OPEN_STATES` as text (this module stays below `broker.py` in the import graph)."""
_PART_KEYS: Final = ("part", "order_id", "state", "price")


def is_bracket(leg: OrderLeg) -> bool:
    """Whether the leg asks for a bracket (any of its three fields given)."""
    return leg.target_price is not None or leg.stoploss_price is not None or leg.trailing_jump is not None


def reference_price(leg: OrderLeg) -> Decimal | None:
    """The entry price the exits are compared with: a limit's price, a stop's trigger, a market order's `price`
    when the alert gives one (TradingView's `{{close}}`); None when unknown."""
    if leg.order_type in {OrderType.LIMIT, OrderType.STOP_LOSS} and leg.price > 0:
        return leg.price
    if leg.order_type is OrderType.STOP_LOSS_MARKET and leg.trigger_price:
        return leg.trigger_price
    if leg.order_type is OrderType.MARKET and leg.price > 0:
        return leg.price
    return None


def bracket_problems(leg: OrderLeg) -> list[tuple[str, str]]:
    """(field, message) for every rule the leg's bracket breaks; empty for a plain leg or a sound bracket."""
    if not is_bracket(leg):
        return []
    problems: list[tuple[str, str]] = []
    if leg.manage_position is not None:
        field = next(f for f in FIELDS if getattr(leg, f) is not None)
        problems.append((field, f"a bracket cannot ride on manage_position {leg.manage_position}: it opens nothing"))
        return problems
    for field in FIELDS:
        value = getattr(leg, field)
        if value is not None and value <= 0:
            problems.append((field, f"must be > 0, got {value}"))
    if problems:
        return problems
    if leg.trailing_jump is not None and leg.stoploss_price is None:
        problems.append(("stoploss_price", "is required with trailing_jump (the stop that trails)"))
    return problems + _side_problems(leg)


def _side_problems(leg: OrderLeg) -> list[tuple[str, str]]:
    """Wrong-side exits: a long's target must be above its entry and its stop below, a short's the reverse;
    without a known entry price, the target must at least be on the profit side of the stop."""
    problems: list[tuple[str, str]] = []
    target, stop = leg.target_price, leg.stoploss_price
    long = leg.side is Side.BUY
    side = "a long (B)" if long else "a short (S)"
    reference = reference_price(leg)
    if reference is not None:
        if target is not None and (target <= reference if long else target >= reference):
            where = "above" if long else "below"
            problems.append(("target_price", f"{target} must be {where} the entry price {reference} for {side}"))
        if stop is not None and (stop >= reference if long else stop <= reference):
            where = "below" if long else "above"
            problems.append(("stoploss_price", f"{stop} must be {where} the entry price {reference} for {side}"))
    elif target is not None and stop is not None and (target <= stop if long else target >= stop):
        where = "above" if long else "below"
        problems.append(("target_price", f"{target} must be {where} the stoploss_price {stop} for {side}"))
    return problems


def parts_of(details: Mapping[str, object]) -> tuple[dict[str, str | None], ...]:
    """The bracket parts a plugin reported in `OrderResult.details["bracket"]`, as plain text (JSON-safe, what
    the journal, the answer and the order log keep); empty when there are none or they are malformed."""
    raw = details.get("bracket")
    if not isinstance(raw, list | tuple):
        return ()
    parts: list[dict[str, str | None]] = []
    for item in raw:
        if not isinstance(item, Mapping) or item.get("part") not in PARTS:
            continue
        parts.append({key: None if item.get(key) is None else str(item.get(key)) for key in _PART_KEYS})
    return tuple(parts)


def has_open_part(parts: Sequence[Mapping[str, object]]) -> bool:
    """Whether any part may still fill or be cancelled: order follow-up keeps following the bracket until none."""
    return any(str(part.get("state")) in OPEN_STATE_VALUES for part in parts)


def describe(parts: Sequence[Mapping[str, object]]) -> str:
    """`entry filled 100 PAPER-000001; target open 110 PAPER-000002; ...`: one order-log cell."""
    shown = []
    for part in parts:
        words = [
            str(part.get(key)) for key in ("part", "state", "price", "order_id") if part.get(key) not in (None, "")
        ]
        shown.append(" ".join(words))
    return "; ".join(shown)
