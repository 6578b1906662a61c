"""Flatten an account: cancel its open orders and close its open positions, after showing the plan.

What is open is read through the broker interface only: `open_orders()` (declared by `capabilities.orders`) and
`positions()` (`capabilities.positions`); paper and Dhan declare both. A broker that declares one of them is
flattened as far as it can be and the plan says what is left to do in the broker's own terminal; one that declares
neither gets the plan "flatten it in the broker's terminal" and nothing is done.

Flatten is the emergency exit, so it works while trading is halted and is not held to the risk limits: closing
a position must never be refused by a limit meant to stop opening one. One failing action does not stop the
others. Each run is recorded like an alert: a journal entry `F<id>` (type `flatten`, `GET /alerts/<id>` shows it)
with one leg per action, and one order-log row per action. Closing orders are market orders with client order ids
`F<id>-<n>`; an answer lost in transit is resolved by `lookup()`, never by sending again. The journal entry's status
is `flattening` until the run ends, so crash recovery leaves an interrupted flatten alone: the operator runs flatten
again, which reads what is still open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import attrs
import structlog

from tvbridge.alerts.answer import response_body
from tvbridge.broker import (
    Broker,
    BrokerError,
    BrokerUnknownOutcomeError,
    CancelRequest,
    OpenOrder,
    OrderRequest,
    OrderState,
    Position,
)
from tvbridge.executor import leg_status
from tvbridge.journal import PlannedLeg
from tvbridge.middlewares.request_id import new_alert_id
from tvbridge.models import CancelLeg, LegResult, LegStatus, OrderLeg, Side, summarize
from tvbridge.positions import book_key, closing_leg
from tvbridge.store import Store
from tvbridge.strategies import current_strategy

if TYPE_CHECKING:
    from tvbridge.broker import OrderResult
    from tvbridge.orderlog import OrderLog

log = structlog.get_logger()

ALERT_TYPE: Final = "flatten"
RUNNING: Final = "flattening"
"""The journal status while a flatten runs: not `accepted`, so crash recovery does not replay it."""


@attrs.frozen(kw_only=True)
class FlattenPlan:
    account: str
    cancels: tuple[OpenOrder, ...] = ()
    positions: tuple[Position, ...] = ()
    notes: tuple[str, ...] = ()
    """What the plan cannot cover (a capability the broker does not declare), for the operator to do by hand."""
    unsupported: str = ""
    """Set when nothing can be done through tvbridge at all."""

    @property
    def closes(self) -> tuple[OrderLeg, ...]:
        return tuple(closing_leg(p) for p in self.positions)

    def lines(self) -> list[str]:
        if self.unsupported:
            return [self.unsupported]
        counts = f"{len(self.cancels)} order(s) to cancel, {len(self.positions)} position(s) to close"
        out = [f"account {self.account}: {counts}"]
        out += [f"  cancel {o.order_id}: {_describe_order(o)}" for o in self.cancels]
        out += [
            f"  close: {_word(leg.side)} {leg.quantity} {p.contract.describe()} ({leg.product}) at market"
            for p, leg in zip(self.positions, self.closes, strict=True)
        ]
        out += [f"  note: {note}" for note in self.notes]
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "unsupported": self.unsupported or None,
            "notes": list(self.notes),
            "cancel": [
                {"order_id": o.order_id, "order": _describe_order(o), "state": o.state.value} for o in self.cancels
            ],
            "close": [
                {
                    "side": leg.side.value,
                    "quantity": leg.quantity,
                    "exchange": leg.exchange.value,
                    "symbol": leg.symbol,
                    "contract": p.contract.describe(),
                    "product": leg.product.value,
                }
                for p, leg in zip(self.positions, self.closes, strict=True)
            ],
        }


@attrs.frozen(kw_only=True)
class FlattenReport:
    """What a flatten run did: `lines` for a terminal, `results` as journaled and logged under `alert_id`."""

    alert_id: str
    status: str
    lines: tuple[str, ...]
    results: tuple[LegResult, ...]
    body: dict[str, Any]


def _word(side: Side) -> str:
    return "SELL" if side is Side.SELL else "BUY"


def _describe_order(order: OpenOrder) -> str:
    price = "" if order.price is None or order.price == 0 else f" at {order.price}"
    trigger = "" if order.trigger_price is None else f" trigger {order.trigger_price}"
    kind = order.order_type.value if order.order_type is not None else "?"
    return (
        f"{_word(order.side)} {order.quantity} {order.contract.describe()} {kind}{price}{trigger}"
        f" ({order.state.value}, {order.filled_quantity} filled)"
    )


async def make_plan(account: str, broker: Broker) -> FlattenPlan:
    """What flattening `account` would do; sends nothing. `BrokerError` when the broker cannot be read."""
    capabilities = broker.capabilities
    if not capabilities.orders and not capabilities.positions:
        return FlattenPlan(
            account=account,
            unsupported=f"account {account}: its broker declares neither the `orders` nor the `positions`"
            " capability, so tvbridge cannot list what is open; flatten it in the broker's own terminal",
        )
    notes: list[str] = []
    cancels: tuple[OpenOrder, ...] = ()
    positions: tuple[Position, ...] = ()
    if capabilities.orders:
        cancels = tuple(await broker.open_orders())
    else:
        notes.append("open orders are not listed (the broker does not declare `orders`): cancel them by hand")
    if capabilities.positions:
        positions = tuple(p for p in await broker.positions() if p.net_quantity)
    else:
        notes.append("positions are not listed (the broker does not declare `positions`): close them by hand")
    return FlattenPlan(account=account, cancels=cancels, positions=positions, notes=tuple(notes))


@attrs.frozen(kw_only=True)
class _Run:
    alert_id: str
    account: str
    broker_name: str
    broker: Broker
    journal: Store | None


async def execute(
    plan: FlattenPlan,
    broker: Broker,
    *,
    broker_name: str,
    journal: Store | None,
    order_log: OrderLog | None,
    source: str,
    record_required: bool = False,
) -> FlattenReport:
    """Carry the plan out: every cancel, then every close; each is journaled and in the order log. Errors are
    reported, not raised, so one refused cancel does not stop the positions from being closed.

    `record_required` (the daily square-off): the run's journal entry must be written before anything is sent,
    else its error is raised and nothing is done (the journal entry is what says the day's run happened: a run
    not on record would be repeated). An operator's flatten goes on without it (an emergency exit)."""
    alert_id = f"F{new_alert_id()}"
    run = _Run(alert_id=alert_id, account=plan.account, broker_name=broker_name, broker=broker, journal=journal)
    closes = plan.closes
    planned = [
        PlannedLeg(account=plan.account, leg_number=n, client_order_id=None) for n in range(1, len(plan.cancels) + 1)
    ]
    planned += [
        PlannedLeg(account=plan.account, leg_number=n, client_order_id=f"{alert_id}-{n}")
        for n in range(len(plan.cancels) + 1, len(plan.cancels) + len(closes) + 1)
    ]
    if journal is not None:
        await (_required if record_required else _safely)(
            "record",
            alert_id,
            journal.record_alert(
                alert_id=alert_id,
                alert_type=ALERT_TYPE,
                payload={"flatten": plan.as_json()},
                dedupe_key=None,
                source=source,
                legs=planned,
                status=RUNNING,
            ),
        )
    results: list[LegResult] = []
    for number, order in enumerate(plan.cancels, start=1):
        results.append(await _record(run, number, _cancel(run, number, order)))
    for number, leg in enumerate(closes, start=len(plan.cancels) + 1):
        results.append(await _record(run, number, _close(run, number, leg)))
    status = summarize(results).value if results else "success"
    body = response_body(alert_id, ALERT_TYPE, status, results, list(plan.notes))
    if order_log is not None:
        try:
            await order_log.append(results, alert_id=alert_id, alert_type=ALERT_TYPE)
        except Exception:
            log.exception("order_log.write_failed", alert_id=alert_id)
    if journal is not None:
        await _safely("finish", alert_id, journal.finish_alert(alert_id, status, body, results))
    lines = tuple(_line(r) for r in results)
    log.warning("account.flattened", account=plan.account, flatten_id=alert_id, status=status, actions=list(lines))
    return FlattenReport(alert_id=alert_id, status=status, lines=lines, results=tuple(results), body=body)


