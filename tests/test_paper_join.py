"""Issue 22: a paper alert is ONE commit: the paper book joined the SQLite journal, and an alert's first order is
booked inside the transaction that records the alert (`alerts/joined.py`, `JournalJoiner` in tvbridge/broker.py).

Checked where a user sees it: the answer, the book's orders (in the journal's file), the journal's rows, the order
log, `GET /alerts/<id>`, across real `kill -9` of a real `tvbridge serve` before and after the joined commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from aiohttp.test_utils import TestClient, TestServer
from durability_server import KillableServer, alert_record, journal_rows, order_log, post_alert
from helpers import ClientFactory, alert, leg, typed_leg, with_accounts

from tvbridge.app import create_app
from tvbridge.broker import BrokerContext, BrokerRejectedError, OrderRequest
from tvbridge.config import RiskConfig
from tvbridge.errors import PluginStartError
from tvbridge.halt import clear_halt, halt_path, set_halt
from tvbridge.keys import BROKERS, JOINED, JOURNAL
from tvbridge.models import OrderLeg, OrderType
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials
from tvbridge_brokers.paper import PaperBroker

if TYPE_CHECKING:
    from pathlib import Path

    from tvbridge.config import Config

PAPER_ENV = {"TVBRIDGE_ROUTING__ACCOUNTS": '["paper"]'}
PAPER_TOML = '[accounts.paper]\nbroker = "paper"\n[accounts.paper.prices]\nRELIANCE = 100\nINFY = 100\n'


@pytest.fixture(autouse=True)
def _one_store(store_env: dict[str, str], request: pytest.FixtureRequest) -> None:
    """Joining is the SQLite journal's: these tests run on it, except the one named `on_postgresql`, which runs
    in the PostgreSQL pass (`TVBRIDGE_TEST_STORE=postgresql`) only."""
    on_postgresql = "on_postgresql" in request.node.name
    if store_env and not on_postgresql:
        pytest.skip("the paper book joins the SQLite journal only")
    if on_postgresql and not store_env:
        pytest.skip("runs in the PostgreSQL pass")


def book_orders(data_dir: Path, account: str = "paper") -> list[tuple[str, str]]:
    """(client order id, state) of the account's paper orders, read from the journal's file."""
    conn = sqlite3.connect(data_dir / "tvbridge.sqlite3")
    try:
        rows = conn.execute(
            "SELECT client_order_id, state FROM paper_orders WHERE account = ? ORDER BY id", (account,)
        ).fetchall()
    finally:
        conn.close()
    return [(row[0], row[1]) for row in rows]


async def settle(journal: Any) -> None:
    """The results handed over so far committed (the SQLite journal's `settle`)."""
    await journal.settle()


async def start(data_dir: Path, env: dict[str, str], name: str) -> KillableServer:
    return await asyncio.to_thread(KillableServer(data_dir, env, name=name).start)


async def test_killed_inside_the_joined_commit_neither_the_alert_nor_its_order_exists(tmp_path: Path) -> None:
    """SIGKILL at `in_join` (the alert's rows and the paper order written, not committed): after the crash the
    journal has no alert and the book no order, nothing was answered; the resend is placed once."""
    (tmp_path / "config.toml").write_text(PAPER_TOML)
    body = alert(leg(symbol="INFY", quantity="3"))
    server = await start(tmp_path, {**PAPER_ENV, "TVBRIDGE_TEST_CRASH_AT": "in_join"}, "crashing")
    assert await post_alert(server.url, body) is None
    assert await asyncio.to_thread(server.wait, 10) == -9
    alerts, _, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    assert alerts == {}
    assert book_orders(tmp_path) == []
    assert order_log(tmp_path) == []

    restarted = await start(tmp_path, PAPER_ENV, "restarted")
    outcome = await post_alert(restarted.url, body)
    assert outcome is not None
    status, answer = outcome
    assert status == 200
    assert answer["status"] == "success"
    assert await asyncio.to_thread(restarted.terminate) == 0
    assert book_orders(tmp_path) == [(f"{answer['alert_id']}-1", "filled")]
    alerts, legs, _ = journal_rows(tmp_path)
    assert alerts == {answer["alert_id"]: "success"}
    assert legs == {(answer["alert_id"], 1): "placed"}
    assert [(r["alert_id"], r["status"]) for r in order_log(tmp_path)] == [(answer["alert_id"], "success")]


async def test_killed_after_the_joined_commit_recovery_finds_the_order_once(tmp_path: Path) -> None:
    """SIGKILL at `after_record`: the alert, its paper order and (one leg: one commit in all) its result and final
    status were committed together, nothing answered, no order log row. The restart places and looks up nothing
    (the alert is finished), writes the missing row once; the journal, the order log and `GET /alerts/<id>`
    agree, and a resend of the same alert places nothing."""
    (tmp_path / "config.toml").write_text(PAPER_TOML)
    body = alert(leg(symbol="RELIANCE", quantity="2"))
    server = await start(tmp_path, {**PAPER_ENV, "TVBRIDGE_TEST_CRASH_AT": "after_record"}, "crashing")
    assert await post_alert(server.url, body) is None
    assert await asyncio.to_thread(server.wait, 10) == -9
    alerts, legs, _ = journal_rows(tmp_path)
    (alert_id,) = alerts
    assert alerts[alert_id] == "success"  # settled in its own commit (was `accepted`, leg `sending`, before)
    assert legs[alert_id, 1] == "placed"
    assert book_orders(tmp_path) == [(f"{alert_id}-1", "filled")]  # in the same commit as the alert
    assert order_log(tmp_path) == []

    restarted = await start(tmp_path, PAPER_ENV, "restarted")
    events = restarted.events()
    assert [e for e in events if e["event"] in {"recovery.alert", "recovery.leg_found"}] == []
    rows = [e for e in events if e["event"] == "recovery.order_log_rows"]
    assert [(e["alert_id"], e["written"]) for e in rows] == [(alert_id, ["paper#1"])]
    record = await alert_record(restarted.url, alert_id)
    assert record["status"] == "success"
    assert record["legs"][0]["client_order_id"] == f"{alert_id}-1"
    resent = await post_alert(restarted.url, body)
    assert resent is not None
    assert resent[0] == 200
    assert (resent[1]["status"], resent[1]["duplicate_of"]) == ("duplicate", alert_id)  # dedupe: nothing placed
    assert await asyncio.to_thread(restarted.terminate) == 0
    assert book_orders(tmp_path) == [(f"{alert_id}-1", "filled")]
    alerts, legs, _ = journal_rows(tmp_path)
    assert alerts == {alert_id: "success"}
    assert legs == {(alert_id, 1): "placed"}
    assert [(r["alert_id"], r["leg_number"], r["status"]) for r in order_log(tmp_path)] == [(alert_id, "1", "success")]


async def test_the_order_is_in_the_journals_file_and_no_paper_file_is_made(
    make_client: ClientFactory, config: Config
) -> None:
    """A two-leg alert on two paper accounts: each account's first order in the alert's commit, the second ones
    through the journal's group commits; every order in the journal's file under its account, no file of its own."""
    config = with_accounts(
        config,
        {"paper": {"broker": "paper"}, "practice": {"broker": "paper"}},
        routes=["paper", "practice"],
    )
    client = await make_client(config)
    joined = client.app[JOINED]
    assert sorted(joined) == ["paper", "practice"]
    response = await client.post(
        "/webhook",
        json=alert(leg(symbol="INFY", price="100"), leg(symbol="TCS", price="200", sort_order="2")),
    )
    assert response.status == 200
    body = await response.json()
    assert [r["status"] for r in body["results"]] == ["success"] * 4
    await settle(client.app[JOURNAL])
    alert_id = body["alert_id"]
    for account in ("paper", "practice"):
        assert book_orders(config.server.data_dir, account) == [
            (f"{alert_id}-1", "filled"),
            (f"{alert_id}-2", "filled"),
        ]
        assert not (config.server.data_dir / f"paper-{account}.sqlite3").exists()
    positions = await client.app[BROKERS]["practice"].positions()
    assert sorted((p.contract.symbol, p.net_quantity) for p in positions) == [("INFY", 10), ("TCS", 10)]


async def test_a_failed_commit_books_nothing(make_client: ClientFactory, config: Config) -> None:
    """The journal's transaction fails after the book wrote its order (a trigger rolls the whole transaction back
    when the order row goes in): the alert is refused 503, the journal has no alert, the book no order."""
    client = await make_client(config)
    journal = client.app[JOURNAL]
    await journal.database.write(  # type: ignore[attr-defined]  # the SQLite journal's database
        lambda conn: conn.execute(
            "CREATE TRIGGER fail_the_commit AFTER INSERT ON paper_orders BEGIN SELECT RAISE(ROLLBACK, 'disk gone'); END"
        )
    )
    response = await client.post("/webhook", json=alert(leg(symbol="INFY")))
    assert response.status == 503
    refused = await response.json()
    rows = await journal.database.read(  # type: ignore[attr-defined]
        lambda conn: (
            conn.execute("SELECT count(*) FROM alerts").fetchone()[0],
            conn.execute("SELECT count(*) FROM paper_orders").fetchone()[0],
        )
    )
    assert rows == (0, 0)
    assert "alert_id" not in refused or refused["alert_id"] not in order_log(config.server.data_dir)


async def test_a_risk_refusal_books_nothing(make_client: ClientFactory, config: Config) -> None:
    """`max_orders_per_day = 1`: the second alert's leg is refused by the risk limit before it could be booked
    (the daily count taken once, for the first), and the book holds the first order only."""
    config = attrs.evolve(config, risk=RiskConfig(max_orders_per_day=1))
    client = await make_client(config)
    first = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    assert first.status == 200
    second = await client.post("/webhook", json=alert(leg(symbol="TCS", price="100")))
    assert second.status == 200
    refused = await second.json()
    assert refused["status"] == "failed"
    assert "max_orders_per_day" in refused["results"][0]["message"]
    await settle(client.app[JOURNAL])
    first_id = (await first.json())["alert_id"]
    assert book_orders(config.server.data_dir) == [(f"{first_id}-1", "filled")]
    record = await client.app[JOURNAL].get_alert(refused["alert_id"])
    assert record is not None
    assert record["legs"][0]["state"] == "failed"


async def test_an_alert_refused_503_does_not_use_up_the_daily_count(make_client: ClientFactory, config: Config) -> None:
    """`max_orders_per_day = 2`: one order booked, then an alert whose journal write fails (503: not recorded,
    nothing booked). The checks took the count before the write; it is given back, so a third alert is still
    booked: one order was sent today, not two."""
    config = attrs.evolve(config, risk=RiskConfig(max_orders_per_day=2))
    client = await make_client(config)
    journal = client.app[JOURNAL]
    first = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    assert (await first.json())["status"] == "success"
    await journal.database.write(  # type: ignore[attr-defined]
        lambda conn: conn.execute(
            "CREATE TRIGGER fail_alerts AFTER INSERT ON alerts BEGIN SELECT RAISE(ROLLBACK, 'disk gone'); END"
        )
    )
    second = await client.post("/webhook", json=alert(leg(symbol="TCS", price="100")))
    assert second.status == 503
    await journal.database.write(lambda conn: conn.execute("DROP TRIGGER fail_alerts"))  # type: ignore[attr-defined]
    third = await client.post("/webhook", json=alert(leg(symbol="WIPRO", price="100")))
    body = await third.json()
    assert third.status == 200
    assert body["status"] == "success", body["results"][0]["message"]
    fourth = await (await client.post("/webhook", json=alert(leg(symbol="SBIN", price="100")))).json()
    assert (
        fourth["results"][0]["message"]
        == "risk: 2 order(s) already sent today on account paper; max_orders_per_day is 2"
    )
    await settle(journal)
    first_id = (await first.json())["alert_id"]
    assert book_orders(config.server.data_dir) == [(f"{first_id}-1", "filled"), (f"{body['alert_id']}-1", "filled")]


async def test_a_halt_set_while_the_alert_waits_for_its_commit_stops_it(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks passed, then the alert waits for its commit (another writer, a slow fsync) and meanwhile the kill
    switch is set (`tvbridge halt`): nothing is booked, the leg is answered failed with the halt's reason (as a
    send the halt refuses), and the commit itself records it `failed`, so a crash right after it cannot send it
    at recovery. The daily count it took is given back: after the resume, the next alert is booked."""
    config = attrs.evolve(config, risk=RiskConfig(max_orders_per_day=2))
    client = await make_client(config)
    journal = client.app[JOURNAL]
    seed = await client.post("/webhook", json=alert(leg(symbol="SBIN", price="100")))  # the count read: joins now
    seeded = await seed.json()
    assert seeded["status"] == "success"
    record_plan = journal.record_plan
    committed: list[dict[str, Any] | None] = []

    async def halt_then_record(entry: Any, **kwargs: Any) -> None:
        set_halt(halt_path(config.server.data_dir), reason="stop now", by="test")  # after the checks ran
        await record_plan(entry, **kwargs)
        committed.append(await journal.database.read(lambda conn: leg_row(conn, entry.alert_id)))  # type: ignore[attr-defined]

    monkeypatch.setattr(journal, "record_plan", halt_then_record)
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    monkeypatch.undo()
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "failed"
    [refused] = body["results"]
    assert (refused["leg_number"], refused["client_order_id"], refused["message"]) == (
        1,
        f"{body['alert_id']}-1",
        "trading halted (stop now): nothing was sent",
    )
    assert committed == [{"state": "failed", "message": "trading halted (stop now): nothing was sent"}]
    await settle(journal)
    assert book_orders(config.server.data_dir) == [(f"{seeded['alert_id']}-1", "filled")]
    assert [
        (row["status"], row["leg_number"], row["client_order_id"]) for row in order_log(config.server.data_dir)
    ] == [
        ("success", "1", f"{seeded['alert_id']}-1"),
        ("failed", "1", f"{body['alert_id']}-1"),
    ]
    clear_halt(halt_path(config.server.data_dir))
    after = await client.post("/webhook", json=alert(leg(symbol="TCS", price="100")))
    assert (await after.json())["status"] == "success"


def leg_row(conn: sqlite3.Connection, alert_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT state, message FROM legs WHERE alert_id = ?", (alert_id,)).fetchone()
    return None if row is None else {"state": row[0], "message": row[1]}


async def test_a_book_left_in_the_journal_is_never_started_empty(make_client: ClientFactory, config: Config) -> None:
    """Journal and paper account both on synchronous = "full": the book joins the journal and holds a position.
    The operator then lowers the journal to "normal" (the account still asks "full", so the book would keep a file
    of its own): tvbridge refuses to start, naming the settings, instead of starting the account flat on an
    empty file (EXIT_ALL would send nothing, a resend would book again). Set back, the position is there."""
    accounts = {"paper": {"broker": "paper", "synchronous": "full", "prices": {"INFY": "100"}}}
    full = with_accounts(attrs.evolve(config, journal=attrs.evolve(config.journal, synchronous="full")), accounts)
    client = await make_client(full)
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", quantity="5")))
    assert (await response.json())["status"] == "success"
    await client.close()

    lowered = with_accounts(config, accounts)  # the journal back to the default "normal"
    refusing = TestClient(TestServer(create_app(lowered, make_converter(), resolve_credentials(lowered))))
    try:
        with pytest.raises(PluginStartError) as refused:
            await refusing.start_server()
    finally:
        await refusing.close()
    assert "[journal] synchronous back to 'full'" in str(refused.value)
    assert "this account's synchronous to 'normal'" in str(refused.value)
    assert not (config.server.data_dir / "paper-paper.sqlite3").exists()

    client = await make_client(full)
    positions = await client.app[BROKERS]["paper"].positions()
    assert [(p.contract.symbol, p.net_quantity) for p in positions] == [("INFY", 5)]


async def test_the_books_refusal_books_nothing_and_the_alert_is_recorded(
    make_client: ClientFactory, config: Config
) -> None:
    """A leg the book refuses (a buy SL whose limit is under its trigger): failed with the book's reason, the
    alert recorded `failed`, no order; the next alert books normally in the same file."""
    client = await make_client(config)
    bad = leg(symbol="INFY", orderType="SL", price="90", triggerPrice="100")
    response = await client.post("/webhook", json=alert(bad))
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "failed"
    assert "a buy SL needs price >= triggerPrice" in body["results"][0]["message"]
    good = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    good_id = (await good.json())["alert_id"]
    await settle(client.app[JOURNAL])
    assert book_orders(config.server.data_dir) == [(f"{good_id}-1", "filled")]
    record = await client.app[JOURNAL].get_alert(body["alert_id"])
    assert record is not None
    assert (record["status"], record["legs"][0]["state"]) == ("failed", "failed")


async def test_an_existing_paper_file_is_imported_once(make_client: ClientFactory, config: Config) -> None:
    """The account's book from before (its own file, a resting limit and a position) is in the journal's file
    after the first start: the position is there, the limit is cancelled by its order id, the file is renamed."""
    data_dir = config.server.data_dir
    own = PaperBroker.from_settings({"prices": {"INFY": "100"}}, BrokerContext(account="paper", data_dir=data_dir))
    await own.start()
    bought = await own.place(
        OrderRequest(client_order_id="old-1", alert_id="old", leg_number=1, leg=order_leg("INFY", "MKT", "0"))
    )
    resting = await own.place(
        OrderRequest(client_order_id="old-2", alert_id="old", leg_number=1, leg=order_leg("TCS", "LMT", "50"))
    )
    await own.aclose()
    client = await make_client(config)
    assert not (data_dir / "paper-paper.sqlite3").exists()
    assert (data_dir / "paper-paper.sqlite3.imported").exists()
    positions = await client.app[BROKERS]["paper"].positions()
    assert [(p.contract.symbol, p.net_quantity) for p in positions] == [("INFY", 1)]
    cancel = alert({"order_id": resting.order_id}, alert_type="cancel_order")
    response = await client.post("/webhook", json=cancel)
    assert response.status == 200
    assert (await response.json())["results"][0]["message"] == f"cancelled 1 order(s): {resting.order_id}"
    assert book_orders(data_dir) == [("old-1", "filled"), ("old-2", "cancelled")]
    placed = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    new_id = (await placed.json())["results"][0]["order_id"]
    assert int(new_id.removeprefix("PAPER-")) > int(str(bought.order_id).removeprefix("PAPER-"))  # never reused


async def test_an_import_never_overwrites_an_earlier_imported_file(make_client: ClientFactory, config: Config) -> None:
    """`paper-paper.sqlite3.imported` is already there (an earlier import's file, perhaps the only copy of an old
    book) and a new `paper-paper.sqlite3` is imported: the new one is set aside as `.imported.2`, the earlier one
    is kept byte for byte."""
    data_dir = config.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    earlier = data_dir / "paper-paper.sqlite3.imported"
    earlier.write_bytes(b"an earlier import, kept")
    own = PaperBroker.from_settings({"prices": {"INFY": "100"}}, BrokerContext(account="paper", data_dir=data_dir))
    await own.start()
    await own.place(
        OrderRequest(client_order_id="old-1", alert_id="old", leg_number=1, leg=order_leg("INFY", "MKT", "0"))
    )
    await own.aclose()
    client = await make_client(config)
    assert earlier.read_bytes() == b"an earlier import, kept"
    assert not (data_dir / "paper-paper.sqlite3").exists()
    assert (data_dir / "paper-paper.sqlite3.imported.2").exists()
    positions = await client.app[BROKERS]["paper"].positions()
    assert [(p.contract.symbol, p.net_quantity) for p in positions] == [("INFY", 1)]


def order_leg(symbol: str, order_type: str, price: str) -> OrderLeg:
    """A buy of 1 on NSE, intraday, as the parser would make it."""
    return typed_leg(symbol=symbol, order_type=OrderType(order_type), quantity=1, price=Decimal(price))


async def test_a_plugin_broker_never_joins(make_client: ClientFactory, config: Config) -> None:
    """Next to a paper account, a plugin broker (the `scripted` test plugin, a remote broker's shape) is not
    offered the journal: its orders go through `place()` after the alert's commit, as before."""
    config = with_accounts(
        config, {"paper": {"broker": "paper"}, "sim": {"broker": "scripted"}}, routes=["paper", "sim"]
    )
    client = await make_client(config)
    joined = client.app[JOINED]
    assert sorted(joined) == ["paper"]
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    assert response.status == 200
    assert [r["status"] for r in (await response.json())["results"]] == ["success", "success"]


async def test_a_refused_leg_stays_refused_after_a_crash(tmp_path: Path) -> None:
    """`max_orders_per_day = 1`: the second alert's first leg is refused by the count before the commit and
    recorded `failed` in it (the alert settled `failed` in that commit: one leg, one commit in all); killed right
    after that commit (`after_record`, 2nd hit), the restart's recovery does not look it up nor send it past the
    limit: the book holds one order, and the refusal's order log row is written once."""
    (tmp_path / "config.toml").write_text(PAPER_TOML)
    env = {**PAPER_ENV, "TVBRIDGE_RISK__MAX_ORDERS_PER_DAY": "1"}
    server = await start(tmp_path, {**env, "TVBRIDGE_TEST_CRASH_AT": "after_record:2"}, "crashing")
    first = await post_alert(server.url, alert(leg(symbol="INFY", quantity="1")))
    assert first is not None
    assert first[1]["status"] == "success"
    assert await post_alert(server.url, alert(leg(symbol="RELIANCE", quantity="1"))) is None
    assert await asyncio.to_thread(server.wait, 10) == -9
    alerts, legs, _ = journal_rows(tmp_path)
    (second_id,) = (a for a in alerts if a != first[1]["alert_id"])
    assert (alerts[second_id], legs[second_id, 1]) == ("failed", "failed")  # was ("accepted", "failed")

    restarted = await start(tmp_path, env, "restarted")
    assert await asyncio.to_thread(restarted.terminate) == 0
    assert book_orders(tmp_path) == [(f"{first[1]['alert_id']}-1", "filled")]
    alerts, legs, _ = journal_rows(tmp_path)
    assert (alerts[second_id], legs[second_id, 1]) == ("failed", "failed")
    rows = [(r["alert_id"], r["status"]) for r in order_log(tmp_path)]
    assert rows == [(first[1]["alert_id"], "success"), (second_id, "failed")]
    assert "max_orders_per_day" in next(r["message"] for r in order_log(tmp_path) if r["alert_id"] == second_id)


async def test_a_booking_that_raises_half_way_leaves_nothing_booked(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin bug inside the joined booking (here: the order row written, then an untyped error) is rolled back
    by the host around the call, whatever the plugin does: the alert is recorded, the leg is `unknown` after the
    lookup found no order (never `placed`), and the book holds nothing."""
    booked = PaperBroker.place_joined

    def writes_then_raises(self: PaperBroker, conn: sqlite3.Connection, request: OrderRequest) -> Any:
        booked(self, conn, request)  # the order is in the transaction now
        raise RuntimeError("plugin bug after writing")

    monkeypatch.setattr(PaperBroker, "place_joined", writes_then_raises)
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    assert response.status == 200
    body = await response.json()
    (result,) = body["results"]
    assert result["status"] == "unknown"
    assert "RuntimeError: plugin bug after writing" in result["message"]
    assert "has no order" in result["message"]
    await settle(client.app[JOURNAL])
    assert book_orders(config.server.data_dir) == []
    record = await client.app[JOURNAL].get_alert(body["alert_id"])
    assert record is not None
    assert record["legs"][0]["state"] == "unknown"


@pytest.mark.parametrize("habit", ["commit()", "COMMIT", "/* done */ end transaction", "ROLLBACK"])
async def test_a_plugin_cannot_end_the_alerts_transaction(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch, habit: str
) -> None:
    """A joining plugin that commits (a habit of sqlite3 code) or rolls back inside `place_joined`, then refuses:
    the journal's transaction is not its to end (`JoinedSql`), so the alert is not committed half-way behind the
    host's back and answered 503 "not recorded" while it is. The alert is recorded and answered, its leg failed
    (the plugin's own error), and nothing is booked."""

    def ends_then_refuses(self: PaperBroker, conn: Any, request: OrderRequest) -> Any:
        conn.commit() if habit == "commit()" else conn.execute(habit)
        raise BrokerRejectedError("no")

    monkeypatch.setattr(PaperBroker, "place_joined", ends_then_refuses)
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    assert response.status == 200
    body = await response.json()
    (result,) = body["results"]
    assert result["status"] in {"failed", "unknown"}, result
    await settle(client.app[JOURNAL])
    record = await client.app[JOURNAL].get_alert(body["alert_id"])
    assert record is not None
    assert record["legs"][0]["state"] == result["status"]
    assert book_orders(config.server.data_dir) == []
    assert [row["alert_id"] for row in order_log(config.server.data_dir)] == [body["alert_id"]]


async def test_on_postgresql_nothing_joins_and_the_book_keeps_its_own_transactions(
    make_client: ClientFactory, config: Config
) -> None:
    """With the PostgreSQL store the paper book is not offered the journal: it books in the database in its own
    transaction, as before, and no SQLite journal file is made."""
    client = await make_client(config)
    joined = client.app[JOINED]
    assert dict(joined) == {}
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "success"
    paper: Any = client.app[BROKERS]["paper"]  # the paper broker's own `orders()` (for tests and tools)
    orders = await paper.orders()
    assert [o.client_order_id for o in orders] == [f"{body['alert_id']}-1"]
    assert not (config.server.data_dir / "tvbridge.sqlite3").exists()


async def test_a_leg_the_book_refuses_is_failed_in_the_alerts_commit(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A two-leg alert whose first leg the book refuses (nothing booked): the alert's own commit already records
    that leg `failed` with the book's reason, not `sending`, so a crash before the alert's results cannot have
    recovery look it up, miss it and send it. The second leg is skipped; the answer and the journal agree."""
    client = await make_client(config)
    journal = client.app[JOURNAL]
    await client.post("/webhook", json=alert(leg(symbol="SBIN", price="100")))  # the daily count read: joins now
    record_plan = journal.record_plan
    committed: list[dict[str, Any] | None] = []

    async def record_then_read(entry: Any, **kwargs: Any) -> None:
        await record_plan(entry, **kwargs)
        committed.append(await journal.database.read(lambda conn: leg_row(conn, entry.alert_id)))  # type: ignore[attr-defined]

    monkeypatch.setattr(journal, "record_plan", record_then_read)
    refused_leg = leg(symbol="INFY", orderType="SL", price="90", triggerPrice="100")
    response = await client.post("/webhook", json=alert(refused_leg, leg(symbol="TCS", price="100", sort_order="2")))
    monkeypatch.undo()
    body = await response.json()
    assert [r["status"] for r in body["results"]] == ["failed", "skipped"]
    reason = "a buy SL needs price >= triggerPrice (got price 90, trigger 100)"
    assert committed == [{"state": "failed", "message": reason}]
    await settle(journal)
    record = await journal.get_alert(body["alert_id"])
    assert record is not None
    assert [(leg["leg_number"], leg["state"]) for leg in record["legs"]] == [(1, "failed"), (2, "skipped")]
