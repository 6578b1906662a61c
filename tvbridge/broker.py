"""The broker plugin interface: the whole surface a plugin author reads.

A broker plugin is a class registered under the entry point group `tvbridge.brokers`; the entry point's name is
what users write as `broker = "..."` in an `[accounts.NAME]` table::

    # your plugin's pyproject.toml
    [project.entry-points."tvbridge.brokers"]
    sample = "tvbridge_samplebroker:SampleBroker"

Everything a plugin needs is importable from this module (the leg types of `tvbridge.models` are re-exported
here), and everything in it is covered by `API_VERSION`:
a change that would break an existing plugin bumps it, additions (a new optional field, a new helper) do not.
`docs/plugins.md` is the guide; `plugins/tvbridge-samplebroker` is a complete worked example, and
`pytest --tvbridge-broker=NAME` (the conformance kit, `tvbridge.conformance`) checks a plugin against the rules.

The life of a plugin instance (one per account; two accounts on the same broker get two instances):

1. At start, tvbridge loads the class, checks `api_version` and the methods of `Broker` (a mismatch stops the
   start with a message naming the entry point and its distribution), then calls
   `from_settings(settings, context)` with the account's table minus `broker`. Validate the table there
   (`settings_from()` does it for an attrs class) and do no I/O.
2. `await start()` once, before the first order: open sessions, load reference data.
3. `place()`, `cancel()`, `lookup()`, `health()` (and, when declared, `positions()` and `open_orders()`) are
   called from the event loop, possibly concurrently (several alerts at once); `place()` only after tvbridge
   checked the leg against `capabilities`.
4. `await aclose()` once at shutdown, and only if `start()` returned: a `start()` that raises cleans up what it
   opened before raising.

Rules every plugin keeps, because real money depends on them:

* `place()` is idempotent on `request.client_order_id`: asked twice for the same id, it must not place twice
  (look the order up first, or let the broker reject the duplicate id).
* A call whose outcome is not known (timeout, dropped connection after sending) raises
  `BrokerUnknownOutcomeError`, never `BrokerRejectedError`: tvbridge then asks `lookup()`, and never resends
  blindly.
* Errors are raised as the types below; anything else is treated as an unknown outcome.
* Never block the event loop: a synchronous client runs in `asyncio.to_thread()` under `asyncio.timeout()`.
  TradingView gives up after 3 s, so keep your own timeouts well under that.
* No secret (token, password) in an exception message, a result message, a `repr` or a log line
  (`attrs.field(repr=False)` on the settings field).
* `place()` receives plain orders only. A leg with `manage_position` (EXIT_ALL) is turned into the order that
  closes the position by tvbridge itself, from `positions()`, before `place()` is called; a broker that does not
  declare `capabilities.positions` never sees such a leg (it fails before sending, naming the capability).

Optional capabilities (API version 1 additions: a plugin written before them still loads): `positions()` and
`open_orders()` are called only when `capabilities.positions` / `capabilities.orders` is true, and a plugin that
declares one must have its method (checked at start, like the required methods). EXIT_ALL legs and target
positions need `positions`; `tvbridge flatten` cancels through `open_orders()` and closes through `positions()`.
Brackets (`target_price`, `stoploss_price`, `trailing_jump` on a leg) need `capabilities.brackets` and
`cancel_brackets()`; `tvbridge.brackets` says what the parts look like.

Joining the journal (capability `joins_journal`, for a broker that lives in the process, like `paper`): with the
SQLite journal, tvbridge offers the plugin the journal's database before `start()` (`join_journal(database)`);
a plugin that accepts keeps its state in tables of the journal's file from then on, and books an alert's first
order with `place_joined(conn, request)` INSIDE the journal's transaction that records the alert (`record_plan`,
`tvbridge/alerts/records.py`): the alert, its plan and the order are one commit, both or neither, so a crash
can never leave an order without its alert (placed again by a resend) nor an answered alert without its order.
Every check tvbridge makes before a send (halts, risk limits, sizing, capabilities) has run before; a refused leg
is never booked. `place_joined` is synchronous (it runs inside the commit), does only SQL on the connection it
is given, in a SAVEPOINT of its own, and raises the usual errors: a refusal rolls back only its own writes (the
alert is recorded with the leg failed). It may run twice for one commit (the group commit runs its writes again
after another alert's write failed): only SQL, no state outside the connection. Later legs and every other call
(`place`, `cancel`, `lookup`, `positions`...) run as usual, their writes through `database.write()` (one of
the journal's group commits). A remote broker never joins: it is called only after the alert is committed
(journal before send). With the PostgreSQL store nothing is offered (the plugin keeps its own transactions).

Errors::

    BrokerError
    +-- BrokerRejectedError        the broker refused the order; nothing was placed
    +-- BrokerUnsupportedError     the leg asks for something this broker cannot do; nothing was sent
    +-- BrokerUnavailableError     transient: nothing was placed, a later try may work
    |   +-- BrokerAuthError        credentials expired or wrong; nothing was placed
    +-- BrokerUnknownOutcomeError  the order may or may not exist: resolve with lookup()

    ValueError
    +-- SettingsError              an account table is invalid (raised by settings_from())
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, TypeVar, runtime_checkable

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn

from tvbridge.cluster import SOLO, Cluster, ClusterError, Shared, SharedKeyError
from tvbridge.models import (
    CancelLeg,
    Exchange,
    Instrument,
    OptionType,
    OrderLeg,
    OrderType,
    Product,
    Side,
)

if TYPE_CHECKING:
    import sqlite3

__all__ = [
    "API_VERSION",
    "CAPABILITY_METHODS",
    "ENTRY_POINT_GROUP",
    "OPEN_STATES",
    "Broker",
    "BrokerAuthError",
    "BrokerContext",
    "BrokerError",
    "BrokerRejectedError",
    "BrokerUnavailableError",
    "BrokerUnknownOutcomeError",
    "BrokerUnsupportedError",
    "CancelLeg",
    "CancelRequest",
    "Capabilities",
    "Cluster",
    "ClusterError",
    "ContractId",
    "Exchange",
    "Health",
    "Instrument",
    "InstrumentInfo",
    "JoinedConnection",
    "JournalDatabase",
    "JournalJoiner",
    "Listings",
    "OpenOrder",
    "OptionType",
    "OrderLeg",
    "OrderRequest",
    "OrderResult",
    "OrderState",
    "OrderType",
    "Position",
    "Product",
    "ReadinessCheck",
    "SettingsError",
    "Shared",
    "SharedKeyError",
    "Side",
    "check_supported",
    "settings_from",
]

API_VERSION: Final = 1
"""Bumped when a change to this module would break existing plugins. A plugin declares the version it was
written for as the class attribute `api_version = API_VERSION`; tvbridge refuses a plugin whose version differs,
with a message naming the plugin, both versions and what to do."""

ENTRY_POINT_GROUP: Final = "tvbridge.brokers"
"""The entry point group tvbridge searches for broker plugins."""

T = TypeVar("T")


class BrokerError(Exception):
    """Base of every error a broker plugin raises; the message is shown to the trader, so no secrets."""


class BrokerRejectedError(BrokerError):
    """The broker refused the order (bad price, no margin, unknown symbol...): nothing was placed. The leg is
    reported `failed` with this message; a resend would be refused again."""


class BrokerUnsupportedError(BrokerError):
    """The leg asks for something this broker or account cannot do: nothing was sent. `check_supported()` raises
    it from `capabilities`; raise it yourself for finer rules (e.g. no MTF on this segment)."""


class BrokerUnavailableError(BrokerError):
    """Transient: the broker could not be reached or refused to serve (rate limit, maintenance) *before* the
    order was accepted, so nothing was placed and a later try may work."""


class BrokerAuthError(BrokerUnavailableError):
    """Credentials are expired or wrong: nothing was placed. Also what `health()` reports as not ok."""


class BrokerUnknownOutcomeError(BrokerError):
    """The request may have reached the broker (timeout or dropped connection after sending): the order may or
    may not exist. tvbridge calls `lookup(client_order_id)` before reporting and never resends blindly."""


class SettingsError(ValueError):
    """An account's table is invalid. `problems` are `(key, message)` pairs, all of them at once; tvbridge shows
    each as `accounts.NAME.key: message`. A plugin may also raise a plain `ValueError("key: message")`."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{key}: {message}" if key else message for key, message in self.problems))


