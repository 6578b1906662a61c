"""Dhan's order JSON -> our `OrderResult`, reporting the state Dhan gives and never assuming a fill.

Since 2026 Dhan turns API market orders into limit orders with price protection, so a MARKET order may sit
PENDING or expire: only `orderStatus` says what happened. An unknown status maps to PENDING with the raw text
kept in `details`, so a new Dhan status never reads as filled.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Final

from tvbridge.broker import OrderResult, OrderState

STATES: Final = {
    "TRANSIT": OrderState.PENDING,
    "PENDING": OrderState.OPEN,
    "PART_TRADED": OrderState.PARTIALLY_FILLED,
    "TRADED": OrderState.FILLED,
    "REJECTED": OrderState.REJECTED,
    "CANCELLED": OrderState.CANCELLED,
    "EXPIRED": OrderState.EXPIRED,
    "TRIGGERED": OrderState.OPEN,
}
OPEN_STATES: Final = frozenset(
    {OrderState.PENDING, OrderState.OPEN, OrderState.TRIGGER_PENDING, OrderState.PARTIALLY_FILLED}
)
_STOP_TYPES: Final = frozenset({"STOP_LOSS", "STOP_LOSS_MARKET"})
_DETAIL_KEYS: Final = (
    "orderId",
    "correlationId",
    "orderStatus",
    "exchangeSegment",
    "securityId",
    "tradingSymbol",
    "transactionType",
    "orderType",
    "productType",
    "quantity",
    "filledQty",
    "price",
    "triggerPrice",
    "averageTradedPrice",
    "omsErrorCode",
    "omsErrorDescription",
    "createTime",
    "updateTime",
)


def order_state(order: dict[str, object]) -> OrderState:
    status = str(order.get("orderStatus") or "").upper()
    state = STATES.get(status, OrderState.PENDING)
    if status == "PENDING" and str(order.get("orderType") or "").upper() in _STOP_TYPES:
        return OrderState.TRIGGER_PENDING
    return state


def _int(value: object) -> int:
    try:
        return int(str(value)) if value not in (None, "") else 0
    except ValueError:
        return 0


def _price(value: object) -> Decimal | None:
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        return None
    return price if price.is_finite() and price > 0 else None


def to_result(order: dict[str, object], *, client_order_id: str | None, note: str = "") -> OrderResult:
    """The result for one of Dhan's order objects (from placement, lookup, order-by-id or cancel)."""
    order_id = str(order.get("orderId") or "") or None
    status = str(order.get("orderStatus") or "UNKNOWN").upper()
    state = order_state(order)
    message = f"Dhan order {order_id}: {status}"
    reason = order.get("omsErrorDescription")
    if state is OrderState.REJECTED and reason:
        message += f" ({reason})"
    if note:
        message += f"; {note}"
    return OrderResult(
        order_id=order_id,
        state=state,
        message=message,
        client_order_id=client_order_id or (str(order.get("correlationId") or "") or None),
        filled_quantity=_int(order.get("filledQty")),
        average_price=_price(order.get("averageTradedPrice")),
        details={key: order[key] for key in _DETAIL_KEYS if key in order},
    )
