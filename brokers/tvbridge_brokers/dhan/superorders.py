"""Brackets on Dhan: a leg with `target_price` / `stoploss_price` / `trailing_jump` is one Dhan Super Order.

dhanhq 2.3 (`dhanhq._super_order.SuperOrder`) places it with `place_super_order` (POST /super/orders: entry,
`targetPrice`, `stopLossPrice`, `trailingJump`, `tag` as the correlationId), lists every super order with its
legs in `get_super_order_list` (GET /super/orders, `legDetails` holding TARGET_LEG and STOP_LOSS_LEG), and
cancels with `cancel_super_order(order_id, leg)` (DELETE /super/orders/{id}/{leg}): ENTRY_LEG cancels every leg
while the entry is open; once it traded, the target and stop-loss legs are cancelled one by one. Dhan itself runs
the one-cancels-other and the trailing stop; tvbridge follows the legs through `lookup()` (this module turns a
super order row into an `OrderResult` whose `details["bracket"]` lists the parts, `tvbridge.brackets`).

What Dhan's super orders cannot take is refused before sending, naming the field: only LIMIT and MARKET
entries, and dhanhq refuses a super order without a price > 0 (it compares target and stop with it), so a
MARKET entry must carry the alert's price (TradingView's `{{close}}`) as its reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from tvbridge.broker import BrokerUnsupportedError, OrderResult, OrderState
from tvbridge.models import OrderType
from tvbridge_brokers.dhan.orders import STATES, to_result

if TYPE_CHECKING:
    from tvbridge.models import OrderLeg
    from tvbridge_brokers.dhan.mapping import PlaceOrder

ENTRY_LEG: Final = "ENTRY_LEG"
TARGET_LEG: Final = "TARGET_LEG"
STOP_LOSS_LEG: Final = "STOP_LOSS_LEG"
PART_OF_LEG: Final = {ENTRY_LEG: "entry", TARGET_LEG: "target", STOP_LOSS_LEG: "stop_loss"}
SUPER_STATES: Final = {**STATES, "CLOSED": OrderState.FILLED}
"""A super order is CLOSED when its target or stop-loss leg traded: its entry had filled."""
_ENTRY_TYPES: Final = frozenset({OrderType.LIMIT, OrderType.MARKET})


def check_super_entry(leg: OrderLeg) -> None:
    """`BrokerUnsupportedError` naming the field for a bracket leg a super order cannot take (nothing is sent).
    Paper with Dhan's master applies it too, so practice refuses what live would."""
    if leg.order_type not in _ENTRY_TYPES:
        msg = f"orderType {leg.order_type} cannot carry a bracket on Dhan: a super order's entry is LMT or MKT"
        raise BrokerUnsupportedError(msg)
    if leg.price <= 0:
        msg = (
            "price: a MKT entry with a bracket on Dhan needs the alert's price (e.g. {{close}}) as its reference:"
            " dhanhq refuses a super order without a price > 0"
        )
        raise BrokerUnsupportedError(msg)


def super_order_kwargs(leg: OrderLeg, order: PlaceOrder) -> dict[str, object]:
    """The arguments of `dhanhq.place_super_order` for a bracket leg, from the mapped plain order; raises
    `BrokerUnsupportedError` naming the field for what a super order cannot take (nothing is sent)."""
    check_super_entry(leg)
    return {
        "security_id": order.security_id,
        "exchange_segment": order.exchange_segment,
        "transaction_type": order.transaction_type,
        "quantity": order.quantity,
        "order_type": order.order_type,
        "product_type": order.product_type,
        "price": float(leg.price),
        "targetPrice": float(leg.target_price or 0),
        "stopLossPrice": float(leg.stoploss_price or 0),
        "trailingJump": float(leg.trailing_jump or 0),
        "tag": order.tag,
    }


def _text(value: object) -> str | None:
    if value in (None, "", 0, 0.0):
        return None
    return format(float(str(value)), "g") if isinstance(value, float) else str(value)


def leg_state(part: str, status: object) -> OrderState:
    """A super order leg's state: a waiting stop-loss is `trigger_pending`, a waiting target `open`."""
    text = str(status or "").upper()
    state = SUPER_STATES.get(text, OrderState.PENDING)
    if part == "stop_loss" and text == "PENDING":
        return OrderState.TRIGGER_PENDING
    return state


def placed_result(answer: dict[str, object], kwargs: dict[str, object], *, client_order_id: str) -> OrderResult:
    """The placement answer (`orderId`, `orderStatus` of the entry) with the parts as sent: the exits wait for
    the entry, as Dhan holds them until it trades."""
    result = to_result(answer, client_order_id=client_order_id)
    parts = [
        {"part": "entry", "order_id": result.order_id, "state": result.state.value, "price": _text(kwargs["price"])}
    ]
    for part, key in (("target", "targetPrice"), ("stop_loss", "stopLossPrice")):
        if kwargs.get(key):
            parts.append({"part": part, "order_id": result.order_id, "state": "pending", "price": _text(kwargs[key])})
    return _with_parts(result, parts, "super order")


def super_result(row: dict[str, object], *, client_order_id: str | None) -> OrderResult:
    """One row of `get_super_order_list` as the entry's result, its legs in `details["bracket"]`."""
    entry = {
        **row,
        "orderStatus": "TRADED" if str(row.get("orderStatus")).upper() == "CLOSED" else row.get("orderStatus"),
    }
    result = to_result(entry, client_order_id=client_order_id)
    order_id = result.order_id
    parts = [{"part": "entry", "order_id": order_id, "state": result.state.value, "price": _text(row.get("price"))}]
    legs = row.get("legDetails")
    for item in legs if isinstance(legs, list) else []:
        if not isinstance(item, dict) or item.get("legName") not in (TARGET_LEG, STOP_LOSS_LEG):
            continue
        part = PART_OF_LEG[str(item["legName"])]
        state = leg_state(part, item.get("orderStatus"))
        parts.append({"part": part, "order_id": order_id, "state": state.value, "price": _text(item.get("price"))})
    parts.sort(key=lambda p: ("entry", "target", "stop_loss").index(str(p["part"])))
    return _with_parts(result, parts, f"super order {row.get('orderStatus')}")


def _with_parts(result: OrderResult, parts: list[dict[str, str | None]], what: str) -> OrderResult:
    shown = ", ".join(f"{p['part']} {p['state']}" for p in parts)
    return OrderResult(
        order_id=result.order_id,
        state=result.state,
        message=f"{result.message} ({what}: {shown})",
        client_order_id=result.client_order_id,
        filled_quantity=result.filled_quantity,
        average_price=result.average_price,
        details={**result.details, "super_order": True, "bracket": parts},
    )


def open_legs(result: OrderResult) -> list[str]:
    """The Dhan leg names to cancel to end the bracket: ENTRY_LEG (cancels all) while the entry is open, else
    each exit leg still open."""
    parts = result.details.get("bracket")
    listed = [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
    live = {"pending", "open", "trigger_pending", "partially_filled"}
    if any(p.get("part") == "entry" and p.get("state") in live for p in listed):
        return [ENTRY_LEG]
    names = {"target": TARGET_LEG, "stop_loss": STOP_LOSS_LEG}
    return [names[str(p["part"])] for p in listed if p.get("part") in names and p.get("state") in live]
