"""Crash recovery as the server's start runs it, in this process: a journal left by a run that stopped mid-alert,
then a start of the real app, then what the broker received, what the journal and the order log say.

The `kill -9` tests (`test_crash_recovery.py`) leave these journals for real, at named and random points, but a
subprocess server runs code mutation testing cannot see; here the same situations are written through the
journal's and the order log's own interfaces (as the killed run wrote them) and the start happens in-process.
The scripted broker forgives nothing: a second placement of a client order id is a second order.
"""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from helpers import alert, leg, with_accounts
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tvbridge import recovery
from tvbridge.alerts.records import AlertEntry, LegEntry
from tvbridge.config import StrategyConfig
from tvbridge.journal import Journal, PlannedLeg
from tvbridge.keys import BROKERS, JOURNAL
from tvbridge.models import LegResult, LegStatus
from tvbridge.orderlog import OrderLog
from tvbridge.positions import KEY_SEPARATOR

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.config import Config


def client_order_id(alert_id: str, number: int) -> str:
    """The id the broker sees for a leg (`ALERTID-N`), the key a lookup after a restart finds the order by."""
    return f"{alert_id}-{number}"


def scripted(config: Config, *, max_age_s: float = 300.0) -> Config:
    config = with_accounts(config, {"sim": {"broker": "scripted"}})
    return attrs.evolve(config, alerts=attrs.evolve(config.alerts, max_age_s=max_age_s))