class OrderState(enum.StrEnum):
    """Where an order stands at the broker, as the broker reported it (never assumed: since 2026 Dhan turns a
    market order into a protected limit order, which may rest `open`)."""

    PENDING = "pending"
    """Accepted by the API, not yet at the exchange (or the broker did not say more)."""
    OPEN = "open"
    """Resting on the book (a limit order that did not cross)."""
    TRIGGER_PENDING = "trigger_pending"
    """A stop order waiting for its trigger price."""
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    """Ended unfilled (or partly filled) by the exchange or the broker at the end of its validity (a day
    order at the close; Dhan's protected market order that found no price), not by a cancel request."""
    REJECTED = "rejected"
    """Refused after acceptance (by the exchange or the broker's risk checks). Refused up front: raise
    `BrokerRejectedError` instead; tvbridge reports both as a failed leg."""
    DRY_RUN = "dry_run"
    """Validated and resolved, deliberately not sent (test mode); reported as leg status `test_mode`."""


OPEN_STATES: Final = frozenset(
    {OrderState.PENDING, OrderState.OPEN, OrderState.TRIGGER_PENDING, OrderState.PARTIALLY_FILLED}
)
"""States in which an order can still be cancelled."""


@attrs.frozen
class SharedDatabase:
    """The PostgreSQL database tvbridge keeps its shared state in (`[journal] url`), for a plugin whose own state
    must be the same on every instance (the paper book). tvbridge has migrated it before any plugin starts; a
    plugin keeps its rows in tables tvbridge's migrations create (`tvbridge/store/migrations.py`), connects with
    the store's driver (asyncpg, the `postgres` extra), and never logs or shows `url`: it holds the password."""

    url: str = attrs.field(repr=False)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@attrs.frozen(kw_only=True)
