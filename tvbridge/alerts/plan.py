"""The planner: an alert and the moment it is planned at -> per account and leg, one decision. Pure: no I/O.

`make_plan()` is called by `alerts/flow.py` once per alert, after parsing and before anything is written; the
scheduler's `tradingday.send_queued` asks `decide()` again when a queued alert comes due. Every input is an
argument (the clock's reading, the calendar, the accounts' settings and limits, the per-alert checks in
`Checks`), so a test can stand at any moment of the exchange week without a server.

Per account and leg, one `LegPlan`:

* `now`      send now (the executor sizes the leg for the account and checks it again on the sized leg);
* `amo`      send now as an after-market order (`amo_time`);
* `queue`    wait in the closed-market queue until `at` (`alertqueue.py`);
* `refuse`   never sent, with `refusal` one of `stale` (`meta.timenow` too old or ahead of our clock), `closed`
             (market closed and `when_closed = "reject"`, or no session within a month), `risk` (a queued leg
             over a limit that can never pass: quantity, notional, the symbol lists) or `unsupported` (outside the
             broker's declared capabilities).

Each leg carries its client order id (the broker-side key that makes a resend find the first order) and the
alert's quantity; `first_send` says which legs the journal marks `sending` in the alert's own transaction
(`alerts/records.py`), so a plain alert costs one commit before its broker call.

The per-alert checks are inputs (`Checks`): today the risk limits per account and the reference prices; issue
19's strategy rules (allowed sides, symbols, entry window, halt) are meant to join them here as more fields,
each one more reason to `refuse`.

The sessions rule (`decide()`), per account:

* sessions off, a `cancel_order` alert, or every leg's exchange open: send now;
* `when_closed = "reject"`: every leg refused with the reason, nothing is sent;
* `when_closed = "amo"` on a broker in `[sessions] amo_brokers`, inside the after-market window (from 15 minutes
  after the close to 16 minutes before the next open): send now as an after-market order (each leg's `amoTime`,
  else `[sessions] amo_time`); outside that window it waits in the queue for the window or the open;
  on any other broker (paper): waits in the queue until the open (plus 30/60 minutes for OPEN_30/OPEN_60), so
  paper fills when a live AMO would;
* `when_closed = "queue"` (the default): waits in the queue until every leg's exchange is open, then is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Literal

import attrs

from tvbridge.broker import BrokerUnsupportedError, Capabilities, check_supported
from tvbridge.config import RiskConfig
from tvbridge.contracts import is_relative
from tvbridge.models import CancelAlert, OrderAlert, OrderLeg, oldest_timenow, timenows
from tvbridge.parsing import is_target
from tvbridge.risk import RiskLimitError, check_leg
from tvbridge.sessions import EXCHANGE_TZ

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tvbridge.config import Config
    from tvbridge.models import Alert, CancelLeg
    from tvbridge.sessions import Calendar

AMO_AFTER_CLOSE: Final = timedelta(minutes=15)
AMO_BEFORE_OPEN: Final = timedelta(minutes=16)
AMO_OFFSETS: Final = {"OPEN": timedelta(0), "OPEN_30": timedelta(minutes=30), "OPEN_60": timedelta(minutes=60)}
MAX_AHEAD_S: Final = 60.0
"""A `meta.timenow` further ahead of our clock than this is refused as stale: clocks are wrong somewhere."""

Action = Literal["now", "amo", "queue", "reject"]
"""The sessions rule's answer for one account (`decide`)."""
LegAction = Literal["now", "amo", "queue", "refuse"]
Refusal = Literal["stale", "closed", "risk", "unsupported"]


@attrs.frozen(kw_only=True)
class Decision:
    """The sessions rule's answer for one account (see the module docstring)."""

    account: str
    action: Action
    reason: str = ""
    at: datetime | None = None
    """When a queued alert is sent (exchange time)."""
    amo_time: str | None = None
    refusal: Refusal | None = None
    """For `reject`: `closed` (the sessions rule) or `risk` (a queued leg over a limit that can never pass)."""


@attrs.frozen(kw_only=True)
class LegPlan:
    account: str
    number: int
    action: LegAction
    reason: str = ""
    refusal: Refusal | None = None
    client_order_id: str | None = None
    """None for a cancel leg: it places nothing."""
    quantity: int | None = None
    """The alert's quantity (None for a cancel leg); the executor sizes it for the account (`sizing.py`)."""
    first_send: bool = False
    """Marked `sending` in the alert's own transaction: the account's first leg, a plain order sent now."""


@attrs.frozen(kw_only=True)
class Checks:
    """The per-alert checks the planner applies, as plain inputs (issue 19 adds strategy rules here)."""

    risk: Mapping[str, RiskConfig] = attrs.field(factory=dict)
    """Per account: the limits a queued leg must be able to pass (else it is refused now, not at the open)."""
    reference_price: Callable[[str, OrderLeg], Decimal | None] = lambda _account, _leg: None
    """The paper account's configured price for a market leg (`risk.reference_price`)."""
    capabilities: Mapping[str, Capabilities] = attrs.field(factory=dict)
    """Per account: what the broker declares; a leg outside it is refused `unsupported`."""
    premark: Callable[[str], bool] = lambda _account: True
    """Whether the account's first leg may be marked `sending` with the alert (False while the risk guard's
    daily count for today is not yet read from the journal: that read would count the mark)."""


