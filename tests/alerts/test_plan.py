"""The planner (`tvbridge/alerts/plan.py`) on its own: no server, no files, any moment of the exchange week.

Each test builds an alert as TradingView sends it, parses it with the real converter, plans it at a chosen
moment and reads the decision per account and leg: what would be sent, queued, sent as an AMO or refused, why,
with which client order id and quantity, and which legs the journal marks `sending` with the alert.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
from helpers import alert, leg, with_accounts

from tvbridge.alerts.plan import Checks, Plan, make_plan
from tvbridge.broker import Capabilities
from tvbridge.config import RiskConfig, SessionsConfig
from tvbridge.models import OrderType
from tvbridge.parsing import parse_alert
from tvbridge.sessions import EXCHANGE_TZ, Calendar

if TYPE_CHECKING:
    from tvbridge.config import Config

WEDNESDAY_11 = datetime(2026, 11, 25, 11, 0, tzinfo=EXCHANGE_TZ)
SATURDAY_10 = datetime(2026, 11, 28, 10, 0, tzinfo=EXCHANGE_TZ)
MONDAY_OPEN = datetime(2026, 11, 30, 9, 15, tzinfo=EXCHANGE_TZ)
ALERT_ID = "0123456789abcdef0"


def stamped(at: datetime, **overrides: Any) -> dict[str, Any]:
    """A leg whose `meta.timenow` is `at` (UTC, as TradingView writes it)."""
    timenow = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return leg(meta={"interval": "1D", "time": "2026-11-20T09:15:00Z", "timenow": timenow}, **overrides)


def plan_of(
    config: Config,
    converter: Any,
    raw: dict[str, Any],
    at: datetime,
    *,
    checks: Checks | None = None,
    received: datetime | None = None,
) -> Plan:
    return make_plan(
        ALERT_ID,
        parse_alert(raw, converter),
        config.routing.accounts,
        now=at,
        received=received or at,
        config=config,
        calendar=Calendar.from_config(config.sessions),
        checks=checks or Checks(),
    )


def sessions_on(config: Config, **settings: Any) -> Config:
    return attrs.evolve(config, sessions=SessionsConfig(**settings))


def test_an_open_market_sends_every_leg_now_and_marks_each_accounts_first_leg_sending(
    config: Config, converter: Any
) -> None:
    """Sessions on, Wednesday 11:00 IST: two accounts, two legs each, all `now`; the client order ids are the alert
    id and the leg number, the quantity is the alert's, and only leg 1 of each account is journaled `sending` with
    the alert (leg 2 is marked when its turn comes)."""
    config = sessions_on(with_accounts(config, {"a": {"broker": "paper"}, "b": {"broker": "paper"}}))
    raw = alert(stamped(WEDNESDAY_11, quantity="7"), stamped(WEDNESDAY_11, quantity="3", sort_order="2"))
    plan = plan_of(config, converter, raw, WEDNESDAY_11)
    assert plan.all_now
    assert [(p.account, p.number, p.action, p.client_order_id, p.quantity, plan.leg_state(p)) for p in plan.legs] == [
        ("a", 1, "now", f"{ALERT_ID}-1", 7, "sending"),
        ("a", 2, "now", f"{ALERT_ID}-2", 3, "pending"),
        ("b", 1, "now", f"{ALERT_ID}-1", 7, "sending"),
        ("b", 2, "now", f"{ALERT_ID}-2", 3, "pending"),
    ]
    assert plan.first_sends() == {("a", 1), ("b", 1)}


def test_an_alert_older_than_max_age_is_refused_stale_on_every_leg(config: Config, converter: Any) -> None:
    """`meta.timenow` 10 minutes before the moment of planning (max_age_s 60 by default is less): every leg is
    refused `stale`, with the age and the limit in the reason; no account decision is made."""
    received = datetime(2026, 11, 25, 5, 30, tzinfo=UTC)
    plan = plan_of(config, converter, alert(stamped(received - timedelta(minutes=10))), received)
    limit = config.alerts.max_age_s
    assert plan.stale == f"alert is stale: meta.timenow is 600 s old, the limit is {limit:.0f} s"
    assert plan.age_s == 600
    assert [(p.action, p.refusal, p.reason) for p in plan.legs] == [("refuse", "stale", plan.stale)]
    assert plan.accounts == ()
    assert not plan.all_now


def test_a_timenow_ahead_of_the_clock_is_stale_and_a_fresh_one_is_not(config: Config, converter: Any) -> None:
    """Two minutes ahead of our clock is refused (clock skew, limit 60 s) with a negative age; 30 s ahead and
    30 s old both pass."""
    received = datetime(2026, 11, 25, 5, 30, tzinfo=UTC)
    ahead = plan_of(config, converter, alert(stamped(received + timedelta(minutes=2))), received)
    assert ahead.stale is not None
    assert "120 s ahead of this server's clock, the limit is 60 s" in ahead.stale
    assert ahead.age_s == -120
    for offset in (timedelta(seconds=30), timedelta(seconds=-30)):
        assert plan_of(config, converter, alert(stamped(received + offset)), received).stale is None


def test_the_age_is_taken_at_reception_not_at_the_exchange_clock(config: Config, converter: Any) -> None:
    """The sessions clock (`now`) may stand anywhere (a test, a replay); staleness compares `meta.timenow` with
    the moment of reception."""
    received = datetime(2026, 11, 25, 5, 30, tzinfo=UTC)
    plan = plan_of(config, converter, alert(stamped(received)), SATURDAY_10 + timedelta(days=30), received=received)
    assert plan.stale is None


def test_a_closed_market_queues_until_the_open(config: Config, converter: Any) -> None:
    """Saturday 10:00 IST, when_closed = queue (the default): every leg `queue` until Monday 09:15 IST, journaled
    `queued` with the reason, nothing marked `sending`."""
    config = sessions_on(config)
    plan = plan_of(config, converter, alert(stamped(SATURDAY_10)), SATURDAY_10)
    (decision,) = plan.accounts
    assert (decision.action, decision.at) == ("queue", MONDAY_OPEN)
    (planned,) = plan.legs
    assert (planned.action, plan.leg_state(planned), planned.first_send) == ("queue", "queued", False)
    assert planned.reason == "market closed (NSE is closed: weekend (Saturday)); queued until Mon 2026-11-30 09:15 IST"


def test_when_closed_reject_refuses_closed(config: Config, converter: Any) -> None:
    """when_closed = reject on the account: refused `closed`, journaled `failed`, the next open in the reason."""
    config = sessions_on(with_accounts(config, {"p": {"broker": "paper", "when_closed": "reject"}}))
    (planned,) = plan_of(config, converter, alert(stamped(SATURDAY_10)), SATURDAY_10).legs
    assert (planned.action, planned.refusal) == ("refuse", "closed")
    assert planned.reason.endswith("when_closed is reject: nothing was sent; next open Mon 2026-11-30 09:15 IST")


def test_amo_inside_the_window_sends_now_as_an_amo(config: Config, converter: Any) -> None:
    """when_closed = amo on a broker in amo_brokers, Wednesday 22:00 IST (inside the after-market window): `amo`
    with the configured amo_time, marked `sending` like any leg sent now; at 09:05 the next morning (16 minutes
    before the open is outside the window) the same alert waits in the queue for the open."""
    config = sessions_on(
        with_accounts(config, {"p": {"broker": "paper", "when_closed": "amo"}}), amo_brokers=("paper",), amo_time="OPEN"
    )
    evening = datetime(2026, 11, 25, 22, 0, tzinfo=EXCHANGE_TZ)
    plan = plan_of(config, converter, alert(stamped(evening)), evening)
    (decision,) = plan.accounts
    assert (decision.action, decision.amo_time) == ("amo", "OPEN")
    assert plan.first_sends() == {("p", 1)}
    morning = datetime(2026, 11, 26, 9, 5, tzinfo=EXCHANGE_TZ)
    (decision,) = plan_of(config, converter, alert(stamped(morning)), morning).accounts
    assert (decision.action, decision.at) == ("queue", datetime(2026, 11, 26, 9, 15, tzinfo=EXCHANGE_TZ))


def test_a_queued_leg_over_a_risk_limit_is_refused_now_not_at_the_open(config: Config, converter: Any) -> None:
    """Saturday, max_qty_per_order 5, a leg of 10: refused `risk` now (it could never pass at the open); a leg
    of 5 is queued."""
    config = sessions_on(config)
    checks = Checks(risk={"paper": RiskConfig(max_qty_per_order=5)})
    (over,) = plan_of(config, converter, alert(stamped(SATURDAY_10, quantity="10")), SATURDAY_10, checks=checks).legs
    assert (over.action, over.refusal) == ("refuse", "risk")
    assert over.reason == "leg 1: risk: quantity 10 is over max_qty_per_order 5; not queued, nothing will be sent"
    (within,) = plan_of(config, converter, alert(stamped(SATURDAY_10, quantity="5")), SATURDAY_10, checks=checks).legs
    assert within.action == "queue"


def test_a_queued_market_leg_is_checked_against_the_reference_price(config: Config, converter: Any) -> None:
    """The notional limit of a queued market leg uses the reference price the checks give (paper's prices)."""
    config = sessions_on(config)
    checks = Checks(
        risk={"paper": RiskConfig(max_notional_per_order=Decimal(1000))},
        reference_price=lambda _account, _leg: Decimal(250),
    )
    (planned,) = plan_of(config, converter, alert(stamped(SATURDAY_10, quantity="5")), SATURDAY_10, checks=checks).legs
    assert (planned.action, planned.refusal) == ("refuse", "risk")
    assert "notional 1250 (5 x 250) is over max_notional_per_order 1000" in planned.reason


def test_a_leg_outside_the_brokers_capabilities_is_refused_unsupported_and_not_marked(
    config: Config, converter: Any
) -> None:
    """A broker without LMT orders: the LMT leg is refused `unsupported` with the field named, is not marked
    `sending`, and the journal keeps it `pending` for the executor (which reports it failed, unsent)."""
    checks = Checks(capabilities={"paper": Capabilities(order_types=frozenset({OrderType.MARKET}))})
    raw = alert(leg(orderType="LMT", price="2500"))
    (planned,) = plan_of(config, converter, raw, WEDNESDAY_11, checks=checks, received=datetime.now(UTC)).legs
    assert (planned.action, planned.refusal, planned.first_send) == ("refuse", "unsupported", False)
    assert planned.reason == "not sent: orderType LMT is not supported by this broker (supported: MKT)"
    assert attrs.evolve(planned).client_order_id == f"{ALERT_ID}-1"


def test_no_mark_while_the_daily_count_is_unread_and_none_for_exits_or_cancels(config: Config, converter: Any) -> None:
    """`premark` False (the risk guard has not read today's count yet): nothing is marked with the alert. An
    EXIT_ALL leg (its order is known only after reading the position) and a cancel leg are never marked."""
    now = datetime.now(UTC)
    unread = plan_of(config, converter, alert(leg()), now, checks=Checks(premark=lambda _account: False))
    assert unread.first_sends() == frozenset()
    exit_all = plan_of(config, converter, alert(leg(manage_position="EXIT_ALL", quantity="0")), now)
    assert exit_all.first_sends() == frozenset()
    cancel = plan_of(config, converter, alert(leg(), alert_type="cancel_order"), now)
    (planned,) = cancel.legs
    assert (planned.action, planned.client_order_id, planned.quantity, planned.first_send) == ("now", None, None, False)