class BrokerContext:
    """What tvbridge tells a plugin about where it runs."""

    account: str
    """The account's name (`[accounts.NAME]`): put it in log lines and per-account file names."""
    data_dir: Path
    """tvbridge's data directory (`server.data_dir`); keep files there, named after the account."""
    notify: Callable[[str, str], None] = attrs.field(default=lambda _kind, _message: None, eq=False, repr=False)
    """`notify(kind, message)` tells the operator (tvbridge's `[notify]` targets) that something needs a person
    before it costs an alert: kinds `token_expiring` and `instruments_refresh_failed` (see docs/operations.md).
    Never blocks, never raises; no secret in `message`. The default drops it (tests, `tvbridge brokers`)."""
    database: SharedDatabase | None = None
    """The shared PostgreSQL database when `[journal] url` is set (several instances serve as one), else None
    (state stays in `data_dir`, per instance). See `SharedDatabase` and docs/plugins.md."""
    sqlite_journal: Path | None = None
    """With `database` set: the SQLite journal's file (`[journal] path`) the PostgreSQL store replaced. A plugin
    whose state joined that journal on an earlier start (`join_journal`) finds it there, and must not start
    without it (paper refuses). None without `database`."""
    cluster: Cluster = attrs.field(default=SOLO, eq=False, repr=False)
    """Several instances on one PostgreSQL store: `await cluster.is_leader()` before scheduled work that must run
    once (a token renewal, a daily download), `publish`/`load` to hand its result to the other instances
    (`tvbridge.cluster`, docs/plugins.md). Alone (SQLite, the default): always the leader, nothing shared."""
    clock: Callable[[], datetime] = attrs.field(factory=lambda: _utc_now, eq=False, repr=False)
    """tvbridge's wall clock (aware): use it for schedules and expiries, so a test can stand on a chosen moment."""


@attrs.frozen(kw_only=True)
class OrderRequest:
    """Place `leg` on the account. `client_order_id` is deterministic (alert id + leg number), at most 25
    characters of `[A-Za-z0-9_-]` (Dhan's correlation id limit), the same for every account the alert goes to,
    and is the key for idempotency and `lookup()`: send it to the broker as its client order id / tag."""

    client_order_id: str
    alert_id: str
    """tvbridge's id of the alert (also in the journal, the order log and every log line)."""
    leg_number: int
    """1-based, in `sort_order`."""
    leg: OrderLeg
    """The leg as parsed and validated: `tvbridge.models.OrderLeg` (Decimal prices, enums, options complete)."""


@attrs.frozen(kw_only=True)
class CancelRequest:
    """Cancel `leg.order_id`, or (without one) every open order this plugin placed for `leg.symbol`, and only
    on `leg.side` when given."""

    alert_id: str
    leg_number: int
    leg: CancelLeg