@attrs.frozen(kw_only=True)
class Plan:
    alert_id: str
    accounts: tuple[Decision, ...]
    """Per account, the sessions rule's decision (a risk refusal of a queued account included)."""
    legs: tuple[LegPlan, ...]
    stale: str | None = None
    """Why the whole alert is refused as stale (nothing is journaled as accepted, nothing sent)."""
    age_s: float | None = None
    """The alert's age (negative: ahead of our clock), for the stale refusal's log line."""

    def of(self, action: Action) -> list[Decision]:
        return [d for d in self.accounts if d.action == action]

    @property
    def all_now(self) -> bool:
        return self.stale is None and all(d.action == "now" for d in self.accounts)

    def first_sends(self) -> frozenset[tuple[str, int]]:
        """(account, leg number) of the legs journaled `sending` with the alert."""
        return frozenset((leg.account, leg.number) for leg in self.legs if leg.first_send)

    def leg_state(self, leg: LegPlan) -> Literal["pending", "sending", "queued", "failed"]:
        """The state `record_plan` journals the leg in."""
        if leg.first_send:
            return "sending"
        if leg.action == "queue":
            return "queued"
        if leg.action == "refuse" and leg.refusal in {"closed", "risk"}:
            return "failed"  # the whole account: nothing of it runs now
        return "pending"


def client_order_id(alert_id: str, leg_number: int) -> str:
    """Deterministic, at most 25 characters of [A-Za-z0-9_-]: the broker-side key for idempotency."""
    return f"{alert_id}-{leg_number}"


def staleness(alert: Alert, now: datetime, max_age_s: float) -> tuple[str, float] | None:
    """Why the alert is stale and its age (negative when ahead of our clock), or None when it is fresh."""
    stamp = oldest_timenow(alert)
    if stamp is not None:
        age_s = (now - stamp).total_seconds()
        if age_s > max_age_s:
            return f"alert is stale: meta.timenow is {age_s:.0f} s old, the limit is {max_age_s:.0f} s", age_s
    stamps = timenows(alert)
    if stamps:
        ahead_s = (max(stamps) - now).total_seconds()
        if ahead_s > MAX_AHEAD_S:
            message = (
                f"alert is stale: meta.timenow is {ahead_s:.0f} s ahead of this server's clock, the limit is"
                f" {MAX_AHEAD_S:.0f} s; check the clock of the server and of the alert's sender"
            )
            return message, -ahead_s
    return None


def make_plan(
    alert_id: str,
    alert: Alert,
    accounts: Sequence[str],
    *,
    now: datetime,
    received: datetime,
    config: Config,
    calendar: Calendar,
    checks: Checks,
) -> Plan:
    """The alert's plan at `now` (the app's clock: sessions), its age taken at `received` (the wall clock, which
    `meta.timenow` is compared with; see the module docstring)."""
    stale = staleness(alert, received, config.alerts.max_age_s)
    legs: tuple[OrderLeg | CancelLeg, ...] = alert.legs
    if stale is not None:
        refused = tuple(
            LegPlan(account=a, number=n, action="refuse", refusal="stale", reason=stale[0], quantity=_qty(leg))
            for a in accounts
            for n, leg in enumerate(legs, start=1)
        )
        return Plan(alert_id=alert_id, accounts=(), legs=refused, stale=stale[0], age_s=stale[1])
    decisions = []
    for account in accounts:
        decision = decide(config, calendar, alert, account, now)
        if decision.action == "queue":
            decision = never_passes(alert, decision, checks)
        decisions.append(decision)
    planned = tuple(
        _leg_plan(alert_id, decision, n, leg, checks) for decision in decisions for n, leg in enumerate(legs, start=1)
    )
    return Plan(alert_id=alert_id, accounts=tuple(decisions), legs=planned)


def _qty(leg: OrderLeg | CancelLeg) -> int | None:
    return leg.quantity if isinstance(leg, OrderLeg) else None


def _leg_plan(alert_id: str, decision: Decision, number: int, leg: OrderLeg | CancelLeg, checks: Checks) -> LegPlan:
    account = decision.account
    order = isinstance(leg, OrderLeg)
    base = LegPlan(
        account=account,
        number=number,
        action="refuse" if decision.action == "reject" else decision.action,
        refusal=(decision.refusal or "closed") if decision.action == "reject" else None,
        reason=decision.reason,
        client_order_id=client_order_id(alert_id, number) if order else None,
        quantity=_qty(leg),
    )
    if decision.action not in {"now", "amo"} or not isinstance(leg, OrderLeg):
        return base
    plain = leg.manage_position is None and not is_target(leg) and not is_relative(leg)
    capabilities = checks.capabilities.get(account)
    if plain and capabilities is not None:
        try:
            check_supported(capabilities, leg)
        except BrokerUnsupportedError as e:
            return attrs.evolve(base, action="refuse", refusal="unsupported", reason=f"not sent: {e}")
    return attrs.evolve(base, first_send=number == 1 and plain and checks.premark(account))