def _line(result: LegResult) -> str:
    if result.order_type == "CANCEL":
        return f"cancel {result.order_id}: {result.status.value}: {result.message}"
    order = f" order {result.order_id}" if result.order_id else ""
    return (
        f"close {_word(Side(result.transaction))} {result.quantity} {result.exchange} {result.symbol}"
        f" ({result.product_type}):"
        f" {result.status.value}{order} {result.order_state or ''}: {result.message}"
    )


async def _safely(step: str, alert_id: str, write: Any) -> None:
    """A journal write that must not stop an emergency exit: its failure is logged, the flatten goes on."""
    try:
        await write
    except Exception:
        log.exception("journal.flatten_write_failed", alert_id=alert_id, step=step)


async def _required(step: str, alert_id: str, write: Any) -> None:
    """A journal write that must succeed before anything is sent: its failure is logged and raised."""
    try:
        await write
    except Exception:
        log.exception("journal.flatten_write_failed", alert_id=alert_id, step=step)
        raise


async def _record(run: _Run, number: int, action: Any) -> LegResult:
    if run.journal is not None:
        await _safely("mark", run.alert_id, run.journal.mark_sending(run.alert_id, run.account, number, None))
    result: LegResult = await action
    if run.journal is not None:
        await _safely("leg", run.alert_id, run.journal.record_leg(run.alert_id, result))
    return result