@attrs.frozen(kw_only=True)
class OrderResult:
    """The broker's answer for one order. `message` is for the trader; `details` may hold what was sent
    (dry-run) or the broker's own status text (JSON-serialisable values only)."""

    order_id: str | None
    """The broker's own order id (None only for a dry run that produced none)."""
    state: OrderState
    message: str = ""
    client_order_id: str | None = None
    """Echo `request.client_order_id`: the conformance kit checks it."""
    filled_quantity: int = 0
    average_price: Decimal | None = None
    details: Mapping[str, object] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ContractId:
    """Which contract a position or an order is in, independent of the account: what an alert leg names
    (`exchange`, `symbol`, `instrument`, and for derivatives expiry, strike and CE/PE) plus the broker's own id
    when it has one. Built from it, an `OrderLeg` must resolve to the same contract in this plugin's `place()`:
    flatten closes positions that way."""

    exchange: Exchange
    symbol: str
    """As an alert names it: `RELIANCE`; for derivatives the underlying, `NIFTY`."""
    instrument: Instrument
    """`EQ`, `FUT` or `OPT` (options carry `option_type`)."""
    option_type: OptionType | None = None
    strike_price: Decimal | None = None
    expiry_date: date | None = None
    security_id: str | None = None
    """The broker's own instrument id (Dhan's `securityId`), when it has one."""
    trading_symbol: str = ""
    """The broker's display name (`NIFTY-Dec2026-FUT`), for people; never used to match."""

    def describe(self) -> str:
        """`NSE RELIANCE`, `NFO NIFTY FUT 2026-12-29`, `NFO NIFTY 2026-12-29 24000 CE`: for messages."""
        parts = [self.exchange.value, self.symbol]
        if self.instrument is Instrument.FUTURE:
            parts.append("FUT")
        if self.expiry_date is not None:
            parts.append(self.expiry_date.isoformat())
        if self.strike_price is not None:
            parts.append(format(self.strike_price.normalize(), "f"))
        if self.option_type is not None:
            parts.append(self.option_type.value)
        return " ".join(parts)


@attrs.frozen(kw_only=True)
class Position:
    """The account's net position in one contract and product, as the broker reports it now."""

    contract: ContractId
    product: Product
    net_quantity: int
    """Signed, in units (shares; derivatives: contracts x lot size): > 0 long, < 0 short. Never 0: a flat
    position is not listed."""
    average_price: Decimal | None = None
    """Average entry price of the open quantity, when the broker knows it."""
    details: Mapping[str, object] = attrs.field(factory=dict)
    """The broker's own fields worth showing (realized P&L...): JSON-serialisable values only."""


