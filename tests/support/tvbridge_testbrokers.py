"""Test-only broker plugins, registered under `tvbridge.brokers` by `conftest.py` through a real dist-info.

`scripted`: places orders in memory, and can be told (per account config) to be slow, to reject, or to
lose the answer after placing (unknown outcome), so the core's handling of each case can be seen from the
outside. It can also misbehave the way a badly written plugin does (issue 23): hang in `place()` before or
after placing, block the event loop, raise in `start()` or in its settings parser. Its orders are kept in a JSON-lines file in the data dir, so tests of a subprocess server can read
what the broker received; like a real broker it still knows them after tvbridge restarts (`start()` reads
the file back), which is what crash recovery's `lookup()` relies on.

It forgives nothing by default (`forgive_repeats = false`): a second `place()` with a client order id it already
has is a second order (a new order id, a second line in the file), as at a real broker that does not
deduplicate. The plugin contract asks every plugin to be idempotent (docs/plugins.md), but the core must never
lean on it: a kind broker hides the core mistakes that cost a trader a double order (a recovery that resends
without `lookup()`, an unknown outcome answered by placing again), so the tests count the orders here. The
conformance kit, which checks the idempotency the contract asks for, runs it with `forgive_repeats = true`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, Self

import attrs

from tvbridge.broker import (
    API_VERSION,
    BrokerContext,
    BrokerError,
    BrokerRejectedError,
    BrokerUnavailableError,
    BrokerUnknownOutcomeError,
    CancelRequest,
    Capabilities,
    ContractId,
    Health,
    InstrumentInfo,
    OrderRequest,
    OrderResult,
    OrderState,
    Position,
)
from tvbridge.halt import halt_path, set_halt
from tvbridge.models import Exchange, Instrument, OrderLeg, OrderType, Product, Side

if TYPE_CHECKING:
    from collections.abc import Mapping


@attrs.frozen(kw_only=True)
class ScriptedSettings:
    delay_s: float = 0.0
    reject_symbols: tuple[str, ...] = ()
    lose_answer_symbols: tuple[str, ...] = ()
    bad_answer_symbols: tuple[str, ...] = ()
    """Place the order, then answer with something that is not an OrderResult (a plugin bug)."""
    order_types: tuple[str, ...] = ()
    claims_instrument_info: bool = False
    """Declare the `instrument_info` capability without implementing it (a plugin bug tvbridge must catch)."""
    hold_symbols: tuple[str, ...] = ()
    """Orders for these symbols wait, unplaced, until the test calls `release()`: a broker slower than any
    deadline, without a race against the machine's speed."""
    hold_legs: tuple[int, ...] = ()
    """Like `hold_symbols`, by the order's leg number in its alert: a later leg waits while the earlier ones go.
    A `cancel()` of such a leg waits too (a cancel leg at the broker)."""
    forgive_repeats: bool = False
    """True: a repeated client order id returns the order already placed (the contract's idempotency). False (the
    default): it is placed again, so a core that repeats itself is seen in the order count."""
    hang_symbols: tuple[str, ...] = ()
    """`place()` never answers and places nothing (a plugin stuck before sending)."""
    hang_after_place_symbols: tuple[str, ...] = ()
    """`place()` places the order, then never answers (a plugin stuck after sending)."""
    block_loop_symbols: tuple[str, ...] = ()
    """`place()` blocks the event loop for `block_loop_s` (a synchronous client called without a thread)."""
    block_loop_s: float = 0.0
    fail_start: str = ""
    """`start()` raises a RuntimeError with this message."""
    settings_bug: bool = False
    """The settings parser fails with an AttributeError (a plugin bug, not a bad value)."""
    unknown_symbols: tuple[str, ...] = ()
    """`place()` loses the answer before placing anything (`BrokerUnknownOutcomeError`, nothing at the broker)."""
    late_symbols: tuple[str, ...] = ()
    """`place()` places the order and loses the answer, and `lookup()` does not show it yet (a broker whose order
    book lags behind its placements, as Dhan's can): the order is there, the core cannot see it. After a restart
    (`start()` reads the file back) it is found."""
    lot_size: int = 0
    """Above 0: the `instrument_info` capability, and `instrument_info()` answers this lot size for any leg."""
    halt_when_sizing: str = ""
    """With `lot_size`: `instrument_info()` (asked while a derivative's quantity is sized, after the alert's
    commit and before its checks) first halts trading with this reason (the kill switch in the data directory,
    written as `tvbridge halt` writes it): an operator halting at that exact moment, without a race against the
    machine's speed."""
    lookup_error: str = ""
    """`lookup()` fails with a `BrokerError` of this message (the broker cannot say what it has)."""
    positions_answer: str = ""
    """"": no `positions` capability; "flat": it has one and holds nothing; "held": it holds what its orders
    bought and sold (each fills at once); "unavailable": `positions()` fails with `BrokerUnavailableError`; "bug":
    `positions()` raises a RuntimeError (a plugin bug). It never declares `orders` (listing open orders): the core
    must not ask (`Broker.open_orders` is not even defined here)."""
    cancel: bool = True
    """False: the broker does not declare the `cancel` capability."""
    cancel_answer: str = ""
    """What `cancel()` does: "" finds nothing to cancel (answers []); "cancel" cancels the order named by id, or
    every order it holds for the symbol, and answers each as cancelled; "dry_run" answers each as a dry run;
    "unknown" loses the answer (`BrokerUnknownOutcomeError`), "rejected" refuses (`BrokerRejectedError`), "bug"
    raises a RuntimeError (a plugin bug)."""


