"""The alert and its legs as tvbridge understands them; no I/O and no parsing.

These classes are shaped for our domain (`side`, `order_type`, `Decimal` prices), not for TradingView's JSON:
the mapping from the alert's keys (`transactionType`, `orderType`, ...) lives in `parsing.py`. Broker plugins
receive `OrderLeg` / `CancelLeg` inside the request types of `tvbridge.broker`.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal

import attrs


class AlertType(enum.StrEnum):
    MULTI_LEG_ORDER = "multi_leg_order"
    SINGLE_ORDER = "single_order"
    CANCEL_ORDER = "cancel_order"


class Side(enum.StrEnum):
    BUY = "B"
    SELL = "S"


class OrderType(enum.StrEnum):
    MARKET = "MKT"
    LIMIT = "LMT"
    STOP_LOSS = "SL"
    STOP_LOSS_MARKET = "SL-M"


class Exchange(enum.StrEnum):
    NSE = "NSE"
    BSE = "BSE"
    NFO = "NFO"
    BFO = "BFO"
    MCX = "MCX"


class Instrument(enum.StrEnum):
    EQUITY = "EQ"
    FUTURE = "FUT"
    OPTION = "OPT"
    CALL = "CE"
    PUT = "PE"


class OptionType(enum.StrEnum):
    CALL = "CE"
    PUT = "PE"


class Product(enum.StrEnum):
    CNC = "C"
    INTRADAY = "I"
    MARGIN = "M"
    MTF = "MTF"


class PositionAction(enum.StrEnum):
    EXIT_ALL = "EXIT_ALL"


class QuantityUnit(enum.StrEnum):
    """What a leg's `quantity` counts. Brokers always receive units: tvbridge converts lots before sending."""

    UNITS = "units"
    """Shares for equity; for futures and options contracts x lot size (one NIFTY lot of 65 is 65)."""
    LOTS = "lots"
    """Dhan's own TradingView panel: `"quantity": "1"` on NIFTY1! is one lot (65 units). Equity: 1 lot = 1 share."""


class MarketPosition(enum.StrEnum):
    """Pine's `{{strategy.market_position}}`: the position a strategy alert asks for (`positions.py`)."""

    LONG = "long"
    SHORT = "short"
    FLAT = "flat"


class QuantityType(enum.StrEnum):
    """What a leg's `quantity` holds (`tvbridge/sizing.py`): the quantity itself, or what it is computed from."""

    FIXED = "fixed"
    """The quantity (units or lots), times the account's `quantity_multiplier`."""
    CAPITAL = "capital"
    """Rupees to spend: units = quantity / price."""
    PERCENT_OF_FUNDS = "percent_of_funds"
    """A percentage of the account's available funds (the broker's `funds()`): units = funds x pct / 100 / price."""
    RISK = "risk"
    """Rupees to risk: units = quantity / |price - triggerPrice|."""


class ExpiryRef(enum.StrEnum):
    """An expiry named relative to the exchange's date (`tvbridge/contracts.py`), resolved from the master."""

    CURRENT_WEEK = "current_week"
    NEXT_WEEK = "next_week"
    CURRENT_MONTH = "current_month"
    NEXT_MONTH = "next_month"


@attrs.frozen(kw_only=True)
class Meta:
    """TradingView's bar information; `timenow` drives the age check."""

    interval: str | None = None
    time: str | None = None
    timenow: datetime | None = None


@attrs.frozen(kw_only=True)
class OrderLeg:
    """One order to place. Options always carry `option_type`, `strike_price` and `expiry_date` here: the
    guide's `instrument: CE|PE` is folded into `Instrument.OPTION` by the parser."""

    side: Side
    order_type: OrderType
    quantity: int
    exchange: Exchange
    symbol: str
    instrument: Instrument
    product: Product
    sort_order: int | None = None
    price: Decimal = Decimal(0)
    trigger_price: Decimal | None = None
    option_type: OptionType | None = None
    strike_price: Decimal | None = None
    expiry_date: date | None = None
    manage_position: PositionAction | None = None
    amo_time: str | None = None
    meta: Meta | None = None
    quantity_unit: QuantityUnit | None = None
    """The alert's per-leg `quantity_unit`; None: the account's `quantity_unit`. A plugin always sees units here:
    tvbridge converts a quantity in lots (`tvbridge.lots`) before `place()`."""
    target_price: Decimal | None = None
    """Bracket (`tvbridge.brackets`): the price at which the position this entry opens is closed at a profit.
    A leg with any of the three bracket fields goes only to a broker that declares `capabilities.brackets`."""
    stoploss_price: Decimal | None = None
    """Bracket: the stop that closes the position at a loss; one-cancels-other with the target."""
    trailing_jump: Decimal | None = None
    """Bracket: each time the price moves this much in the position's favour, the stop follows by as much."""
    position_size: int | None = None
    """A target position (`{{strategy.position_size}}`: signed, > 0 long, < 0 short, 0 flat), in the leg's
    quantity unit: tvbridge sends the difference to the account's current position (`positions.py`). A plugin
    never sees it set: `place()` receives the plain order that moves the position."""
    market_position: MarketPosition | None = None
    """The target as `{{strategy.market_position}}` (long, short, flat) with `market_position_size`."""
    market_position_size: int | None = None
    underlying_price: Decimal | None = None
    """The underlying's price (`{{close}}` on its chart): picks the ATM strike for a relative `strike_price`."""
    strike_offset: int | None = None
    """`strike_price: "ATM"` (0), `"ATM+N"` (N strikes out of the money), `"ATM-N"` (N in the money); resolved
    to `strike_price` by tvbridge before `place()` (`contracts.py`)."""
    expiry_ref: ExpiryRef | None = None
    """`expiry_date: "current_week"`...; resolved to `expiry_date` by tvbridge before `place()`."""
    quantity_type: QuantityType | None = None
    """None: fixed. Resolved to a quantity in units by tvbridge before `place()` (`sizing.py`)."""