@attrs.frozen(kw_only=True)
class OpenOrder:
    """An order that can still be cancelled (its `state` is one of `OPEN_STATES`)."""

    order_id: str
    state: OrderState
    contract: ContractId
    side: Side
    quantity: int
    """Units, as ordered."""
    product: Product | None = None
    """None when the broker's product has no tvbridge equivalent (e.g. a Dhan cover order)."""
    order_type: OrderType | None = None
    """None when the broker's order type has no tvbridge equivalent."""
    filled_quantity: int = 0
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    client_order_id: str | None = None
    """The client order id it was placed with, when the broker keeps it (tvbridge's own orders have one)."""
    details: Mapping[str, object] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Capabilities:
    """What the broker can do; a leg outside it fails before anything is sent (`check_supported()`), with a
    message that names the alert field and what is supported. Defaults: everything tvbridge knows."""

    order_types: frozenset[OrderType] = frozenset(OrderType)
    products: frozenset[Product] = frozenset(Product)
    exchanges: frozenset[Exchange] = frozenset(Exchange)
    instruments: frozenset[Instrument] = frozenset(Instrument)
    cancel: bool = True
    """False: `cancel_order` alerts fail for this account without calling `cancel()`."""
    positions: bool = False
    """True: `positions()` lists the account's open positions. Needed for `manage_position: EXIT_ALL` (refused
    before sending without it) and for the closing half of `tvbridge flatten`. False by default, so a plugin
    written before positions were part of the interface keeps loading."""
    orders: bool = False
    """True: `open_orders()` lists the account's orders that can still be cancelled. Needed for the cancelling
    half of `tvbridge flatten`."""
    reconfigure: bool = False
    """True: `reconfigure(settings)` takes the account's edited table on SIGHUP (a renewed token, no restart).
    False: the account keeps its start-up settings until a restart."""
    live: bool = False
    """True when orders reach a real market (used for the weak-secret refusal and the README's warnings)."""
    instrument_info: bool = False
    """True: the plugin also implements `instrument_info()` (lot sizes from its instrument
    master). tvbridge needs it to convert a futures or options quantity given in lots (`quantity_unit = "lots"`);
    without it such a leg fails before sending, naming this capability."""
    readiness: bool = False
    """True: `readiness()` tells before the open whether today will work (token, reference data, reachability,
    clock). tvbridge asks live accounts at `[sessions] readiness_at` and on `tvbridge ready`; without it an
    account is asked `health()`."""
    state_files: bool = False
    """True: `state_files()` names the files the plugin keeps the account's state in (paper's database).
    tvbridge watches them as it watches its own journal: deleted or replaced under the running server, `/webhook`
    answers 503 (nothing recorded, a resend welcome after a restart) instead of trading into a lost file."""
    token_expiry: bool = False
    """True: `token_expiry()` says when the account's credentials expire (Dhan's access token lives 24 h), for
    `/health`, `/status`, `tvbridge status` and `tvbridge_broker_token_expiry_timestamp_seconds`."""
    brackets: bool = False
    """True: `place()` takes a leg with `target_price` / `stoploss_price` / `trailing_jump` as one bracket (the
    entry with its target and stop, the two exits one-cancels-other, the stop trailing by `trailing_jump`),
    reports the parts in `OrderResult.details["bracket"]` (`tvbridge.brackets`) from `place()` and `lookup()`,
    cancels the whole bracket when `cancel()` names any of its orders, and implements `cancel_brackets()`.
    False: such a leg fails before sending, naming this capability (never an entry without its stop)."""
    listings: bool = False
    """True: the plugin also implements `listings()` (the expiries and strikes its instrument master lists).
    tvbridge needs it for a strike or expiry relative to the market (`strike_price: "ATM+1"`, `expiry_date:
    "current_week"`); without it such a leg fails before sending, naming this capability."""
    funds: bool = False
    """True: the plugin also implements `funds()` (the account's available funds). Needed for `quantity_type:
    percent_of_funds`; without it such a leg fails before sending, naming this capability."""
    joins_journal: bool = False
    """True: the plugin lives in tvbridge's process and implements `join_journal()` and `place_joined()`: with the
    SQLite journal its state moves into the journal's file and an alert's first order is booked in the alert's
    own commit (see "Joining the journal" above). Never for a broker reached over a network."""


@attrs.frozen(kw_only=True)
class ReadinessCheck:
    """One finding of the pre-open readiness check (`Broker.readiness()`): `name` is short (`token`,
    `instruments`, `reachable`, `clock`), `detail` is for the trader (what is wrong and what fixes it; no
    secrets). `local`: the finding is this instance's own (its instrument master file, its clock, its key), not
    one every instance sharing a PostgreSQL store sees alike (the account's token at the broker): a follower
    notifies its own findings, the leader all of them (so a shared problem is notified once)."""

    name: str
    ok: bool
    detail: str = ""
    local: bool = False


@attrs.frozen(kw_only=True)
class InstrumentInfo:
    """The contract a leg names, as the broker's instrument master lists it (`Broker.instrument_info()`)."""

    trading_symbol: str
    """The broker's own name for the contract (Dhan: `NIFTY-Dec2026-FUT`), for messages."""
    lot_size: int
    """Units in one lot (65 for a NIFTY future in 2026); 1 for equity."""
    security_id: str | None = None
    """The broker's own id of the contract (Dhan's `securityId`), when it has one: shown to the trader."""


@attrs.frozen(kw_only=True)
class Listings:
    """What the broker's instrument master lists for an underlying (`Broker.listings()`): tvbridge picks a
    relative expiry (`current_week`...) and the ATM strike from it, then names the chosen contract in the leg."""

    expiries: tuple[date, ...]
    """Every listed expiry of the leg's underlying for the leg's instrument (futures or options), ascending,
    expired ones included (tvbridge decides what is current in exchange time)."""
    strikes: tuple[Decimal, ...] = ()
    """With a leg naming an option's `expiry_date` and `option_type`: the strikes listed for it, ascending."""


@attrs.frozen(kw_only=True)
class Health:
    """One health check: `ok = False` turns `/health` to 503 with `detail` as the reason (no secrets)."""

    ok: bool
    detail: str = ""


