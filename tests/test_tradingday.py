"""Trading days through the real server with a pinned clock: the kill switch, GET /market, and what happens to an
alert when its exchange is closed (queued and sent at the open, placed as AMO, or rejected)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from durability_server import KillableServer, journal_rows, scripted_orders
from helpers import STORES, alert, leg, on_store, with_accounts

from tvbridge.alertqueue import list_entries
from tvbridge.app import create_app
from tvbridge.config import Config, ExtraSession, RiskConfig, SessionsConfig
from tvbridge.keys import BROKERS, CREDENTIALS, JOURNAL, SCHEDULER
from tvbridge.secretstore import resolve_credentials
from tvbridge.sessions import EXCHANGE_TZ

Client = TestClient[web.Request, web.Application]


@pytest.fixture(params=STORES)
def config(config: Config, request: pytest.FixtureRequest) -> Config:
    """Every test here that uses the default config runs on the SQLite journal and on PostgreSQL."""
    return on_store(config, request)


def ist(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=EXCHANGE_TZ)


WEDNESDAY_11 = ist("2026-11-25T11:00")
WEDNESDAY_16 = ist("2026-11-25T16:00")
WEDNESDAY_22 = ist("2026-11-25T22:00")
SUNDAY = ist("2026-11-29T10:00")
HOLIDAY = ist("2026-11-24T11:00")  # Guru Nanak Jayanti, an NSE holiday


class Clock:
    """The injected clock: tests move it; nothing in tvbridge reads the machine's time for sessions."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock() -> Clock:
    return Clock(WEDNESDAY_11)


@pytest.fixture
def start(aiohttp_client: Any, converter: Any, clock: Clock) -> Any:
    async def make(config: Config) -> Client:
        app = create_app(config, converter, resolve_credentials(config), clock=clock)
        client: Client = await aiohttp_client(app)
        return client

    return make


def sessions_on(config: Config, **settings: Any) -> Config:
    return attrs.evolve(config, sessions=SessionsConfig(**settings))


def scripted(config: Config, **extra: Any) -> Config:
    return with_accounts(config, {"s": {"broker": "scripted", **extra}})


