"""The conformance kit's tests: one rule of `tvbridge.broker` each, run against the plugin named by
`--tvbridge-broker`. Collected only through `tvbridge.conformance.plugin`; see `tvbridge.conformance` for the
settings file. Each test builds, starts and closes its own broker instance on its own event loop, so the kit
needs no async pytest plugin and leaves the author's event loop settings alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tvbridge.brackets import has_open_part, parts_of
from tvbridge.broker import (
    CAPABILITY_METHODS,
    OPEN_STATES,
    Broker,
    BrokerContext,
    BrokerRejectedError,
    BrokerUnknownOutcomeError,
    CancelRequest,
    Capabilities,
    ContractId,
    Exchange,
    Health,
    Instrument,
    OpenOrder,
    OrderRequest,
    OrderResult,
    OrderState,
    Position,
    Product,
    Side,
)
from tvbridge.models import CancelLeg, OrderType
from tvbridge.registry import interface_problem, load_plugin_class, settings_problem

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from tvbridge.conformance.spec import KitSpec
    from tvbridge.models import OrderLeg

T = TypeVar("T")
_ids = itertools.count(1)
_run = uuid.uuid4().hex[:8]


def new_client_order_id() -> str:
    """Unique per run (the venue may keep orders between tests), at most 25 chars of [A-Za-z0-9_-]."""
    return f"kit{_run}-{next(_ids)}"


async def within(spec: KitSpec, call: Awaitable[T], what: str) -> T:
    try:
        async with asyncio.timeout(spec.call_timeout_s):
            return await call
    except TimeoutError:
        pytest.fail(
            f"{what} did not return within {spec.call_timeout_s} s: TradingView gives up after 3 s, so a plugin "
            "needs its own timeout on every broker call (an order that may have been sent: BrokerUnknownOutcomeError)"
        )


@contextlib.asynccontextmanager
async def running(spec: KitSpec, data_dir: Path) -> AsyncIterator[Broker]:
    """The plugin built from the spec's settings (on the spec's venue, if any), started, closed afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        settings = dict(spec.settings)
        factory = spec.venue_factory()
        if factory is not None:
            settings = dict(await stack.enter_async_context(factory(settings)))
        cls = load_plugin_class(spec.broker)
        broker = cls.from_settings(settings, BrokerContext(account="conformance", data_dir=data_dir))
        problem = interface_problem(broker)
        assert not problem, problem
        await within(spec, broker.start(), "start()")
        try:
            yield broker
        finally:
            await within(spec, broker.aclose(), "aclose()")