@attrs.frozen(kw_only=True)
class CancelLeg:
    """What to cancel: a broker `order_id`, or tvbridge's open orders for `symbol` (and `side`, if given)."""

    symbol: str | None = None
    exchange: Exchange | None = None
    side: Side | None = None
    order_id: str | None = None
    sort_order: int | None = None
    meta: Meta | None = None


@attrs.frozen(kw_only=True)
class OrderAlert:
    """A `multi_leg_order` or `single_order` alert; `legs` are already in `sort_order`."""

    alert_type: AlertType
    legs: tuple[OrderLeg, ...]
    key: str | None = None
    meta: Meta | None = None
    """A `meta` at the root of the alert: age-checked like a leg's."""


@attrs.frozen(kw_only=True)
class CancelAlert:
    alert_type: AlertType
    legs: tuple[CancelLeg, ...]
    key: str | None = None
    meta: Meta | None = None


Alert = OrderAlert | CancelAlert


def timenows(alert: Alert) -> list[datetime]:
    """Every `meta.timenow` of the alert: its root `meta`'s and its legs'."""
    metas = [alert.meta, *(leg.meta for leg in alert.legs)]
    return [meta.timenow for meta in metas if meta is not None and meta.timenow is not None]


def oldest_timenow(alert: Alert) -> datetime | None:
    """The alert's `meta.timenow`: the oldest of its stamps (root and legs), so one stale stamp makes the alert
    stale."""
    stamps = timenows(alert)
    return min(stamps) if stamps else None


class LegStatus(enum.StrEnum):
    """A leg's outcome as the response, the order log and the journal report it."""

    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    TEST_MODE = "test_mode"
    UNKNOWN = "unknown"
    PENDING = "pending"
    STALE = "stale"
    QUEUED = "queued"
    """The exchange is closed: waits in the journal's queue for its next window (`tvbridge/alertqueue.py`)."""
    EXPIRED = "expired"
    """Found unsent by crash recovery after `alerts.max_age_s`: deliberately never sent."""


class AlertStatus(enum.StrEnum):
    SUCCESS = "success"
    PARTIAL = "partial"
    FAILED = "failed"
    TEST_MODE = "test_mode"
    DUPLICATE = "duplicate"
    STALE = "stale"
    ACCEPTED = "accepted"
    QUEUED = "queued"


@attrs.frozen(kw_only=True)
class LegResult:
    """One leg on one account, as answered to TradingView and written to the order log."""

    leg_number: int
    account: str
    broker: str
    symbol: str
    exchange: str
    transaction: str
    quantity: str
    order_type: str
    product_type: str
    price: str
    status: LegStatus
    message: str
    order_id: str | None = None
    client_order_id: str | None = None
    order_state: str | None = None
    """The broker's order state at placement (`tvbridge.broker.OrderState`); order follow-up keeps the journal's
    copy current (`tvbridge/followup.py`)."""
    filled_quantity: int | None = None
    """Units filled at placement, when the broker said (None for no order or a dry run)."""
    average_price: str | None = None
    """Average fill price at placement, as a decimal string, when known."""
    bracket: tuple[dict[str, str | None], ...] = ()
    """A bracket leg's parts at placement (`tvbridge.brackets.parts_of`): entry, target and stop-loss, each
    with its order id, state and price; empty for a plain order. Order follow-up keeps the journal's copy
    current."""
    contract: str | None = None
    """The contract tvbridge chose for a relative strike or expiry (trading symbol, expiry, strike, security id)."""
    position_before: int | None = None
    """A target-position leg: the account's net position (units) found before sending."""
    position_target: int | None = None
    """A target-position leg: the position asked for (units, after the account's multiplier)."""
    strategy: str = "default"
    """The strategy the alert ran under (`tvbridge/strategies.py`; `default` for the global secret)."""
    position_key: str | None = None
    """An order leg's contract and product (`positions.book_key`): the strategy's own position is summed from
    the journaled fills by it."""


def summarize(results: list[LegResult]) -> AlertStatus:
    """The top-level `status` of a processed alert from its legs' results."""
    statuses = {r.status for r in results}
    if not statuses:
        return AlertStatus.FAILED
    if statuses == {LegStatus.TEST_MODE}:
        return AlertStatus.TEST_MODE
    if statuses <= {LegStatus.SUCCESS, LegStatus.TEST_MODE}:
        return AlertStatus.SUCCESS
    if statuses & {LegStatus.SUCCESS, LegStatus.TEST_MODE}:
        return AlertStatus.PARTIAL
    return AlertStatus.FAILED