def never_passes(alert: Alert, decision: Decision, checks: Checks) -> Decision:
    """A queued account whose risk limits the alert can never pass (quantity, notional, the symbol lists) is
    refused now, not hours later at the open. Limits that may change by then (the kill switch, the daily
    count) are checked when the alert is sent, with these again."""
    limits = checks.risk.get(decision.account)
    if not isinstance(alert, OrderAlert) or limits is None:
        return decision
    for number, leg in enumerate(alert.legs, start=1):
        try:
            check_leg(limits, leg, checks.reference_price(decision.account, leg))
        except RiskLimitError as e:
            reason = f"leg {number}: {e}; not queued, nothing will be sent"
            return Decision(account=decision.account, action="reject", reason=reason, refusal="risk")
    return decision


def with_amo(alert: OrderAlert, amo_time: str) -> OrderAlert:
    """The alert with every leg's `amoTime` set (the leg's own wins): brokers place such legs as AMOs."""
    legs = tuple(attrs.evolve(leg, amo_time=leg.amo_time or amo_time) for leg in alert.legs)
    return attrs.evolve(alert, legs=legs)


def show(moment: datetime | None) -> str:
    return moment.astimezone(EXCHANGE_TZ).strftime("%a %Y-%m-%d %H:%M IST") if moment else "none within a month"


def in_amo_window(calendar: Calendar, exchange: str, at: datetime) -> bool:
    if calendar.is_open(exchange, at):
        return False
    last, nxt = calendar.last_close(exchange, at), calendar.next_open(exchange, at)
    return last is not None and nxt is not None and last + AMO_AFTER_CLOSE <= at < nxt - AMO_BEFORE_OPEN


def amo_window_start(calendar: Calendar, exchanges: Sequence[str], at: datetime) -> datetime | None:
    """The first moment from `at` on when every exchange is in its after-market window, if before the open."""
    starts: list[datetime] = []
    for exchange in exchanges:
        if in_amo_window(calendar, exchange, at):
            starts.append(at)
            continue
        last = calendar.last_close(exchange, at)
        if last is None or at >= last + AMO_AFTER_CLOSE:
            return None  # just before the open: no window until the session
        starts.append(last + AMO_AFTER_CLOSE)
    start = max(starts)
    return start if all(in_amo_window(calendar, exchange, start) for exchange in exchanges) else None


def decide(config: Config, calendar: Calendar, alert: Alert, account: str, now: datetime) -> Decision:  # noqa: PLR0911 - one return per rule of the docstring
    """What to do with `alert` on `account` at `now` (the sessions rule of the module docstring)."""
    if not config.sessions.enabled or isinstance(alert, CancelAlert):
        return Decision(account=account, action="now")
    exchanges = sorted({leg.exchange.value for leg in alert.legs})
    closed = [exchange for exchange in exchanges if not calendar.is_open(exchange, now)]
    if not closed:
        return Decision(account=account, action="now")
    why = "; ".join(f"{exchange} is closed: {calendar.status(exchange, now).reason}" for exchange in closed)
    opens = calendar.all_open_from(exchanges, now)
    mode = config.when_closed(account)
    if opens is None:  # e.g. extra_holidays covering a month: nothing to wait for, so nothing is kept
        return Decision(account=account, action="reject", reason=f"market closed ({why}) and no session within a month")
    if mode == "reject":
        return Decision(
            account=account,
            action="reject",
            reason=f"market closed ({why}); when_closed is reject: nothing was sent; next open {show(opens)}",
        )
    if mode == "amo":
        default_amo = config.sessions.amo_time
        amo_time = next((leg.amo_time for leg in alert.legs if leg.amo_time), None) or default_amo
        if config.broker_of(account) in config.sessions.amo_brokers:
            if all(in_amo_window(calendar, exchange, now) for exchange in exchanges):
                return Decision(
                    account=account,
                    action="amo",
                    reason=f"market closed ({why}); sent as an after-market order ({amo_time})",
                    amo_time=default_amo,
                )
            window = amo_window_start(calendar, exchanges, now)
            at = min(window, opens) if window else opens
            return Decision(
                account=account,
                action="queue",
                at=at,
                reason=f"market closed ({why}); outside the after-market window: queued until {show(at)}",
            )
        at = opens + AMO_OFFSETS.get(amo_time.upper(), timedelta(0))
        return Decision(
            account=account,
            action="queue",
            at=at,
            reason=f"market closed ({why}); this broker takes no after-market orders: queued until {show(at)}"
            f" ({amo_time})",
        )
    return Decision(
        account=account, action="queue", at=opens, reason=f"market closed ({why}); queued until {show(opens)}"
    )