def broker_orders(config: Config) -> list[dict[str, Any]]:
    path = config.data_path("scripted-sim.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def order_log_rows(config: Config) -> list[dict[str, str]]:
    path = config.data_path(config.order_log.file)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def broker_has(config: Config, alert_id: str, number: int, order_id: str, symbol: str) -> None:
    """The broker received the leg before the crash (its own record of the order, which `lookup()` reads)."""
    path = config.data_path("scripted-sim.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"client_order_id": client_order_id(alert_id, number), "order_id": order_id, "symbol": symbol}
    with path.open("a") as f:
        f.write(json.dumps({**line, "side": "B", "quantity": 10}) + "\n")


async def crashed_run(
    config: Config,
    alert_id: str,
    raw: dict[str, Any],
    *,
    sending: tuple[int, ...] = (),
    settled: tuple[LegResult, ...] = (),
    offset: int | None = 0,
    planned: bool = True,
    strategy: str | None = None,
) -> None:
    """What a run killed mid-alert leaves in the journal: the alert accepted, its legs planned, some marked
    `sending`, some with their result."""
    journal = Journal(config.data_path(config.journal.path))
    await journal.open()
    numbers = range(1, len(raw["order_legs"]) + 1)
    cancel = raw["alertType"] == "cancel_order"  # a cancel places nothing under a client order id
    await journal.record_alert(
        alert_id=alert_id,
        alert_type=raw["alertType"],
        payload=raw,
        dedupe_key=None,
        source="127.0.0.1",
        legs=[
            PlannedLeg(account="sim", leg_number=n, client_order_id=None if cancel else client_order_id(alert_id, n))
            for n in numbers
        ]
        if planned
        else [],
        order_log_offset=offset,
        strategy=strategy,
    )
    for number in sending:
        await journal.mark_sending(alert_id, "sim", number, None)
    for done in settled:
        await journal.record_leg(alert_id, done)
    await journal.close()


def placed_result(alert_id: str, number: int, symbol: str, order_id: str) -> LegResult:
    return LegResult(
        leg_number=number,
        account="sim",
        broker="scripted",
        symbol=symbol,
        exchange="NSE",
        transaction="B",
        quantity="10",
        order_type="MKT",
        product_type="C",
        price="0",
        status=LegStatus.SUCCESS,
        message="filled",
        order_id=order_id,
        client_order_id=client_order_id(alert_id, number),
        order_state="filled",
    )


async def journal_of(client: Any, alert_id: str) -> dict[str, Any]:
    record = await client.app[JOURNAL].get_alert(alert_id)
    assert record is not None
    return dict(record)


async def test_a_leg_never_sent_is_sent_once_at_the_start(make_client: ClientFactory, config: Config) -> None:
    """Pending legs of a young alert are sent at the start with their client order ids, once each; the alert is
    finished (status, response, one order-log row per leg) and no longer unfinished."""
    config = scripted(config)
    await crashed_run(config, "A1", alert(leg(symbol="INFY"), leg(symbol="TCS", sort_order="2")))
    client = await make_client(config)
    received = broker_orders(config)
    assert [(o["symbol"], o["client_order_id"]) for o in received] == [("INFY", "A1-1"), ("TCS", "A1-2")]
    record = await journal_of(client, "A1")
    assert record["status"] == "success"
    assert [(leg["state"], leg["order_id"]) for leg in record["legs"]] == [("placed", "S00001"), ("placed", "S00002")]
    assert record["response"]["status"] == "success"
    assert [(row["alert_id"], row["leg_number"], row["status"]) for row in order_log_rows(config)] == [
        ("A1", "1", "success"),
        ("A1", "2", "success"),
    ]
    assert await client.app[JOURNAL].unfinished() == []


async def test_a_strategys_alert_is_recovered_under_its_strategy(make_client: ClientFactory, config: Config) -> None:
    """An unfinished alert of strategy alpha is run at the start under alpha, not under whatever runs then: its
    leg's result (journal and order log) names alpha, whose own positions and limits it counts in."""
    config = attrs.evolve(
        scripted(config), strategies={"alpha": StrategyConfig(secret="alpha-secret-0123456789abcdef")}
    )
    await crashed_run(config, "A1", alert(leg(symbol="INFY")), strategy="alpha")
    client = await make_client(config)
    assert [o["client_order_id"] for o in broker_orders(config)] == ["A1-1"]
    record = await journal_of(client, "A1")
    assert [(leg["state"], leg["result"]["strategy"]) for leg in record["legs"]] == [("placed", "alpha")]
    # the contract alpha's own position is summed by, journaled with the result (exchange, symbol, instrument,
    # expiry, strike, option type, product)
    assert record["legs"][0]["result"]["position_key"] == KEY_SEPARATOR.join(["NSE", "INFY", "EQ", "", "", "", "C"])
    assert [(row["alert_id"], row["strategy"]) for row in order_log_rows(config)] == [("A1", "alpha")]


async def test_a_leg_the_broker_has_is_found_not_sent_again(make_client: ClientFactory, config: Config) -> None:
    """A leg marked `sending` whose order reached the broker: looked up by its client order id and recorded
    with the broker's order id; the broker still has one order for it. The leg after it is sent."""
    config = scripted(config)
    await crashed_run(config, "A2", alert(leg(symbol="INFY"), leg(symbol="TCS", sort_order="2")), sending=(1,))
    broker_has(config, "A2", 1, "PRE01", "INFY")
    client = await make_client(config)
    assert [o["client_order_id"] for o in broker_orders(config)] == ["A2-1", "A2-2"]
    record = await journal_of(client, "A2")
    assert [(leg["state"], leg["order_id"]) for leg in record["legs"]] == [("placed", "PRE01"), ("placed", "S00002")]
    assert record["status"] == "success"


async def test_settled_legs_are_kept_as_they_were(make_client: ClientFactory, config: Config) -> None:
    """A leg whose result was journaled before the crash is neither looked up nor sent: its result stays."""
    config = scripted(config)
    done = placed_result("A3", 1, "INFY", "OLD01")
    await crashed_run(config, "A3", alert(leg(symbol="INFY"), leg(symbol="TCS", sort_order="2")), settled=(done,))
    client = await make_client(config)
    assert [o["client_order_id"] for o in broker_orders(config)] == ["A3-2"]
    record = await journal_of(client, "A3")
    assert [(leg["state"], leg["order_id"]) for leg in record["legs"]] == [("placed", "OLD01"), ("placed", "S00001")]
    assert record["legs"][0]["result"]["message"] == "filled"


async def test_an_unreadable_stored_result_is_asked_of_the_broker(make_client: ClientFactory, config: Config) -> None:
    """A stored result another version wrote (a status this one does not know) is not trusted: the broker is
    asked, and what it has is recorded; nothing is placed twice."""
    config = scripted(config)
    odd = attrs.evolve(placed_result("A4", 1, "INFY", "OLD01"), status=LegStatus.SUCCESS)
    await crashed_run(config, "A4", alert(leg(symbol="INFY")), settled=(odd,))
    journal = Journal(config.data_path(config.journal.path))
    await journal.open()
    await journal.write(
        lambda conn: conn.execute(
            "UPDATE legs SET result = json_set(result, '$.status', 'done-by-v0') WHERE alert_id = 'A4'"
        )
    )
    await journal.close()
    broker_has(config, "A4", 1, "PRE04", "INFY")
    with capture_logs() as logs:
        client = await make_client(config)
    unreadable = [(e["log_level"], e["leg"], e["account"]) for e in logs if e["event"] == "recovery.result_unreadable"]
    assert unreadable == [("warning", 1, "sim")]
    assert [o["client_order_id"] for o in broker_orders(config)] == ["A4-1"]
    record = await journal_of(client, "A4")
    assert [(leg["state"], leg["order_id"]) for leg in record["legs"]] == [("placed", "PRE04")]


async def test_an_alert_older_than_max_age_is_not_sent(make_client: ClientFactory, config: Config) -> None:
    """Past `alerts.max_age_s`, what the broker lacks is marked expired, with the age in the message; nothing is
    sent. The age counts from the oldest `meta.timenow` when it is older than the journaled arrival."""
    config = scripted(config, max_age_s=600)
    old = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stale_meta = {"interval": "1D", "time": old, "timenow": old}
    fresh = leg(symbol="TCS", sort_order="2")
    await crashed_run(config, "A5", alert(leg(symbol="INFY", meta=stale_meta), fresh), sending=(1,))
    with capture_logs(processors=[merge_contextvars]) as logs:  # the alert id is bound around each alert
        client = await make_client(config)
    [line] = [e for e in logs if e["event"] == "recovery.alert"]
    assert isinstance(line["age_s"], float)  # the age, to a tenth of a second
    assert 3600 <= line["age_s"] < 3900
    expired = [e for e in logs if e["event"] == "recovery.leg_expired"]
    assert [(e["leg"], e["client_order_id"], e["max_age_s"]) for e in expired] == [(1, "A5-1", 600), (2, "A5-2", 600)]
    assert (line["log_level"], line["alert_id"], line["may_send"], line["already_in_order_log"]) == (
        "warning",
        "A5",
        False,
        None,
    )
    assert line["open_legs"] == ["sim#1:sending", "sim#2:pending"]
    assert broker_orders(config) == []
    record = await journal_of(client, "A5")
    assert [leg["state"] for leg in record["legs"]] == ["expired", "expired"]
    message = record["legs"][0]["message"]
    assert message.startswith("expired: not sent after a restart; the alert is 36")
    assert message.endswith("s old and alerts.max_age_s is 600 s; the broker has no order A5-1")
    assert [(row["status"], row["client_order_id"]) for row in order_log_rows(config)] == [
        ("expired", "A5-1"),
        ("expired", "A5-2"),
    ]


async def test_a_leg_of_an_alert_too_old_to_send_is_still_looked_up_and_found(
    make_client: ClientFactory, config: Config
) -> None:
    """Past `alerts.max_age_s`, a leg marked `sending` whose order reached the broker before the crash is
    looked up first and recorded as placed, with the broker's order id (an open position the trader must see),
    never as "expired: not sent ... the broker has no order"; only the leg never sent expires. Nothing is sent."""
    config = scripted(config, max_age_s=600)
    old = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stale_meta = {"interval": "1D", "time": old, "timenow": old}
    raw = alert(leg(symbol="INFY", meta=stale_meta), leg(symbol="TCS", sort_order="2"))
    await crashed_run(config, "A7", raw, sending=(1,))
    broker_has(config, "A7", 1, "PRE07", "INFY")
    client = await make_client(config)
    assert [o["client_order_id"] for o in broker_orders(config)] == ["A7-1"]  # the one placed before the crash
    record = await journal_of(client, "A7")
    assert [(leg["state"], leg["order_id"]) for leg in record["legs"]] == [("placed", "PRE07"), ("expired", None)]
    assert [(row["status"], row["order_id"]) for row in order_log_rows(config)] == [
        ("success", "PRE07"),
        ("expired", ""),
    ]


async def test_an_expired_cancel_leg_names_no_order_and_cancels_nothing(
    make_client: ClientFactory, config: Config
) -> None:
    """A `cancel_order` alert past `max_age_s` at the start: expired, nothing asked of the broker; its message and
    its `recovery.leg_expired` line give the age and the limit, and no client order id (a cancel has none)."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "cancel_answer": "cancel"}})
    config = attrs.evolve(config, alerts=attrs.evolve(config.alerts, max_age_s=600))
    old = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stale = {"symbol": "INFY", "meta": {"interval": "1D", "time": old, "timenow": old}}
    await crashed_run(config, "A9", alert(stale, alert_type="cancel_order"), sending=(1,))
    with capture_logs(processors=[merge_contextvars]) as logs:
        client = await make_client(config)
    assert client.app[BROKERS]["sim"].cancel_requests == []  # type: ignore[attr-defined]
    [line] = [e for e in logs if e["event"] == "recovery.leg_expired"]
    assert (line["log_level"], line["alert_id"], line["leg"], line["account"]) == ("warning", "A9", 1, "sim")
    assert (line["client_order_id"], line["max_age_s"]) == (None, 600)
    assert isinstance(line["age_s"], float)  # to a tenth of a second, not rounded to whole seconds
    assert 3600 <= line["age_s"] < 3900
    assert line["age_s"] == round(line["age_s"], 1)
    record = await journal_of(client, "A9")
    [journaled] = record["legs"]
    assert (journaled["state"], journaled["client_order_id"]) == ("expired", None)
    message = journaled["message"]
    assert re.fullmatch(
        r"expired: not sent after a restart; the alert is 3[6-8]\d\d s old and alerts.max_age_s is 600 s", message
    )
    [row] = order_log_rows(config)
    assert (row["status"], row["order_type"], row["message"]) == ("expired", "CANCEL", message)


async def test_a_young_alert_within_max_age_is_sent(make_client: ClientFactory, config: Config) -> None:
    """The same alert a minute old, with `max_age_s` an hour: still sent (the age limit is not the arrival)."""
    config = scripted(config, max_age_s=3600)
    minute = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await crashed_run(
        config, "A6", alert(leg(symbol="INFY", meta={"interval": "1D", "time": minute, "timenow": minute}))
    )
    client = await make_client(config)
    assert [o["client_order_id"] for o in broker_orders(config)] == ["A6-1"]
    record = await journal_of(client, "A6")
    assert [leg["state"] for leg in record["legs"]] == ["placed"]


async def test_an_alert_exactly_max_age_old_at_the_start_is_still_sent(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The age limit holds its bound as the arrival's does (`alerts.plan.staleness` refuses an age above
    `alerts.max_age_s`, not one equal to it): an alert whose `meta.timenow` is exactly `max_age_s` old when
    recovery runs is sent, not expired. Recovery reads the wall clock itself (`datetime.now`), so the test stops
    that clock at the instant the age equals the limit."""
    config = scripted(config, max_age_s=600)
    timenow = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    stamp = timenow.strftime("%Y-%m-%dT%H:%M:%SZ")
    await crashed_run(config, "A7", alert(leg(symbol="INFY", meta={"interval": "1D", "time": stamp, "timenow": stamp})))
    at_the_limit = timenow + timedelta(seconds=600)

    class StoppedClock:
        """recovery's `datetime`: `now()` at the limit, everything else as it is."""

        fromisoformat = datetime.fromisoformat

        @staticmethod
        def now(tz: object = None) -> datetime:
            assert tz is UTC
            return at_the_limit

    monkeypatch.setattr(recovery, "datetime", StoppedClock)
    with capture_logs() as logs:
        client = await make_client(config)
    [line] = [e for e in logs if e["event"] == "recovery.alert"]
    assert (line["age_s"], line["may_send"]) == (600.0, True)
    assert [o["client_order_id"] for o in broker_orders(config)] == ["A7-1"]
    record = await journal_of(client, "A7")
    assert [leg["state"] for leg in record["legs"]] == ["placed"]


async def test_rows_the_crashed_run_logged_are_not_logged_again(make_client: ClientFactory, config: Config) -> None:
    """The killed run wrote leg 1's order-log row (after the offset journaled with the alert) and died before its
    final journal commit: after the start every leg has exactly one row."""
    config = scripted(config)
    order_log = OrderLog(config.data_path(config.order_log.file))
    await order_log.open()
    await order_log.append([placed_result("OTHER", 1, "SBIN", "X1")], alert_id="OTHER", alert_type="single_order")
    offset = order_log.size()
    await order_log.append([placed_result("A7", 1, "INFY", "PRE07")], alert_id="A7", alert_type="multi_leg_order")
    await order_log.close()
    raw = alert(leg(symbol="INFY"), leg(symbol="TCS", sort_order="2"))
    await crashed_run(config, "A7", raw, sending=(1,), offset=offset)
    broker_has(config, "A7", 1, "PRE07", "INFY")
    with capture_logs() as logs:
        client = await make_client(config)
    [line] = [e for e in logs if e["event"] == "recovery.alert"]
    assert (line["may_send"], line["already_in_order_log"], line["open_legs"]) == (
        True,
        ["sim#1"],
        ["sim#1:sending", "sim#2:pending"],
    )
    rows = [(row["alert_id"], row["leg_number"]) for row in order_log_rows(config)]
    assert rows == [("OTHER", "1"), ("A7", "1"), ("A7", "2")]
    assert [o["client_order_id"] for o in broker_orders(config)] == ["A7-1", "A7-2"]
    record = await journal_of(client, "A7")
    assert record["status"] == "success"


async def test_alerts_are_recovered_oldest_first(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config)
    await crashed_run(config, "B1", alert(leg(symbol="INFY")))
    await crashed_run(config, "B2", alert(leg(symbol="TCS")))
    with capture_logs() as logs:
        await make_client(config)
    assert [o["client_order_id"] for o in broker_orders(config)] == ["B1-1", "B2-1"]
    counted = [(e["event"], e["alerts"]) for e in logs if e["event"] in {"recovery.started", "recovery.done"}]
    assert counted == [("recovery.started", 2), ("recovery.done", 2)]


async def test_nothing_to_recover_logs_nothing(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config)
    with capture_logs() as logs:
        await make_client(config)
    assert [e for e in logs if str(e["event"]).startswith("recovery.")] == []
    assert broker_orders(config) == []


async def test_an_alert_journaled_without_its_legs_goes_to_the_routed_accounts(
    make_client: ClientFactory, config: Config
) -> None:
    """An alert accepted but killed before its legs were planned is sent to the accounts the config routes to."""
    config = scripted(config)
    await crashed_run(config, "C1", alert(leg(symbol="INFY")), planned=False)
    client = await make_client(config)
    assert [o["client_order_id"] for o in broker_orders(config)] == ["C1-1"]
    record = await journal_of(client, "C1")
    assert [(leg["account"], leg["state"]) for leg in record["legs"]] == [("sim", "placed")]


async def test_an_alert_that_no_longer_parses_fails_without_sending(make_client: ClientFactory, config: Config) -> None:
    """An alert this version cannot read (journaled by another) is finished as failed, with why; not sent."""
    config = scripted(config)
    await crashed_run(config, "A8", alert(leg(symbol="INFY", quantity="ten")))
    with capture_logs() as logs:
        client = await make_client(config)
    [error] = [e for e in logs if e["event"] == "recovery.unreadable"]
    assert (error["log_level"], error["errors"]) == (
        "error",
        ["order_legs[0].quantity: must be a whole number, got 'ten'"],
    )
    assert broker_orders(config) == []
    record = await journal_of(client, "A8")
    assert (record["status"], record["response"]) == (
        "failed",
        {"status": "failed", "message": "unreadable after restart"},
    )


async def test_an_unknown_leg_is_looked_up_again(make_client: ClientFactory, config: Config) -> None:
    """A leg journaled `unknown` (the answer was lost) has a result, but not a settled one: at the start the
    broker is asked again, and the order it has is recorded; nothing is placed."""
    config = scripted(config)
    lost = attrs.evolve(placed_result("A9", 1, "INFY", "PRE09"), status=LegStatus.UNKNOWN, order_id=None)
    await crashed_run(config, "A9", alert(leg(symbol="INFY")), settled=(lost,))
    broker_has(config, "A9", 1, "PRE09", "INFY")
    client = await make_client(config)
    assert [o["client_order_id"] for o in broker_orders(config)] == ["A9-1"]
    record = await journal_of(client, "A9")
    assert [(leg["state"], leg["order_id"]) for leg in record["legs"]] == [("placed", "PRE09")]


async def test_a_leg_found_at_the_start_is_logged_and_recorded_under_its_client_order_id(
    make_client: ClientFactory, config: Config
) -> None:
    """The order found by lookup is the leg's result under the leg's own client order id (the answer, the journal
    and the order log), with one `recovery.leg_found` line naming the alert, leg, account and the broker's id."""
    config = scripted(config)
    await crashed_run(config, "A10", alert(leg(symbol="INFY")), sending=(1,))
    broker_has(config, "A10", 1, "PRE10", "INFY")
    with capture_logs(processors=[merge_contextvars]) as logs:
        client = await make_client(config)
    found = [
        (e["log_level"], e["alert_id"], e["leg"], e["account"], e["order_id"])
        for e in logs
        if e["event"] == "recovery.leg_found"
    ]
    assert found == [("info", "A10", 1, "sim", "PRE10")]
    record = await journal_of(client, "A10")
    [result] = record["response"]["results"]
    assert (result["account"], result["leg_number"], result["client_order_id"], result["order_id"]) == (
        "sim",
        1,
        "A10-1",
        "PRE10",
    )
    assert [(row["client_order_id"], row["order_id"]) for row in order_log_rows(config)] == [("A10-1", "PRE10")]
    assert [o["client_order_id"] for o in broker_orders(config)] == ["A10-1"]


async def test_a_lookup_that_fails_at_the_start_leaves_the_leg_unknown_and_sends_nothing(
    make_client: ClientFactory, config: Config
) -> None:
    """The broker cannot say whether it has a leg marked `sending`: never resent blind. The leg is `unknown` with
    the reason, under its account, number and client order id; the leg after it is skipped, nothing is sent."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "lookup_error": "lookup API down"}})
    await crashed_run(config, "A11", alert(leg(symbol="INFY"), leg(symbol="TCS", sort_order="2")), sending=(1,))
    client = await make_client(config)
    record = await journal_of(client, "A11")
    assert record["status"] == "failed"  # no leg went through
    first, second = record["response"]["results"]
    assert (first["status"], first["message"]) == (
        "unknown",
        "recovery: lookup of A11-1 failed (lookup API down): check the broker before resending",
    )
    assert (first["account"], first["leg_number"], first["client_order_id"], first["symbol"]) == (
        "sim",
        1,
        "A11-1",
        "INFY",
    )
    assert (second["status"], second["message"]) == ("skipped", "skipped: leg 1 has an unknown outcome")
    assert [leg["state"] for leg in record["legs"]] == ["unknown", "skipped"]
    assert broker_orders(config) == []


async def test_an_alert_of_an_account_no_longer_configured_is_recorded_unknown_under_it(
    make_client: ClientFactory, config: Config
) -> None:
    """The operator renamed the account between the crash and the start: the journal's legs name `sim`, the config
    routes to `other`. Nothing is sent anywhere; each leg is `unknown` under `sim`, saying the account is gone (not
    "internal error": the trader must know what to check), its broker
    named by the account (no broker table is left to name it), in the answer, the journal and one order log row
    each: the rows are what a trader reconciles against the broker, so none may be lost."""
    await crashed_run(scripted(config), "A12", alert(leg(symbol="INFY"), leg(symbol="TCS", sort_order="2")))
    config = with_accounts(scripted(config), {"other": {"broker": "scripted"}})
    with capture_logs(processors=[merge_contextvars]) as logs:
        client = await make_client(config)
    record = await journal_of(client, "A12")
    assert record["status"] == "failed"
    expected = [("sim", "sim", n, f"A12-{n}", "unknown") for n in (1, 2)]
    got = [
        (r["account"], r["broker"], r["leg_number"], r["client_order_id"], r["status"])
        for r in record["response"]["results"]
    ]
    assert got == expected
    gone = "outcome unknown: account sim is not configured any more, so nothing was looked up or sent: check its"
    assert [r["message"] for r in record["response"]["results"]] == [f"{gone} broker before resending"] * 2
    assert [(leg["account"], leg["state"], leg["result"]["broker"]) for leg in record["legs"]] == [
        ("sim", "unknown", "sim"),
        ("sim", "unknown", "sim"),
    ]
    rows = [
        (row["account"], row["broker"], int(row["leg_number"]), row["client_order_id"], row["status"])
        for row in order_log_rows(config)
    ]
    assert rows == expected
    assert {row["message"] for row in order_log_rows(config)} == {f"{gone} broker before resending"}
    assert [(e["log_level"], e["alert_id"], e["account"]) for e in logs if e["event"] == "account.failed"] == [
        ("error", "A12", "sim")
    ]
    assert not [e for e in logs if e["event"] == "order_log.write_failed"]
    assert not config.data_path("scripted-other.jsonl").exists()  # nothing sent to the configured account


async def test_an_alert_of_a_strategy_journaled_without_its_legs_goes_to_the_strategys_accounts(
    make_client: ClientFactory, config: Config
) -> None:
    """Killed before its legs were planned, an alert of strategy alpha (own accounts: `own`) is sent at the start
    to alpha's account, not to `routing.accounts`."""
    config = with_accounts(scripted(config), {"sim": {"broker": "scripted"}, "own": {"broker": "scripted"}}, ["sim"])
    alpha = StrategyConfig(secret="alpha-secret-0123456789abcdef", accounts=("own",))
    config = attrs.evolve(config, strategies={"alpha": alpha})
    await crashed_run(config, "C2", alert(leg(symbol="INFY")), planned=False, strategy="alpha")
    client = await make_client(config)
    assert broker_orders(config) == []  # the routed account `sim` got nothing
    own = [json.loads(line) for line in config.data_path("scripted-own.jsonl").read_text().splitlines()]
    assert [o["client_order_id"] for o in own] == ["C2-1"]
    record = await journal_of(client, "C2")
    assert [(leg["account"], leg["state"]) for leg in record["legs"]] == [("own", "placed")]


async def planned_then_crashed(config: Config, alert_id: str, raw: dict[str, Any], states: list[LegEntry]) -> None:
    """What a run killed after its plan's commit and before the alert's final write leaves: legs the plan queued
    (a closed market) or refused (a risk check) with their state and reason, but no result yet."""
    journal = Journal(config.data_path(config.journal.path))
    await journal.open()
    await journal.record_plan(
        AlertEntry(
            alert_id=alert_id,
            alert_type=raw["alertType"],
            payload=raw,
            dedupe_key=None,
            source="127.0.0.1",
            order_log_offset=0,
            legs=tuple(states),
            strategy="alpha",
        )
    )
    await journal.close()


async def test_legs_the_plan_queued_or_refused_are_settled_as_planned_and_never_sent(
    make_client: ClientFactory, config: Config
) -> None:
    """Alpha's alert of three legs, killed after its plan: leg 1 queued for the open (no reason journaled), leg 2
    pending, leg 3 refused by a risk check. At the start only leg 2 is sent; legs 1 and 3 are settled as the plan
    left them, each under its own contract, account, strategy and reason, in the journal and the order log (the
    closed-market queue sends a queued leg at the open: sending it now too would place it twice)."""
    config = attrs.evolve(
        scripted(config), strategies={"alpha": StrategyConfig(secret="alpha-secret-0123456789abcdef")}
    )
    raw = alert(leg(symbol="INFY"), leg(symbol="TCS", sort_order="2"), leg(symbol="WIPRO", sort_order="3"))
    refused = "risk: 2 order(s) already sent today by strategy alpha; max_orders_per_day is 2"
    await planned_then_crashed(
        config,
        "Q1",
        raw,
        [
            LegEntry(account="sim", leg_number=1, client_order_id="Q1-1", state="queued"),
            LegEntry(account="sim", leg_number=2, client_order_id="Q1-2"),
            LegEntry(account="sim", leg_number=3, client_order_id="Q1-3", state="failed", message=refused),
        ],
    )
    client = await make_client(config)
    assert [(o["symbol"], o["client_order_id"]) for o in broker_orders(config)] == [("TCS", "Q1-2")]
    record = await journal_of(client, "Q1")
    legs = [
        (leg["leg_number"], leg["state"], leg["result"]["status"], leg["result"]["symbol"], leg["result"]["message"])
        for leg in record["legs"]
    ]
    assert legs == [
        (1, "queued", "queued", "INFY", ""),
        (2, "placed", "success", "TCS", "filled"),
        (3, "failed", "failed", "WIPRO", refused),
    ]
    assert {
        (leg["result"]["account"], leg["result"]["broker"], leg["result"]["strategy"]) for leg in record["legs"]
    } == {("sim", "scripted", "alpha")}
    assert record["legs"][2]["result"]["position_key"] == KEY_SEPARATOR.join(["NSE", "WIPRO", "EQ", "", "", "", "C"])
    rows = [(r["leg_number"], r["symbol"], r["status"], r["message"], r["account"]) for r in order_log_rows(config)]
    assert rows == [
        ("1", "INFY", "queued", "", "sim"),
        ("2", "TCS", "success", "filled", "sim"),
        ("3", "WIPRO", "failed", refused, "sim"),
    ]


@pytest.mark.parametrize("state", ["sending", "unknown"])
async def test_a_leg_journaled_sending_is_resent_within_the_daily_limit_it_already_counts_in(
    make_client: ClientFactory, config: Config, state: str
) -> None:
    """max_orders_per_day = 1 and one leg journaled `sending` (its checks passed, it counts in today's orders; the
    run was killed before the broker call) or `unknown` (its answer was lost): at the start the broker has no
    order for it, so it is sent, once, and not refused for the order it already counts as."""
    config = scripted(config)
    config = attrs.evolve(config, risk=attrs.evolve(config.risk, max_orders_per_day=1))
    if state == "sending":
        await crashed_run(config, "D1", alert(leg(symbol="INFY")), sending=(1,))
    else:
        lost = attrs.evolve(placed_result("D1", 1, "INFY", "X"), status=LegStatus.UNKNOWN, order_id=None)
        await crashed_run(config, "D1", alert(leg(symbol="INFY")), settled=(lost,))
    client = await make_client(config)
    assert [o["client_order_id"] for o in broker_orders(config)] == ["D1-1"]
    record = await journal_of(client, "D1")
    assert (record["status"], [leg["state"] for leg in record["legs"]]) == ("success", ["placed"])