@runtime_checkable
class Broker(Protocol):
    """What every broker plugin class implements. Class attribute `api_version = API_VERSION`; every method
    below is required (tvbridge checks their presence when it loads the plugin), except `positions()`,
    `open_orders()`, `reconfigure()`, `instrument_info()` and `cancel_brackets()`, which are required only when
    `capabilities` declares `positions` / `orders` / `reconfigure` / `instrument_info` / `brackets`
    (`CAPABILITY_METHODS`): tvbridge never calls them otherwise. A plugin without them
    still runs; to satisfy a static type checker it may define them to raise `BrokerUnsupportedError`."""

    api_version: int

    @classmethod
    def from_settings(cls, settings: Mapping[str, object], context: BrokerContext) -> Self:
        """Build from the account's config table (minus `broker` and tvbridge's own `config.ACCOUNT_KEYS`), with
        no I/O. Reject unknown keys and bad values by raising `ValueError` naming the key (`settings_from()` does
        it for an attrs class); tvbridge reports it as `accounts.NAME.key: message` and does not start."""
        ...

    @property
    def capabilities(self) -> Capabilities:
        """What this account supports; may depend on the settings (e.g. `live`). Read before every `place()`."""
        ...

    async def start(self) -> None:
        """Open sessions, load reference data; raise `BrokerError` if the account cannot work at all (tvbridge
        then refuses to start). Called once, before the first order."""
        ...

    async def place(self, request: OrderRequest) -> OrderResult:
        """Send one order and return what the broker says about it (`state` as reported, not assumed).

        Idempotent on `request.client_order_id`. Raise `BrokerRejectedError` when refused,
        `BrokerUnavailableError` / `BrokerAuthError` when nothing was sent, `BrokerUnknownOutcomeError` when it
        may have been sent (tvbridge then calls `lookup()`); you may resolve the doubt yourself first."""
        ...

    async def cancel(self, request: CancelRequest) -> list[OrderResult]:
        """Cancel by `leg.order_id`, or every open order this plugin placed for `leg.symbol` (and `leg.side`).
        Return the orders now cancelled (an empty list when there was nothing to cancel); raise
        `BrokerRejectedError` for an unknown order id or one that can no longer be cancelled. Cancelling an order
        that is already cancelled changes nothing: raise `BrokerRejectedError`, or return it again as cancelled
        (idempotent, like `place()`), or return an empty list."""
        ...

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        """The order placed with this client order id, in its current state, or None if the broker has none.
        Crash recovery and unknown outcomes depend on it: ask the broker, not only local memory, when you can."""
        ...

    async def positions(self, leg: OrderLeg | None = None) -> list[Position]:
        """The account's open positions (never a flat one), every product. With `leg`, only those in the contract
        the leg names, resolved exactly as `place()` would resolve it (so `NIFTY1!` finds the nearest future's
        position): EXIT_ALL reads the leg's position this way and closes it in the leg's product.

        Ask the broker, not local memory: an exit sized from a stale position sends the wrong quantity. Raise
        `BrokerRejectedError` when the leg names no contract (unknown symbol), `BrokerUnavailableError` when the
        broker cannot be asked. Called only when `capabilities.positions` is true."""
        ...

    async def open_orders(self) -> list[OpenOrder]:
        """Every order of the account that can still be cancelled (state in `OPEN_STATES`), placed by tvbridge
        or not: flatten cancels them by `order_id`. Raise `BrokerUnavailableError` when the broker cannot be
        asked. Called only when `capabilities.orders` is true."""
        ...

    async def reconfigure(self, settings: Mapping[str, object]) -> None:
        """Take the account's edited table (SIGHUP), validated like `from_settings()`: raise `ValueError` naming
        the key and keep the running settings whole when it is bad. Called only when `capabilities.reconfigure` is
        true; never concurrently with itself."""
        ...

    async def health(self) -> Health:
        """Cheap enough to be polled every few seconds (cache a remote check); never raises."""
        ...

    async def aclose(self) -> None:
        """Close sessions and files; called once at shutdown when `start()` succeeded."""
        ...

    async def instrument_info(self, leg: OrderLeg) -> InstrumentInfo:
        """The contract `leg` names (exchange, symbol, and for derivatives expiry, strike and CE/PE), resolved
        exactly as `place()` would resolve it, with no order sent. `leg.quantity` is not looked at. Raise
        `BrokerRejectedError` for a contract the master does not list (the message is the one `place()` would
        give: the trader reads it); raise `BrokerUnavailableError` when the master is not loaded. Called only
        when `capabilities.instrument_info` is true: tvbridge needs it to convert a quantity in lots."""
        ...

    async def readiness(self, *, close_at: datetime) -> list[ReadinessCheck]:
        """Check what today's trading needs, up to `close_at` (today's close): credentials valid until then
        (or renewable), reference data fresh, the broker reachable, the clocks agreeing. Never raises. Called
        for live accounts at `[sessions] readiness_at` and on `tvbridge ready` when `capabilities.readiness` is
        true; an account without it is asked `health()`."""
        ...

    def state_files(self) -> list[Path]:
        """The files this account's state lives in, as opened by `start()` (absolute, or relative to tvbridge's
        working directory). No I/O. Called once, after `start()`, when `capabilities.state_files` is true."""
        ...

    def token_expiry(self) -> datetime | None:
        """When the account's credentials expire, as the broker's token says (read it for display and
        scheduling, trust it for nothing else); None when not known. No I/O: it is read on every scrape. Called
        only when `capabilities.token_expiry` is true."""
        ...

    async def cancel_brackets(self, leg: OrderLeg) -> list[OrderResult]:
        """Cancel every part still open of every bracket this plugin placed in the contract `leg` names (resolved
        as `place()` would), and return the parts now cancelled. EXIT_ALL calls it before it reads the position:
        a stop left resting after the position is closed would open it again the wrong way. Raise
        `BrokerUnavailableError` (or `BrokerUnknownOutcomeError`) when it cannot be done: the exit is then not
        sent. Called only when `capabilities.brackets` is true."""
        ...

    async def listings(self, leg: OrderLeg) -> Listings:
        """The expiries (and, when `leg` names an option's expiry and CE/PE, the strikes) the instrument master
        lists for `leg`'s exchange, underlying (`leg.symbol`) and instrument (FUT or OPT); `leg.strike_price`,
        `leg.quantity` and `leg.side` are not looked at. Raise `BrokerRejectedError` for an underlying the master
        does not list, `BrokerUnavailableError` when it is not loaded. No order is sent. Called only when
        `capabilities.listings` is true."""
        ...

    async def funds(self) -> Decimal:
        """The account's funds available for new orders, in rupees (Dhan: the fund limits' available balance).
        Raise `BrokerUnavailableError` / `BrokerAuthError` when they cannot be read. Called only when
        `capabilities.funds` is true, for `quantity_type: percent_of_funds`."""
        ...