def _result(
    run: _Run,
    number: int,
    fields: dict[str, str],
    status: LegStatus,
    message: str,
    *,
    order: OrderResult | None = None,
) -> LegResult:
    return LegResult(
        leg_number=number,
        account=run.account,
        broker=run.broker_name,
        status=status,
        message=message,
        order_id=order.order_id if order is not None else fields.pop("order_id", None),
        client_order_id=fields.pop("client_order_id", None),
        order_state=order.state.value if order is not None else None,
        # what the close filled: a strategy's own position is summed from these (`Journal.fills`)
        filled_quantity=order.filled_quantity if order is not None and order.state is not OrderState.DRY_RUN else None,
        average_price=str(order.average_price) if order is not None and order.average_price is not None else None,
        symbol=fields["symbol"],
        exchange=fields["exchange"],
        transaction=fields["transaction"],
        quantity=fields["quantity"],
        order_type=fields["order_type"],
        product_type=fields["product_type"],
        price=fields["price"],
        strategy=current_strategy(),
        position_key=fields.get("position_key"),
    )


async def _cancel(run: _Run, number: int, order: OpenOrder) -> LegResult:
    fields = {
        "symbol": order.contract.symbol,
        "exchange": order.contract.exchange.value,
        "transaction": order.side.value,
        "quantity": str(order.quantity),
        "order_type": "CANCEL",
        "product_type": order.product.value if order.product is not None else "",
        "price": "" if order.price is None else str(order.price),
        "order_id": order.order_id,
    }
    request = CancelRequest(alert_id=run.alert_id, leg_number=number, leg=CancelLeg(order_id=order.order_id))
    try:
        done = await run.broker.cancel(request)
    except BrokerError as e:
        return _result(run, number, fields, LegStatus.FAILED, f"cancel failed: {e}")
    except Exception as e:  # a plugin bug: the cancel may or may not have happened
        log.exception("broker.unexpected_error", alert_id=run.alert_id, leg=number, account=run.account)
        return _result(run, number, fields, LegStatus.UNKNOWN, f"cancel outcome unknown (broker plugin error: {e})")
    mine = [r for r in done if r.order_id == order.order_id] or list(done)
    if any(r.state is OrderState.DRY_RUN for r in mine):
        return _result(run, number, fields, LegStatus.TEST_MODE, mine[0].message or "dry-run: not cancelled")
    if mine and all(r.state is OrderState.CANCELLED for r in mine):
        return _result(run, number, fields, LegStatus.SUCCESS, f"cancelled {order.order_id}")
    states = ", ".join(r.state.value for r in mine) or "nothing returned"
    return _result(run, number, fields, LegStatus.FAILED, f"cancel of {order.order_id} answered: {states}")


async def _close(run: _Run, number: int, leg: OrderLeg) -> LegResult:
    client_id = f"{run.alert_id}-{number}"
    fields = {
        "symbol": leg.symbol,
        "exchange": leg.exchange.value,
        "transaction": leg.side.value,
        "quantity": str(leg.quantity),
        "order_type": leg.order_type.value,
        "product_type": leg.product.value,
        "price": str(leg.price),
        "client_order_id": client_id,
        "position_key": book_key(leg),
    }
    request = OrderRequest(client_order_id=client_id, alert_id=run.alert_id, leg_number=number, leg=leg)
    try:
        order = await run.broker.place(request)
    except BrokerUnknownOutcomeError as e:
        return await _resolve(run, number, fields, client_id, str(e))
    except BrokerError as e:
        return _result(run, number, fields, LegStatus.FAILED, f"close failed: {e}")
    except Exception as e:  # a plugin bug: the order may exist
        log.exception("broker.unexpected_error", alert_id=run.alert_id, leg=number, account=run.account)
        return await _resolve(run, number, fields, client_id, f"broker plugin error: {e}")
    return _result(run, number, fields, leg_status(order.state), order.message or order.state.value, order=order)


async def _resolve(run: _Run, number: int, fields: dict[str, str], client_id: str, reason: str) -> LegResult:
    try:
        found = await run.broker.lookup(client_id)
    except Exception as e:  # noqa: BLE001 - still unknown; reported as such
        message = f"outcome unknown ({reason}); lookup failed too ({e}): check the broker"
        return _result(run, number, fields, LegStatus.UNKNOWN, message)
    if found is None:
        message = f"outcome unknown ({reason}); the broker has no order {client_id} yet: check the broker"
        return _result(run, number, fields, LegStatus.UNKNOWN, message)
    return _result(run, number, fields, leg_status(found.state), found.message or found.state.value, order=found)