class ScriptedBroker:
    api_version = API_VERSION

    def __init__(self, settings: ScriptedSettings, context: BrokerContext) -> None:
        self.settings = settings
        self.context = context
        self.orders: dict[str, OrderResult] = {}
        """client order id -> the first order placed under it (what `lookup()` finds, like Dhan's lookup)."""
        self.placed = 0
        """Every order placed, repeats included: the next order id is `S` and this count plus one."""
        self._released = asyncio.Event()
        self.holding = asyncio.Event()
        """Set once an order waits for `release()` (`hold_symbols`, `hold_legs`): the broker has it now."""
        self.path = context.data_dir / f"scripted-{context.account}.jsonl"
        types = frozenset(OrderType(t) for t in settings.order_types) if settings.order_types else frozenset(OrderType)
        self.capabilities = Capabilities(
            order_types=types,
            instrument_info=settings.claims_instrument_info,
            cancel=settings.cancel,
            positions=bool(settings.positions_answer),
        )
        self.cancel_requests: list[CancelRequest] = []
        """Every `cancel()` call, in order: a test sees what the core asked the broker to cancel."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, object], context: BrokerContext) -> Self:
        known = {f.name for f in attrs.fields(ScriptedSettings)}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"unknown key {min(unknown)}")
        values: dict[str, Any] = dict(settings)
        if values.get("settings_bug"):
            return None.parse(values)  # type: ignore[attr-defined, no-any-return]  # the plugin bug under test
        for key in (
            "reject_symbols",
            "lose_answer_symbols",
            "bad_answer_symbols",
            "order_types",
            "hang_symbols",
            "hang_after_place_symbols",
            "block_loop_symbols",
            "hold_symbols",
            "hold_legs",
            "unknown_symbols",
            "late_symbols",
        ):
            if key in values:
                values[key] = tuple(values[key])
        parsed = ScriptedSettings(**values)
        if parsed.positions_answer:  # only then a positions() method: plain `scripted` declares none, has none
            return ScriptedPositionsBroker(parsed, context)  # type: ignore[return-value]  # a subclass
        if parsed.lot_size > 0:
            return ScriptedLotsBroker(parsed, context)  # type: ignore[return-value]  # a subclass
        return cls(parsed, context)

    async def start(self) -> None:
        if self.settings.fail_start:
            raise RuntimeError(self.settings.fail_start)
        self.context.data_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if not line.endswith("}"):  # torn by a kill mid-write: the broker never confirmed it
                    continue
                order = json.loads(line)
                self.placed += 1
                if order["client_order_id"] in self.orders:  # a repeat: lookup() finds the first
                    continue
                self.orders[order["client_order_id"]] = OrderResult(
                    order_id=order["order_id"],
                    state=OrderState.FILLED,
                    message="filled",
                    client_order_id=order["client_order_id"],
                    filled_quantity=order["quantity"],
                )

    async def place(self, request: OrderRequest) -> OrderResult:
        if self.settings.forgive_repeats and request.client_order_id in self.orders:
            return self.orders[request.client_order_id]
        if self.settings.delay_s:
            await asyncio.sleep(self.settings.delay_s)
        leg = request.leg
        if leg.symbol in self.settings.hold_symbols or request.leg_number in self.settings.hold_legs:
            self.holding.set()
            await self._released.wait()
        if leg.symbol in self.settings.hang_symbols:
            await asyncio.Event().wait()  # never set
        if leg.symbol in self.settings.block_loop_symbols:
            time.sleep(self.settings.block_loop_s)  # noqa: ASYNC251 - the plugin bug under test: the loop waits
        self._refuse_before_placing(leg.symbol)
        self.placed += 1
        order_id = f"S{self.placed:05d}"
        result = OrderResult(
            order_id=order_id,
            state=OrderState.FILLED,
            message="filled",
            client_order_id=request.client_order_id,
            filled_quantity=leg.quantity,
        )
        if leg.symbol not in self.settings.late_symbols:
            self.orders.setdefault(request.client_order_id, result)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(
                json.dumps(
                    {
                        "client_order_id": request.client_order_id,
                        "order_id": order_id,
                        "symbol": leg.symbol,
                        "side": leg.side.value,
                        "quantity": leg.quantity,
                        "exchange": leg.exchange.value,
                        "instrument": leg.instrument.value,
                        "product": leg.product.value,
                        **({"amo_time": leg.amo_time} if leg.amo_time else {}),
                    }
                )
                + "\n"
            )
        if leg.symbol in self.settings.lose_answer_symbols or leg.symbol in self.settings.late_symbols:
            raise BrokerUnknownOutcomeError("connection dropped after sending")
        if leg.symbol in self.settings.hang_after_place_symbols:
            await asyncio.Event().wait()  # never set
        if leg.symbol in self.settings.bad_answer_symbols:
            return {"order": "placed"}  # type: ignore[return-value]  # the plugin bug under test
        return result

    def _refuse_before_placing(self, symbol: str) -> None:
        """A refusal (`reject_symbols`) or an answer lost before anything was placed (`unknown_symbols`)."""
        if symbol in self.settings.reject_symbols:
            raise BrokerRejectedError(f"{symbol} is not tradeable here")
        if symbol in self.settings.unknown_symbols:
            raise BrokerUnknownOutcomeError("timed out before the broker answered")

    def release(self) -> None:
        """Let the held orders (`hold_symbols`) through, and every later one."""
        self._released.set()

    async def cancel(self, request: CancelRequest) -> list[OrderResult]:
        self.cancel_requests.append(request)
        if request.leg_number in self.settings.hold_legs:
            self.holding.set()
            await self._released.wait()
        answer = self.settings.cancel_answer
        if answer == "unknown":
            raise BrokerUnknownOutcomeError("connection dropped after the cancel was sent")
        if answer == "rejected":
            raise BrokerRejectedError("the order is already filled")
        if answer == "bug":
            raise RuntimeError("cancel table missing")
        if answer not in {"cancel", "dry_run"}:
            return []
        leg = request.leg
        ids = [
            order_id
            for order_id, symbol in self._symbols().items()
            if order_id == leg.order_id or (leg.order_id is None and symbol == leg.symbol)
        ]
        state = OrderState.DRY_RUN if answer == "dry_run" else OrderState.CANCELLED
        return [OrderResult(order_id=order_id, state=state, message=state.value) for order_id in ids]

    def _symbols(self) -> dict[str, str]:
        """order id -> symbol, from the broker's own file (the orders it holds)."""
        if not self.path.exists():
            return {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return {order["order_id"]: order["symbol"] for order in map(json.loads, lines) if "symbol" in order}

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        if self.settings.lookup_error:
            raise BrokerError(self.settings.lookup_error)
        return self.orders.get(client_order_id)

    async def health(self) -> Health:
        return Health(ok=True)

    async def aclose(self) -> None:
        return None


class ScriptedPositionsBroker(ScriptedBroker):
    """`scripted` with `positions_answer` set: the `positions` capability and its method (see the setting)."""

    def __init__(self, settings: ScriptedSettings, context: BrokerContext) -> None:
        super().__init__(settings, context)
        self.held: dict[tuple[ContractId, Product], int] = {}
        """"held": the net units per contract and product of every order placed (each fills at once), read back
        from the broker's file at start as a real broker's position outlives a restart of tvbridge."""

    async def start(self) -> None:
        await super().start()
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.endswith("}") and "product" in (order := json.loads(line)):
                    contract = ContractId(
                        exchange=Exchange(order["exchange"]),
                        symbol=order["symbol"],
                        instrument=Instrument(order["instrument"]),
                    )
                    self._hold(contract, Product(order["product"]), Side(order["side"]), order["quantity"])

    async def place(self, request: OrderRequest) -> OrderResult:
        result = await super().place(request)
        leg = request.leg
        contract = ContractId(exchange=leg.exchange, symbol=leg.symbol, instrument=leg.instrument)
        self._hold(contract, leg.product, leg.side, leg.quantity)
        return result

    def _hold(self, contract: ContractId, product: Product, side: Side, quantity: int) -> None:
        signed = quantity if side is Side.BUY else -quantity
        self.held[(contract, product)] = self.held.get((contract, product), 0) + signed

    async def positions(self, leg: OrderLeg | None = None) -> list[Position]:
        if self.settings.positions_answer == "unavailable":
            raise BrokerUnavailableError("positions API down")
        if self.settings.positions_answer == "bug":
            raise RuntimeError("positions table missing")
        if self.settings.positions_answer != "held":
            return []
        return [
            Position(contract=contract, product=product, net_quantity=net)
            for (contract, product), net in self.held.items()
            if net and (leg is None or (contract.exchange, contract.symbol) == (leg.exchange, leg.symbol))
        ]


class ScriptedLotsBroker(ScriptedBroker):
    """`scripted` with `lot_size` set: the `instrument_info` capability (and `halt_when_sizing`, see there)."""

    def __init__(self, settings: ScriptedSettings, context: BrokerContext) -> None:
        super().__init__(settings, context)
        self.capabilities = attrs.evolve(self.capabilities, instrument_info=True)

    async def instrument_info(self, leg: OrderLeg) -> InstrumentInfo:
        if self.settings.halt_when_sizing:
            set_halt(halt_path(self.context.data_dir), reason=self.settings.halt_when_sizing, by="scripted broker")
        return InstrumentInfo(trading_symbol=leg.symbol, lot_size=self.settings.lot_size)