def drive(spec: KitSpec, data_dir: Path, scenario: Callable[[Broker], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running(spec, data_dir) as broker:
            await scenario(broker)

    asyncio.run(main())


def request_for(leg: OrderLeg, cid: str | None = None) -> OrderRequest:
    return OrderRequest(client_order_id=cid or new_client_order_id(), alert_id="conformance", leg_number=1, leg=leg)


def check_result(result: object, request: OrderRequest, what: str) -> OrderResult:
    assert isinstance(result, OrderResult), f"{what} returned {type(result).__name__}, not an OrderResult"
    assert result.state is not OrderState.DRY_RUN, (
        f"{what} was a dry run: run the kit against a live-mode account on a test venue"
    )
    assert result.order_id, f"{what} returned no order_id"
    assert result.client_order_id in {None, request.client_order_id}, (
        f"{what} returned client_order_id {result.client_order_id!r}, not {request.client_order_id!r}"
    )
    return result


@pytest.fixture
def spec(tvbridge_kit_spec: KitSpec) -> KitSpec:
    return tvbridge_kit_spec


def test_entry_point_loads_and_fits_the_interface(spec: KitSpec) -> None:
    """The plugin is found through the tvbridge.brokers entry point, declares this API version and has every
    method of the Broker protocol (load_plugin_class raises PluginError saying which is missing)."""
    cls = load_plugin_class(spec.broker)
    assert callable(cls.from_settings)


def test_unknown_setting_is_refused_naming_the_key(spec: KitSpec, tmp_path: Path) -> None:
    """from_settings() refuses a typo in the account table with a ValueError that names the key."""
    cls = load_plugin_class(spec.broker)
    table: dict[str, Any] = {**spec.settings, "tvbridge_kit_typo": 1}
    with pytest.raises(ValueError, match="tvbridge_kit_typo") as info:
        cls.from_settings(table, BrokerContext(account="conformance", data_dir=tmp_path))
    assert "tvbridge_kit_typo" in settings_problem("conformance", info.value)


def test_lifecycle_capabilities_and_health(spec: KitSpec, tmp_path: Path) -> None:
    """start() and aclose() return; capabilities is a Capabilities; health() is a Health that is ok on a
    working venue."""

    async def scenario(broker: Broker) -> None:
        assert isinstance(broker.capabilities, Capabilities)
        health = await within(spec, broker.health(), "health()")
        assert isinstance(health, Health)
        assert health.ok, f"health() is not ok on a working venue: {health.detail}"

    drive(spec, tmp_path, scenario)


@pytest.mark.parametrize("order_type", list(OrderType), ids=[t.value for t in OrderType])
def test_places_each_declared_order_type(spec: KitSpec, tmp_path: Path, order_type: OrderType) -> None:
    """Each order type in capabilities.order_types is placed and the result is an OrderResult with the broker's
    order id; lookup(client_order_id) then finds the same order."""

    async def scenario(broker: Broker) -> None:
        if order_type not in broker.capabilities.order_types:
            pytest.skip(f"{order_type} is not declared in capabilities.order_types")
        request = request_for(spec.order_leg(order_type))
        result = check_result(await within(spec, broker.place(request), "place()"), request, "place()")
        assert result.state is not OrderState.REJECTED, f"the venue refused the [leg] order: {result.message}"
        found = await within(spec, broker.lookup(request.client_order_id), "lookup()")
        assert found is not None, f"lookup({request.client_order_id!r}) found nothing right after place()"
        assert found.order_id == result.order_id

    drive(spec, tmp_path, scenario)


def test_place_is_idempotent_on_client_order_id(spec: KitSpec, tmp_path: Path) -> None:
    """Placing the same client order id twice places one order: both answers carry the same order id."""

    async def scenario(broker: Broker) -> None:
        request = request_for(spec.order_leg())
        first = check_result(await within(spec, broker.place(request), "place()"), request, "place()")
        second = check_result(await within(spec, broker.place(request), "place() again"), request, "place() again")
        assert second.order_id == first.order_id, "a repeated place() with the same client order id placed again"

    drive(spec, tmp_path, scenario)


def test_lookup_of_an_unknown_client_order_id_is_none(spec: KitSpec, tmp_path: Path) -> None:
    """lookup() of a client order id that was never placed returns None (not an error, not a guess)."""

    async def scenario(broker: Broker) -> None:
        assert await within(spec, broker.lookup(new_client_order_id()), "lookup()") is None

    drive(spec, tmp_path, scenario)


def test_rejection_is_reported_as_a_rejection(spec: KitSpec, tmp_path: Path) -> None:
    """An order the venue refuses raises BrokerRejectedError (or returns state rejected), never an unknown
    outcome or an untyped exception, and is not found afterwards as a live order."""
    if spec.reject is None:
        pytest.fail("the settings file has no [reject] table: name leg keys the test venue refuses")

    async def scenario(broker: Broker) -> None:
        assert spec.reject is not None
        request = request_for(spec.order_leg(OrderType.MARKET, **spec.reject))
        try:
            result = await within(spec, broker.place(request), "place()")
        except BrokerRejectedError as e:
            assert str(e), "BrokerRejectedError without a message: the trader needs the reason"
        except Exception as e:  # noqa: BLE001 - any other exception is the finding
            pytest.fail(f"a refused order raised {type(e).__name__} ({e}), not BrokerRejectedError")
        else:
            assert result.state is OrderState.REJECTED, f"the [reject] order was accepted: {result}"
        found = await within(spec, broker.lookup(request.client_order_id), "lookup()")
        assert found is None or found.state is OrderState.REJECTED

    drive(spec, tmp_path, scenario)


async def _resting(spec: KitSpec, broker: Broker) -> OrderResult:
    if not broker.capabilities.cancel:
        pytest.skip("capabilities.cancel is false")
    if OrderType.LIMIT not in broker.capabilities.order_types:
        pytest.skip("LMT is not declared, so the kit cannot leave an order resting")
    if spec.resting_price is None:
        pytest.skip("no [prices] resting: a buy limit price the venue leaves open")
    request = request_for(spec.order_leg(OrderType.LIMIT, price=str(spec.resting_price), transactionType="B"))
    order = check_result(await within(spec, broker.place(request), "place()"), request, "place()")
    assert order.state in OPEN_STATES, f"the resting order is {order.state}, not open"
    return order


def test_cancel_by_order_id(spec: KitSpec, tmp_path: Path) -> None:
    """A resting order is cancelled by its order id: cancel() returns it as cancelled, lookup() agrees, and
    cancelling it again changes nothing: BrokerRejectedError, an empty list, or the same order as cancelled."""

    async def scenario(broker: Broker) -> None:
        order = await _resting(spec, broker)
        leg = CancelLeg(order_id=order.order_id)
        done = await within(spec, broker.cancel(CancelRequest(alert_id="c", leg_number=1, leg=leg)), "cancel()")
        assert [(r.order_id, r.state) for r in done] == [(order.order_id, OrderState.CANCELLED)]
        assert order.client_order_id is not None
        found = await within(spec, broker.lookup(order.client_order_id), "lookup()")
        assert found is not None
        assert found.state is OrderState.CANCELLED
        try:
            again = await within(spec, broker.cancel(CancelRequest(alert_id="c", leg_number=1, leg=leg)), "cancel()")
        except BrokerRejectedError:
            return
        assert [(r.order_id, r.state) for r in again] in ([], [(order.order_id, OrderState.CANCELLED)]), (
            f"cancelling a cancelled order returned {again}"
        )

    drive(spec, tmp_path, scenario)


def test_cancel_by_symbol(spec: KitSpec, tmp_path: Path) -> None:
    """Without an order id, cancel() cancels the open orders on the leg's symbol, including the resting one."""

    async def scenario(broker: Broker) -> None:
        order = await _resting(spec, broker)
        leg = CancelLeg(symbol=str(spec.leg["symbol"]))
        done = await within(spec, broker.cancel(CancelRequest(alert_id="c", leg_number=1, leg=leg)), "cancel()")
        assert order.order_id in {r.order_id for r in done}
        assert all(r.state is OrderState.CANCELLED for r in done)

    drive(spec, tmp_path, scenario)


def test_lost_answer_is_an_unknown_outcome_resolved_by_lookup(spec: KitSpec, tmp_path: Path) -> None:
    """When the venue records an order but its answer is lost or late, place() returns in time with
    BrokerUnknownOutcomeError (or with the order, resolved by the plugin), never a rejection; lookup() then
    finds the order, so tvbridge never places it twice."""
    if spec.unknown_outcome is None:
        pytest.skip("no [unknown_outcome] table: the test venue cannot be made to lose an answer")

    async def scenario(broker: Broker) -> None:
        assert spec.unknown_outcome is not None
        request = request_for(spec.order_leg(OrderType.MARKET, **spec.unknown_outcome))
        try:
            result = await within(spec, broker.place(request), "place() with a lost answer")
        except BrokerUnknownOutcomeError:
            pass
        except Exception as e:  # noqa: BLE001 - any other exception is the finding
            pytest.fail(f"a lost answer raised {type(e).__name__} ({e}): the order may exist, so it is unknown")
        else:
            check_result(result, request, "place() with a lost answer")
        found = await within(spec, broker.lookup(request.client_order_id), "lookup()")
        assert found is not None, "lookup() does not find the order the venue recorded"
        check_result(found, request, "lookup()")

    drive(spec, tmp_path, scenario)


def test_declared_capabilities_have_their_methods(spec: KitSpec, tmp_path: Path) -> None:
    """Each optional capability the plugin declares (`positions`, `orders`) comes with its method; tvbridge
    refuses to build an account whose plugin claims one without it."""
    cls = load_plugin_class(spec.broker)

    async def scenario(broker: Broker) -> None:
        for flag, methods in CAPABILITY_METHODS.items():
            if getattr(broker.capabilities, flag):
                missing = [m for m in methods if not callable(getattr(cls, m, None))]
                assert not missing, f"capabilities.{flag} is declared, but {', '.join(missing)}() is missing"

    drive(spec, tmp_path, scenario)


def test_a_bracket_reports_its_parts_and_is_cancelled_whole(spec: KitSpec, tmp_path: Path) -> None:
    """A plugin that declares `brackets` places a resting buy limit with a target (twice the price) and a stop
    (half of it) as one order: `details["bracket"]` lists the entry, target and stop-loss parts, from `place()`
    and from `lookup()`; cancelling the entry's order id leaves no part open; `cancel_brackets()` returns a list
    of `OrderResult`s."""

    async def scenario(broker: Broker) -> None:
        if not broker.capabilities.brackets:
            pytest.skip("capabilities.brackets is false")
        if spec.resting_price is None:
            pytest.skip("no [prices] resting: a buy limit price the venue leaves open")
        price = spec.resting_price
        leg = spec.order_leg(
            OrderType.LIMIT,
            price=str(price),
            transactionType="B",
            target_price=str(price * 2),
            stoploss_price=str(price / 2),
        )
        request = request_for(leg)
        order = check_result(await within(spec, broker.place(request), "place()"), request, "place()")
        parts = parts_of(order.details)
        assert {"entry", "target", "stop_loss"} <= {p["part"] for p in parts}, (
            f"place() of a bracket reported parts {parts}, not entry, target and stop_loss in details['bracket']"
        )
        done = await within(
            spec,
            broker.cancel(CancelRequest(alert_id="c", leg_number=1, leg=CancelLeg(order_id=order.order_id))),
            "cancel()",
        )
        assert done, "cancelling a bracket's entry cancelled nothing"
        found = await within(spec, broker.lookup(request.client_order_id), "lookup()")
        assert found is not None, "lookup() does not find the bracket"
        left = parts_of(found.details)
        assert left, "lookup() of a bracket reports no parts in details['bracket']"
        assert not has_open_part(left), f"after cancelling the entry, parts are still open: {left}"
        cancelled = await within(spec, broker.cancel_brackets(leg), "cancel_brackets()")
        assert isinstance(cancelled, list), f"cancel_brackets() returned {type(cancelled).__name__}, not a list"
        assert all(isinstance(r, OrderResult) for r in cancelled)

    drive(spec, tmp_path, scenario)


def check_contract(contract: object, what: str) -> ContractId:
    assert isinstance(contract, ContractId), f"{what}.contract is {type(contract).__name__}, not a ContractId"
    assert isinstance(contract.exchange, Exchange), f"{what}.contract.exchange {contract.exchange!r} is no Exchange"
    assert isinstance(contract.instrument, Instrument), (
        f"{what}.contract.instrument {contract.instrument!r} is no Instrument"
    )
    assert contract.symbol, f"{what}.contract.symbol is empty: an alert could not name this contract"
    return contract


def check_positions(found: object, what: str) -> list[Position]:
    assert isinstance(found, list), f"{what} returned {type(found).__name__}, not a list of Position"
    for position in found:
        assert isinstance(position, Position), f"{what} returned a {type(position).__name__}, not a Position"
        check_contract(position.contract, what)
        assert isinstance(position.product, Product), f"{what}: product {position.product!r} is no Product"
        assert isinstance(position.net_quantity, int), f"{what}: net_quantity {position.net_quantity!r} is no int"
        assert position.net_quantity != 0, f"{what} listed a flat position ({position.contract.describe()})"
    return found


async def read_positions(spec: KitSpec, broker: Broker, leg: OrderLeg | None = None) -> list[Position]:
    what = "positions()" if leg is None else "positions(leg)"
    return check_positions(await within(spec, broker.positions(leg), what), what)


def _net(positions: list[Position], product: Product) -> int:
    return sum(p.net_quantity for p in positions if p.product is product)


def test_positions_are_typed_signed_and_never_flat(spec: KitSpec, tmp_path: Path) -> None:
    """`positions()` returns Position objects (contract, product, signed int net quantity, never 0), and
    `positions(leg)` only positions that `positions()` also lists."""

    async def scenario(broker: Broker) -> None:
        if not broker.capabilities.positions:
            pytest.skip("capabilities.positions is false")
        every = check_positions(await within(spec, broker.positions(), "positions()"), "positions()")
        mine = check_positions(
            await within(spec, broker.positions(spec.order_leg()), "positions(leg)"), "positions(leg)"
        )
        stray = [p.contract.describe() for p in mine if p not in every]
        assert not stray, f"positions(leg) returned positions that positions() does not list: {stray}"

    drive(spec, tmp_path, scenario)


def test_a_filled_buy_shows_in_positions(spec: KitSpec, tmp_path: Path) -> None:
    """After a market buy the venue fills, `positions(leg)` shows the leg's product net quantity up by exactly
    the filled quantity (EXIT_ALL and flatten size their orders from it: a wrong sign or size closes wrongly)."""

    async def scenario(broker: Broker) -> None:
        if not broker.capabilities.positions:
            pytest.skip("capabilities.positions is false")
        leg = spec.order_leg(OrderType.MARKET, transactionType="B")
        before = _net(
            check_positions(await within(spec, broker.positions(leg), "positions(leg)"), "positions"), leg.product
        )
        request = request_for(leg)
        placed = check_result(await within(spec, broker.place(request), "place()"), request, "place()")
        found = await within(spec, broker.lookup(request.client_order_id), "lookup()") or placed
        if found.state is not OrderState.FILLED:
            pytest.skip(f"the venue did not fill the market buy at once (it is {found.state}): cannot compare")
        after = _net(
            check_positions(await within(spec, broker.positions(leg), "positions(leg)"), "positions"), leg.product
        )
        assert after - before == found.filled_quantity, (
            f"a filled buy of {found.filled_quantity} moved positions(leg) in {leg.product} from {before} to {after}:"
            " net_quantity must be signed units (+ long, - short) of the leg's contract"
        )

    drive(spec, tmp_path, scenario)


def test_open_orders_list_a_resting_order_until_it_is_cancelled(spec: KitSpec, tmp_path: Path) -> None:
    """`open_orders()` returns OpenOrder objects in an open state; a resting buy is listed with its side and
    quantity, and is gone once cancelled (flatten cancels what this lists)."""

    async def scenario(broker: Broker) -> None:
        if not broker.capabilities.orders:
            pytest.skip("capabilities.orders is false")
        order = await _resting(spec, broker)
        listed = await within(spec, broker.open_orders(), "open_orders()")
        assert isinstance(listed, list), f"open_orders() returned {type(listed).__name__}, not a list"
        for item in listed:
            assert isinstance(item, OpenOrder), f"open_orders() returned a {type(item).__name__}, not an OpenOrder"
            assert item.state in OPEN_STATES, f"open_orders() listed {item.order_id} in state {item.state}"
            check_contract(item.contract, "open_orders()")
        mine = [o for o in listed if o.order_id == order.order_id]
        assert mine, f"open_orders() does not list the resting order {order.order_id}"
        assert (mine[0].side, mine[0].quantity) == (Side.BUY, spec.order_leg().quantity), (
            f"open_orders() shows the resting buy of {spec.order_leg().quantity} as {mine[0].side} {mine[0].quantity}"
        )
        leg = CancelLeg(order_id=order.order_id)
        await within(spec, broker.cancel(CancelRequest(alert_id="c", leg_number=1, leg=leg)), "cancel()")
        after = await within(spec, broker.open_orders(), "open_orders()")
        assert order.order_id not in {o.order_id for o in after}, "open_orders() still lists a cancelled order"

    drive(spec, tmp_path, scenario)