class JournalJoiner(Protocol):
    """The methods of the optional capability `joins_journal` (see "Joining the journal" in the module docstring);
    apart from `Broker` so a plugin without it still is one."""

    def join_journal(self, database: JournalDatabase) -> bool:
        """Offered before `start()` with the SQLite journal: True when the plugin keeps its state in the journal's
        file from now on (it creates its tables there in `start()`, through `database.write()`), so tvbridge books
        the alert's first order with `place_joined()` in the alert's commit; False to keep its own files. No I/O.
        Called only when `capabilities.joins_journal` is true."""
        ...

    def place_joined(self, conn: JoinedConnection, request: OrderRequest) -> OrderResult:
        """`place()`, synchronously, on the journal's connection inside the transaction that records the alert:
        SQL only, in a SAVEPOINT of its own (released, never committed: the journal commits). Same errors and
        idempotency as `place()`. Called only after `join_journal()` returned True."""
        ...


class JoinedRows(Protocol):
    """A statement's answer as a joining plugin gets it: its rows and counts, not the cursor itself, whose
    `execute()` and `connection` would run statements past the journal's guard (`JoinedSql`). A
    `sqlite3.Cursor` is one."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int = 1, /) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> int | None: ...

    @property
    def description(self) -> Any: ...


class JoinedConnection(Protocol):
    """What `place_joined` gets of the journal's connection: statements only. The transaction is the journal's:
    COMMIT, ROLLBACK, END, BEGIN and a RELEASE or ROLLBACK TO of the journal's own savepoints raise
    `sqlite3.ProgrammingError` (SQLite's authorizer refuses them, however spelled; a savepoint of one's own is
    fine), and there is no `commit()`, `rollback()` nor `executescript()` (which commits first). See
    `tvbridge/alerts/joined.py`'s `JoinGuard`. Statements answer `JoinedRows` (rows and counts, no cursor to run
    more statements on). A `sqlite3.Connection` is one."""

    def execute(self, sql: str, parameters: Any = (), /) -> JoinedRows: ...

    def executemany(self, sql: str, parameters: Any, /) -> JoinedRows: ...


class JournalDatabase(Protocol):
    """The SQLite journal's database as a joining plugin sees it (`JournalJoiner.join_journal`). `write(fn)` runs `fn`
    with the connection inside one of the journal's transactions and returns once it is committed (a failure of
    the commit raises); `read(fn)` runs `fn` outside any write. `fn` is synchronous, SQL only, and may run twice
    (see "Joining the journal"). Never keep the connection: it is only valid inside `fn`."""

    @property
    def path(self) -> Path:
        """The journal's file."""
        ...

    @property
    def synchronous(self) -> str:
        """The journal's `synchronous` setting (what a commit survives: docs/durability.md)."""
        ...

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