def received(config: Config, account: str = "s") -> list[dict[str, Any]]:
    path = config.data_path(f"scripted-{account}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def admin(client: Client) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}


# the kill switch


async def test_halt_refuses_alerts_and_survives_a_restart(start: Any, config: Config) -> None:
    """POST /admin/halt: /webhook answers 503 "trading halted" and records nothing, /health is 503, and after a
    restart it is still halted; POST /admin/resume places again."""
    config = scripted(config)
    client = await start(config)
    assert (await client.post("/admin/halt", json={"reason": "fat finger"})).status == 401
    response = await client.post("/admin/halt", json={"reason": "fat finger"}, headers=admin(client))
    assert (await response.json())["halted"] is True
    response = await client.post("/webhook", json=alert())
    body = await response.json()
    assert (response.status, body["message"]) == (503, "trading halted: fat finger")
    assert await client.app[JOURNAL].get_alert(body["alert_id"]) is None
    health = await client.get("/health")
    assert health.status == 503
    assert (await health.json())["checks"]["trading"]["ok"] is False
    await client.close()

    client = await start(config)
    assert (await client.post("/webhook", json=alert())).status == 503
    assert received(config) == []
    response = await client.post("/admin/resume", headers=admin(client))
    assert (await response.json()) == {"halted": False, "was_halted": True}
    assert (await client.post("/webhook", json=alert())).status == 200
    assert len(received(config)) == 1
    assert (await client.get("/health")).status == 200


async def test_cli_halt_is_seen_by_a_running_server(start: Any, config: Config, tmp_path: Path) -> None:
    """`tvbridge halt` writes the same file the server reads on every alert: no restart, no signal needed."""
    from tvbridge.commands.trading import main as trading_main  # noqa: PLC0415 - the CLI entry under test

    config = scripted(config)
    client = await start(config)
    assert trading_main(config, ["halt", "--reason", "broker outage"]) == 0
    response = await client.post("/webhook", json=alert())
    assert response.status == 503
    assert (await response.json())["message"] == "trading halted: broker outage"
    assert trading_main(config, ["resume"]) == 0
    assert (await client.post("/webhook", json=alert())).status == 200


# GET /market


async def test_market_tells_open_closed_why_and_next_open(start: Any, config: Config, clock: Clock) -> None:
    """At 16:00 on a Wednesday NSE is closed after the close and opens Thursday 09:15; MCX is open till 23:30."""
    clock.at = WEDNESDAY_16
    client = await start(config)
    body = await (await client.get("/market")).json()
    assert body["timestamp"] == "2026-11-25T16:00:00+05:30"
    assert body["exchanges"]["NSE"] == {
        "open": False,
        "phase": "closed",
        "reason": "after the close",
        "next_open": "2026-11-26T09:15:00+05:30",
        "closes_at": None,
    }
    assert body["exchanges"]["MCX"]["open"] is True
    assert body["exchanges"]["MCX"]["closes_at"] == "2026-11-25T23:30:00+05:30"


@pytest.mark.parametrize(
    ("at", "reason", "next_open"),
    [
        (SUNDAY, "weekend (Sunday)", "2026-11-30T09:15:00+05:30"),
        (HOLIDAY, "holiday (Guru Nanak Jayanti)", "2026-11-25T09:15:00+05:30"),
        (
            ist("2026-11-25T09:03"),
            "pre-open call auction 09:00-09:08; orders are sent from 09:15",
            "2026-11-25T09:15:00+05:30",
        ),
    ],
)
async def test_market_on_weekend_holiday_and_pre_open(  # noqa: PLR0917 - pytest passes parameters positionally
    start: Any, config: Config, clock: Clock, at: datetime, reason: str, next_open: str
) -> None:
    """Weekends and the holidays package's NSE calendar close the market; pre-open is shown but is not open."""
    clock.at = at
    client = await start(config)
    nse = (await (await client.get("/market")).json())["exchanges"]["NSE"]
    assert (nse["open"], nse["reason"], nse["next_open"]) == (False, reason, next_open)


async def test_mcx_closes_later_while_the_us_is_on_daylight_time(start: Any, config: Config, clock: Clock) -> None:
    """MCX: 23:55 in July (US daylight time), 23:30 in December."""
    client = await start(config)
    for at, closes in (
        ("2026-07-01T23:40", "2026-07-01T23:55:00+05:30"),
        ("2026-12-02T23:20", "2026-12-02T23:30:00+05:30"),
    ):
        clock.at = ist(at)
        mcx = (await (await client.get("/market")).json())["exchanges"]["MCX"]
        assert (mcx["open"], mcx["closes_at"]) == (True, closes)


async def test_extra_holiday_and_muhurat_session(start: Any, config: Config, clock: Clock) -> None:
    """extra_holidays closes a normal Wednesday; extra_sessions opens a Sunday evening (Muhurat trading)."""
    config = sessions_on(
        config,
        extra_holidays=(date(2026, 11, 25),),
        extra_sessions=(ExtraSession(date=date(2026, 11, 29), open="18:00", close="19:00", name="Muhurat trading"),),
    )
    client = await start(config)
    nse = (await (await client.get("/market")).json())["exchanges"]["NSE"]
    assert (nse["open"], nse["reason"]) == (False, "holiday (extra_holidays in config)")
    clock.at = ist("2026-11-29T18:30")
    nse = (await (await client.get("/market")).json())["exchanges"]["NSE"]
    assert (nse["open"], nse["reason"]) == (True, "Muhurat trading until 19:00")


# closed markets


async def test_in_session_alert_is_placed_at_once(start: Any, config: Config) -> None:
    """Wednesday 11:00 with sessions on: placed now, as before."""
    config = sessions_on(scripted(config))
    client = await start(config)
    response = await client.post("/webhook", json=alert())
    assert response.status == 200
    assert (await response.json())["status"] == "success"
    assert len(received(config)) == 1


@pytest.mark.parametrize(
    ("at", "scheduled"),
    [
        (WEDNESDAY_16, "2026-11-26T09:15:00+05:30"),
        (WEDNESDAY_22, "2026-11-26T09:15:00+05:30"),
        (SUNDAY, "2026-11-30T09:15:00+05:30"),
        (HOLIDAY, "2026-11-25T09:15:00+05:30"),
    ],
)
async def test_closed_market_alert_is_queued_and_sent_at_the_open(
    start: Any, config: Config, clock: Clock, at: datetime, scheduled: str
) -> None:
    """when_closed = queue: 202 `queued` with the scheduled time, nothing sent; at the open the scheduler sends it
    (once, however often it runs)."""
    config = sessions_on(scripted(config))
    clock.at = at
    client = await start(config)
    response = await client.post("/webhook", json=alert())
    body = await response.json()
    assert response.status == 202
    assert (body["status"], body["scheduled_at"]) == ("queued", scheduled)
    assert body["results"][0]["status"] == "queued"
    assert received(config) == []
    scheduler = client.app[SCHEDULER]

    clock.at = datetime.fromisoformat(scheduled) - timedelta(minutes=1)
    assert await scheduler.run_due() == 0
    assert received(config) == []
    clock.at = datetime.fromisoformat(scheduled)
    assert await scheduler.run_due() == 1
    assert await scheduler.run_due() == 0
    assert [o["client_order_id"] for o in received(config)] == [f"{body['alert_id']}-1"]
    record = await client.app[JOURNAL].get_alert(body["alert_id"])
    assert record is not None
    assert record["status"] == "success"


async def test_queue_survives_a_restart(start: Any, config: Config, clock: Clock) -> None:
    """A queued alert is in the journal: after a restart it is still listed and is sent at the open."""
    config = sessions_on(scripted(config))
    clock.at = SUNDAY
    client = await start(config)
    body = await (await client.post("/webhook", json=alert())).json()
    await client.close()

    client = await start(config)
    entries = await list_entries(client.app[JOURNAL])
    assert [(e.alert_id, e.account, e.state) for e in entries] == [(body["alert_id"], "s", "queued")]
    clock.at = ist("2026-11-30T09:15")
    # Either this call or the scheduler's own loop (its first round can still be asking for leadership on a
    # shared store when the clock moves) sends it; both hold the scheduler's lock, so once this returns it is sent.
    await client.app[SCHEDULER].run_due()
    assert len(received(config)) == 1
    assert [e.state for e in await list_entries(client.app[JOURNAL], include_done=True)] == ["sent"]


async def test_halt_holds_the_queue(start: Any, config: Config, clock: Clock) -> None:
    """While halted, due queued alerts are not sent; after resume they are."""
    config = sessions_on(scripted(config))
    clock.at = SUNDAY
    client = await start(config)
    await client.post("/webhook", json=alert())
    await client.post("/admin/halt", headers=admin(client))
    clock.at = ist("2026-11-30T09:20")
    assert await client.app[SCHEDULER].run_due() == 0
    assert received(config) == []
    await client.post("/admin/resume", headers=admin(client))  # also wakes the scheduler's own loop
    await client.app[SCHEDULER].run_due()
    assert len(received(config)) == 1


async def test_extra_holiday_queues_today(start: Any, config: Config, clock: Clock) -> None:
    """Today marked in extra_holidays: an alert in normal hours is queued to the next trading day, not placed."""
    config = sessions_on(scripted(config), extra_holidays=(date(2026, 11, 25),))
    client = await start(config)
    response = await client.post("/webhook", json=alert())
    body = await response.json()
    assert (response.status, body["status"], body["scheduled_at"]) == (202, "queued", "2026-11-26T09:15:00+05:30")
    assert received(config) == []


async def test_reject_mode_sends_nothing(start: Any, config: Config, clock: Clock) -> None:
    """when_closed = reject (per account): the leg fails with the reason and the next open; nothing is queued."""
    config = sessions_on(scripted(config, when_closed="reject"))
    clock.at = SUNDAY
    client = await start(config)
    response = await client.post("/webhook", json=alert())
    body = await response.json()
    assert (response.status, body["status"]) == (200, "failed")
    assert body["results"][0]["message"] == (
        "market closed (NSE is closed: weekend (Sunday)); when_closed is reject: nothing was sent;"
        " next open Mon 2026-11-30 09:15 IST"
    )
    assert await list_entries(client.app[JOURNAL]) == []
    assert received(config) == []


async def test_amo_on_an_amo_broker_is_sent_now_with_amo_time(start: Any, config: Config, clock: Clock) -> None:
    """when_closed = amo on a broker listed in amo_brokers, at 22:00: sent at once with amoTime (the leg's own
    when given, else [sessions] amo_time)."""
    config = sessions_on(scripted(config, when_closed="amo"), amo_brokers=("scripted",), amo_time="OPEN_30")
    clock.at = WEDNESDAY_22
    client = await start(config)
    body = await (await client.post("/webhook", json=alert(leg(), leg(sort_order="2", amoTime="OPEN_60")))).json()
    assert body["status"] == "success"
    assert [o["amo_time"] for o in received(config)] == ["OPEN_30", "OPEN_60"]


async def test_amo_just_after_the_close_waits_for_the_amo_window(start: Any, config: Config, clock: Clock) -> None:
    """At 15:35 the after-market window is not open yet: queued until 15:45, then sent as an AMO."""
    config = sessions_on(scripted(config, when_closed="amo"), amo_brokers=("scripted",))
    clock.at = ist("2026-11-25T15:35")
    client = await start(config)
    body = await (await client.post("/webhook", json=alert())).json()
    assert (body["status"], body["scheduled_at"]) == ("queued", "2026-11-25T15:45:00+05:30")
    clock.at = ist("2026-11-25T15:45")
    assert await client.app[SCHEDULER].run_due() == 1
    assert [o["amo_time"] for o in received(config)] == ["OPEN"]


async def test_amo_on_paper_fills_at_the_amo_time(start: Any, config: Config, clock: Clock) -> None:
    """Paper takes no AMOs: with when_closed = amo and amo_time OPEN_30 it waits until 09:45 and fills then, as a
    live AMO would."""
    config = sessions_on(
        with_accounts(config, {"paper": {"broker": "paper", "when_closed": "amo", "prices": {"RELIANCE": 2900}}}),
        amo_time="OPEN_30",
    )
    clock.at = WEDNESDAY_22
    client = await start(config)
    body = await (await client.post("/webhook", json=alert())).json()
    assert (body["status"], body["scheduled_at"]) == ("queued", "2026-11-26T09:45:00+05:30")
    clock.at = ist("2026-11-26T09:45")
    # this call or the scheduler's own loop sends it (see test_queue_survives_a_restart): the lock orders them
    await client.app[SCHEDULER].run_due()
    record = await client.app[JOURNAL].get_alert(body["alert_id"])
    assert record is not None
    assert record["status"] == "success"


async def test_mcx_is_open_at_22_when_nse_is_not(start: Any, config: Config, clock: Clock) -> None:
    """22:00: an MCX leg is placed now; an NSE leg on the same alert waits for both to be open."""
    config = sessions_on(scripted(config))
    clock.at = WEDNESDAY_22
    client = await start(config)
    body = await (await client.post("/webhook", json=alert(leg(exchange="MCX", symbol="GOLD")))).json()
    assert body["status"] == "success"
    body = await (
        await client.post("/webhook", json=alert(leg(exchange="MCX", symbol="SILVER"), leg(sort_order="2")))
    ).json()
    assert (body["status"], body["scheduled_at"]) == ("queued", "2026-11-26T09:15:00+05:30")
    assert [o["symbol"] for o in received(config)] == ["GOLD"]


async def test_sessions_off_sends_at_any_time(start: Any, config: Config, clock: Clock) -> None:
    """[sessions] enabled = false (TVBRIDGE_SESSIONS__ENABLED=false): Sunday alerts are sent at once."""
    config = scripted(config)
    assert config.sessions.enabled is False
    clock.at = SUNDAY
    client = await start(config)
    assert (await (await client.post("/webhook", json=alert())).json())["status"] == "success"


async def test_queue_cancel_removes_a_queued_alert(start: Any, config: Config, clock: Clock) -> None:
    """`tvbridge queue cancel ID`: the alert is not sent at the open, and `queue list` no longer shows it."""
    from tvbridge.commands.trading import main as trading_main  # noqa: PLC0415 - the CLI entry under test

    config = sessions_on(scripted(config))
    clock.at = SUNDAY
    client = await start(config)
    body = await (await client.post("/webhook", json=alert())).json()
    assert await asyncio.to_thread(trading_main, config, ["queue", "cancel", body["alert_id"]]) == 0
    clock.at = ist("2026-11-30T09:15")
    assert await client.app[SCHEDULER].run_due() == 0
    assert received(config) == []
    record = await client.app[JOURNAL].get_alert(body["alert_id"])
    assert record is not None
    assert record["status"] == "cancelled"


# flatten


def paper(config: Config) -> Config:
    return with_accounts(config, {"paper": {"broker": "paper", "prices": {"RELIANCE": 2900, "INFY": 1500}}})


async def open_some_positions(client: Client) -> None:
    """Long 10 RELIANCE, short 3 INFY, and a resting buy limit far below the market."""
    for the_leg in (
        leg(quantity="10"),
        leg(symbol="INFY", transactionType="S", quantity="3"),
        leg(symbol="INFY", orderType="LMT", price="1000", quantity="5"),
    ):
        body = await (await client.post("/webhook", json=alert(the_leg))).json()
        assert body["status"] == "success", body


async def test_flatten_endpoint_shows_the_plan_then_closes(start: Any, config: Config) -> None:
    """POST /admin/flatten without confirm changes nothing; with confirm it cancels the resting order and closes
    every position on the paper account (also while halted)."""
    config = paper(config)
    client = await start(config)
    await open_some_positions(client)
    await client.post("/admin/halt", headers=admin(client))
    response = await client.post("/admin/flatten", json={"account": "paper"}, headers=admin(client))
    body = await response.json()
    assert body["done"] == []
    closes = sorted((c["side"], c["quantity"], c["symbol"]) for c in body["plan"]["close"])
    assert closes == [("B", 3, "INFY"), ("S", 10, "RELIANCE")]
    assert len(body["plan"]["cancel"]) == 1
    broker = client.app[BROKERS]["paper"]
    assert len(await broker.positions()) == 2

    response = await client.post("/admin/flatten", json={"account": "paper", "confirm": True}, headers=admin(client))
    body = await response.json()
    assert len(body["done"]) == 3
    assert await broker.positions() == []
    assert await broker.orders(resting_only=True) == []


async def test_flatten_cli_acts_only_with_yes(start: Any, config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    """`tvbridge flatten --account paper` prints the plan and does nothing; with --yes it closes the positions."""
    from tvbridge.commands.trading import main as trading_main  # noqa: PLC0415 - the CLI entry under test

    config = paper(config)
    client = await start(config)
    await open_some_positions(client)
    await client.close()
    assert await asyncio.to_thread(trading_main, config, ["flatten", "--account", "paper"]) == 0
    out = capsys.readouterr().out
    assert "account paper: 1 order(s) to cancel, 2 position(s) to close" in out
    assert "close: SELL 10 NSE RELIANCE (C) at market" in out
    assert "nothing was done: run again with --yes to do this" in out
    assert await asyncio.to_thread(trading_main, config, ["flatten", "--account", "paper", "--yes"]) == 0
    assert await asyncio.to_thread(trading_main, config, ["flatten", "--account", "paper"]) == 0
    assert "account paper: 0 order(s) to cancel, 0 position(s) to close" in capsys.readouterr().out


async def test_flatten_cli_preview_of_a_remote_broker_needs_no_journal(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """The preview of `tvbridge flatten` on an account whose broker never joins the journal (a remote one) reads
    only the broker, as before the paper book moved into the journal: it works even when the journal cannot be
    opened (here: not a database), and leaves the journal's file alone. Only a paper account needs the journal
    (its book is there)."""
    from tvbridge.commands.trading import main as trading_main  # noqa: PLC0415 - the CLI entry under test

    config = scripted(config, positions_answer="flat")
    journal = config.server.data_dir / "tvbridge.sqlite3"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_bytes(b"not a database, not even close" * 100)
    assert await asyncio.to_thread(trading_main, config, ["flatten", "--account", "s"]) == 0
    out = capsys.readouterr().out
    assert "account s: 0 order(s) to cancel, 0 position(s) to close" in out
    assert "nothing was done: run again with --yes to do this" in out
    assert journal.read_bytes() == b"not a database, not even close" * 100


async def test_queued_alert_is_in_the_order_log_and_journal(start: Any, config: Config, clock: Clock) -> None:
    """A queued alert: the order log has a `queued` row, GET /alerts/<id> shows status `queued`."""
    config = sessions_on(scripted(config))
    clock.at = SUNDAY
    client = await start(config)
    body = await (await client.post("/webhook", json=alert())).json()
    record = await (await client.get(f"/alerts/{body['alert_id']}", headers=admin(client))).json()
    assert record["status"] == "queued"
    assert [leg["state"] for leg in record["legs"]] == ["queued"]
    rows = config.data_path("webhook_orders.csv").read_text().splitlines()
    assert "queued" in rows[-1]
    assert body["alert_id"] in rows[-1]


async def test_claimed_but_unsent_entries_are_sent_after_a_crash(tmp_path: Path) -> None:
    """A real server killed with SIGKILL right after the scheduler claimed a queued alert (its row `sending`,
    nothing handed to the executor): the next start queues it again and sends it once, and the broker (strict:
    a repeat would be a second order) has exactly that one order."""
    monday = "2026-11-30T09:16:00+05:30"
    queueing = {"TVBRIDGE_SESSIONS__ENABLED": "true", "TVBRIDGE_TEST_NOW": SUNDAY.isoformat()}
    server = await asyncio.to_thread(KillableServer(tmp_path, queueing, name="sunday").start)
    body = alert({k: v for k, v in leg().items() if k != "meta"})  # no timenow: the server's clock is pinned
    async with aiohttp.ClientSession() as session, session.post(f"{server.url}/webhook", json=body) as response:
        answer = await response.json()
        assert (response.status, answer["status"]) == (202, "queued"), answer
    alert_id = answer["alert_id"]
    assert await asyncio.to_thread(server.terminate) == 0

    at_open = {"TVBRIDGE_SESSIONS__ENABLED": "true", "TVBRIDGE_TEST_NOW": monday}
    crashing = KillableServer(tmp_path, {**at_open, "TVBRIDGE_TEST_CRASH_AT": "after_claim"}, name="crashing")
    with contextlib.suppress(AssertionError):  # it may die before or after its `server.started` line
        await asyncio.to_thread(crashing.start)
    assert await asyncio.to_thread(crashing.wait, 30) == -9
    assert queue_states(tmp_path) == {alert_id: "sending"}
    assert scripted_orders(tmp_path) == []

    restarted = await asyncio.to_thread(KillableServer(tmp_path, at_open, name="restarted").start)
    async with asyncio.timeout(30):
        while True:
            if journal_rows(tmp_path)[0][alert_id] not in {"queued", "accepted"}:
                break
            await asyncio.sleep(0.05)  # polling another process's journal, bounded by the timeout
    assert await asyncio.to_thread(restarted.terminate) == 0
    assert journal_rows(tmp_path)[0][alert_id] == "success"
    assert queue_states(tmp_path) == {alert_id: "sent"}
    assert [o["client_order_id"] for o in scripted_orders(tmp_path)] == [f"{alert_id}-1"]


def queue_states(data_dir: Path) -> dict[str, str]:
    """The closed-market queue's rows (alert id -> state), read straight from the journal file."""
    with contextlib.closing(sqlite3.connect(data_dir / "tvbridge.sqlite3")) as conn:
        return dict(conn.execute("SELECT alert_id, state FROM queue").fetchall())


async def test_accounts_decide_each_for_itself(start: Any, config: Config, clock: Clock) -> None:
    """At 22:00 one account sends an AMO at once while another queues: 200 with both kinds of leg results; the
    queued one is sent at the open."""
    config = sessions_on(
        with_accounts(config, {"live": {"broker": "scripted", "when_closed": "amo"}, "s": {"broker": "scripted"}}),
        amo_brokers=("scripted",),
    )
    clock.at = WEDNESDAY_22
    client = await start(config)
    response = await client.post("/webhook", json=alert())
    body = await response.json()
    assert response.status == 200
    assert {r["account"]: r["status"] for r in body["results"]} == {"live": "success", "s": "queued"}
    assert body["scheduled_at"] == "2026-11-26T09:15:00+05:30"
    assert [o["amo_time"] for o in received(config, "live")] == ["OPEN"]
    assert received(config, "s") == []
    clock.at = ist("2026-11-26T09:15")
    await client.app[SCHEDULER].run_due()
    assert len(received(config, "s")) == 1
    assert len(received(config, "live")) == 1


async def test_muhurat_session_places_on_a_sunday_evening(start: Any, config: Config, clock: Clock) -> None:
    """An extra session (Muhurat trading) opens NSE on a Sunday evening: alerts in it are placed at once."""
    muhurat = ExtraSession(date=date(2026, 11, 29), open="18:00", close="19:00", name="Muhurat trading")
    config = sessions_on(scripted(config), extra_sessions=(muhurat,))
    clock.at = ist("2026-11-29T18:30")
    client = await start(config)
    assert (await (await client.post("/webhook", json=alert())).json())["status"] == "success"


async def test_a_limit_the_alert_can_never_pass_refuses_it_on_arrival(start: Any, config: Config, clock: Clock) -> None:
    """Queued for the open, an alert over `max_qty_per_order` would only fail then: it is refused at once (200,
    `failed`, the limit named), nothing is queued, and nothing is sent at the open."""
    config = attrs.evolve(sessions_on(scripted(config)), risk=RiskConfig(max_qty_per_order=5))
    clock.at = SUNDAY
    client = await start(config)
    response = await client.post("/webhook", json=alert())
    body = await response.json()
    assert response.status == 200
    assert body["status"] == "failed"
    assert [r["status"] for r in body["results"]] == ["failed"]
    assert "risk: quantity 10 is over max_qty_per_order 5" in body["results"][0]["message"]
    assert "queued" not in body
    assert await client.app[SCHEDULER].next_due() is None
    clock.at = ist("2026-11-30T09:15")
    await client.app[SCHEDULER].run_due()
    assert received(config) == []


async def test_queued_on_one_account_refused_on_another_is_partial(start: Any, config: Config, clock: Clock) -> None:
    """One account's own limit refuses the alert, the other queues it: 202 with top-level status `partial` (not
    `failed`: part of it is still coming), the refused account's legs `failed`, the other's `queued`."""
    accounts: dict[str, dict[str, Any]] = {
        "tight": {"broker": "scripted", "max_qty_per_order": 5},
        "s": {"broker": "scripted"},
    }
    config = sessions_on(with_accounts(config, accounts))
    clock.at = SUNDAY
    client = await start(config)
    response = await client.post("/webhook", json=alert())
    body = await response.json()
    assert response.status == 202
    assert body["status"] == "partial"
    assert {r["account"]: r["status"] for r in body["results"]} == {"tight": "failed", "s": "queued"}
    clock.at = ist("2026-11-30T09:15")
    await client.app[SCHEDULER].run_due()
    assert len(received(config, "s")) == 1
    assert received(config, "tight") == []


async def test_risk_limits_apply_again_when_a_queued_alert_is_sent(start: Any, config: Config, clock: Clock) -> None:
    """A queued alert is checked against the risk limits again when it is sent: two alerts queued under
    `max_orders_per_day = 1` (each passes on arrival) and at the open only the first is sent."""
    config = attrs.evolve(sessions_on(scripted(config)), risk=RiskConfig(max_orders_per_day=1))
    clock.at = SUNDAY
    client = await start(config)
    first = await (await client.post("/webhook", json=alert(leg(symbol="INFY")))).json()
    second = await (await client.post("/webhook", json=alert(leg(symbol="TCS")))).json()
    assert (first["status"], second["status"]) == ("queued", "queued")
    clock.at = ist("2026-11-30T09:15")
    await client.app[SCHEDULER].run_due()
    assert [o["symbol"] for o in received(config)] == ["INFY"]
    record = await client.app[JOURNAL].get_alert(second["alert_id"])
    assert record is not None
    assert record["status"] == "failed"
    assert "max_orders_per_day is 1" in record["legs"][0]["message"]


async def test_resend_of_a_queued_alert_is_a_duplicate(start: Any, config: Config, clock: Clock) -> None:
    """TradingView resends (or a script fires twice) while the first copy is queued: the copy is answered
    `duplicate` with the first one's scheduled time, and only one order goes out at the open."""
    config = sessions_on(scripted(config))
    clock.at = SUNDAY
    client = await start(config)
    payload = alert()
    first = await (await client.post("/webhook", json=payload)).json()
    response = await client.post("/webhook", json=payload)
    second = await response.json()
    assert response.status == 200
    assert (second["status"], second["duplicate_of"], second["first_status"]) == (
        "duplicate",
        first["alert_id"],
        "queued",
    )
    assert second["scheduled_at"] == "2026-11-30T09:15:00+05:30"
    assert len(await list_entries(client.app[JOURNAL])) == 1
    clock.at = ist("2026-11-30T09:15")
    await client.app[SCHEDULER].run_due()
    assert len(received(config)) == 1