CAPABILITY_METHODS: Final[Mapping[str, tuple[str, ...]]] = {
    "positions": ("positions",),
    "orders": ("open_orders",),
    "reconfigure": ("reconfigure",),
    "instrument_info": ("instrument_info",),
    "readiness": ("readiness",),
    "brackets": ("cancel_brackets",),
    "token_expiry": ("token_expiry",),
    "state_files": ("state_files",),
    "listings": ("listings",),
    "funds": ("funds",),
    "joins_journal": ("join_journal", "place_joined"),
}
"""`Capabilities` flag -> the methods a plugin that sets it must have (checked when tvbridge builds the account)."""


def check_supported(capabilities: Capabilities, leg: OrderLeg) -> None:
    """Raise `BrokerUnsupportedError` naming the field when the leg is outside the broker's capabilities.

    tvbridge calls it before `place()`; a plugin may call it again inside `place()` when used on its own."""
    if leg.manage_position is not None and not capabilities.positions:
        msg = (
            f"manage_position {leg.manage_position} needs the broker capability `positions` (reading the open"
            " position to close), which this broker does not declare: nothing was sent"
        )
        raise BrokerUnsupportedError(msg)
    if not capabilities.brackets and (
        leg.target_price is not None or leg.stoploss_price is not None or leg.trailing_jump is not None
    ):
        msg = (
            "target_price/stoploss_price/trailing_jump (a bracket) need the broker capability `brackets`, which this"
            " broker does not declare: nothing was sent (an entry without its stop is never placed)"
        )
        raise BrokerUnsupportedError(msg)
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


def settings_from(cls: type[T], settings: Mapping[str, object]) -> T:
    """The account table as an instance of the plugin's own attrs class `cls`, or `SettingsError` listing every
    problem with its key: unknown keys (a typo must stop the start, not leave a default silently on), missing
    required keys, values of the wrong type. Values are converted the way tvbridge's own config is (`Decimal`
    and `Path` fields welcome; booleans must be TOML booleans). Raise your own `SettingsError` for rules that
    span keys."""
    from tvbridge.parsing import make_converter  # noqa: PLC0415 - parsing imports the models this module exports

    converter = make_converter()
    converter.register_structure_hook_factory(
        attrs.has, lambda t: make_dict_structure_fn(t, converter, _cattrs_forbid_extra_keys=True)
    )
    try:
        return converter.structure(dict(settings), cls)
    except cattrs.BaseValidationError as e:
        raise SettingsError(_problems(e, cls)) from None


def _problems(error: cattrs.BaseValidationError, cls: type) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    known = ", ".join(f.name for f in attrs.fields(cls)) if attrs.has(cls) else ""
    for exc in error.exceptions:
        if isinstance(exc, ForbiddenExtraKeysError):
            problems.extend((key, f"unknown key (known keys: {known})") for key in sorted(exc.extra_fields))
    rest = [exc for exc in error.exceptions if not isinstance(exc, ForbiddenExtraKeysError)]
    if rest:
        group = error.derive(rest)
        for line in cattrs.transform_error(group, path="", format_exception=_format):
            message, _, where = line.rpartition(" @ ")
            problems.append((where.lstrip("."), message))
    return problems


def _format(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, ValueError) and not isinstance(exc, cattrs.BaseValidationError) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)
