"""The paper book in PostgreSQL (issue 20): two paper brokers on one real database act as one account.

Each broker here stands for one instance: its own worker thread, its own connection, the same `[journal] url`.
The database is a real PostgreSQL server (tests/support/pgcluster.py), migrated by tvbridge's own migrations.
"""

from __future__ import annotations

import asyncio
import sqlite3
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
import structlog.testing
from helpers import typed_leg
from ops_tools import free_port

from tvbridge.broker import (
    BrokerContext,
    BrokerRejectedError,
    BrokerUnavailableError,
    BrokerUnknownOutcomeError,
    CancelRequest,
    Health,
    OrderRequest,
    OrderState,
    SharedDatabase,
)
from tvbridge.config import DEFAULT_BROKER_TIMEOUT_S as BROKER_TIMEOUT_S
from tvbridge.models import CancelLeg, OrderType, Side
from tvbridge.pluginguard import GuardedBroker
from tvbridge.store.postgres import migrate_url
from tvbridge_brokers.paper import PaperBroker
from tvbridge_brokers.paper.tables import IDLE_IN_TRANSACTION_S, PG_TIMEOUT_S, PostgresTables

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from pathlib import Path

    from pgcluster import PgCluster

PRICES: dict[str, object] = {"RELIANCE": "2900"}


def order(client_order_id: str, **changes: Any) -> OrderRequest:
    return OrderRequest(client_order_id=client_order_id, alert_id="alert-1", leg_number=1, leg=typed_leg(**changes))


@pytest.fixture
async def url(pg_url: str) -> str:
    await migrate_url(pg_url)
    return pg_url


@pytest.fixture
async def instances(tmp_path: Path, url: str) -> AsyncIterator[Callable[..., Any]]:
    """`await instance(name, account="practice", settings=None)`: a started paper broker on the shared database,
    with a data directory of its own (as on its own machine); all closed at the end."""
    opened: list[PaperBroker] = []

    async def instance(
        name: str, account: str = "practice", settings: Mapping[str, object] | None = None
    ) -> PaperBroker:
        context = BrokerContext(account=account, data_dir=tmp_path / name, database=SharedDatabase(url))
        broker = PaperBroker.from_settings({"prices": PRICES, **(settings or {})}, context)
        await broker.start()
        opened.append(broker)
        return broker

    yield instance
    for broker in opened:
        await broker.aclose()


def rows(cluster: PgCluster, url: str, sql: str) -> list[str]:
    out = cluster.psql(sql, url.rsplit("/", 1)[1])
    return out.splitlines() if out else []


async def test_a_buy_on_one_instance_is_closed_by_a_sell_on_the_other(instances: Callable[..., Any]) -> None:
    """One account on both: the position A opened is B's to close, and both read the same book afterwards."""
    a, b = await instances("a"), await instances("b")

    bought = await a.place(order("c1", price=Decimal(2900)))
    assert [(p.symbol, p.net_quantity) for p in await b.book_positions()] == [("RELIANCE", 10)]
    sold = await b.place(order("c2", side=Side.SELL, price=Decimal(2950)))

    assert (bought.order_id, sold.order_id) == ("PAPER-000001", "PAPER-000002")  # numbered per account
    assert await a.positions() == [] == await b.positions()
    for broker in (a, b):
        (flat,) = await broker.book_positions(include_flat=True)
        assert (flat.net_quantity, flat.realized_pnl) == (0, Decimal(500))
        assert [o.client_order_id for o in await broker.orders()] == ["c1", "c2"]
    found = await b.lookup("c1")
    assert found is not None
    assert (found.order_id, found.state) == ("PAPER-000001", OrderState.FILLED)


async def test_one_client_order_id_placed_on_both_at_once_is_one_order(
    instances: Callable[..., Any], pg_cluster: PgCluster, url: str
) -> None:
    """The same leg reaching both instances at the same moment: one order, the other answer names it."""
    a, b = await instances("a"), await instances("b")

    for i in range(10):
        first, second = await asyncio.gather(
            a.place(order(f"same-{i}", price=Decimal(2900))), b.place(order(f"same-{i}", price=Decimal(2900)))
        )
        assert first.order_id == second.order_id
        assert [r.details.get("duplicate", False) for r in (first, second)].count(True) == 1

    assert rows(pg_cluster, url, "SELECT count(*), count(DISTINCT client_order_id) FROM paper_orders") == ["10|10"]
    (position,) = await a.book_positions()
    assert position.net_quantity == 100


async def test_accounts_share_tables_but_not_orders(instances: Callable[..., Any]) -> None:
    """Two paper accounts in one database: each sees its own orders and positions, numbered from 1, and cannot
    cancel the other's order by its id."""
    mine, other = await instances("a", "mine"), await instances("a2", "other")

    limits = {"m1": Decimal(2700), "m2": Decimal(2800)}  # m2's price does not reach m1's limit: both rest
    resting = [await mine.place(order(c, order_type=OrderType.LIMIT, price=p)) for c, p in limits.items()]
    filled = await other.place(order("o1", price=Decimal(2900)))

    assert [r.order_id for r in (*resting, filled)] == ["PAPER-000001", "PAPER-000002", "PAPER-000001"]
    assert [o.client_order_id for o in await other.orders()] == ["o1"]
    assert await mine.positions() == []
    assert await other.lookup("m1") is None
    with pytest.raises(BrokerRejectedError, match="no such order"):  # mine has a PAPER-000002, other has not
        await other.cancel(CancelRequest(alert_id="x", leg_number=1, leg=CancelLeg(order_id="PAPER-000002")))
    cancelled = await other.cancel(CancelRequest(alert_id="x", leg_number=1, leg=CancelLeg(symbol="RELIANCE")))
    assert cancelled == []  # mine's resting RELIANCE orders are not other's
    cancelled = await mine.cancel(CancelRequest(alert_id="x", leg_number=1, leg=CancelLeg(symbol="RELIANCE")))
    assert [(r.order_id, r.state) for r in cancelled] == [
        ("PAPER-000001", OrderState.CANCELLED),
        ("PAPER-000002", OrderState.CANCELLED),
    ]
    assert [o.state for o in await other.orders()] == [OrderState.FILLED]


async def test_a_bracket_placed_on_one_instance_is_moved_by_a_price_on_the_other(
    instances: Callable[..., Any],
) -> None:
    """The bracket's rules run once, whichever instance brings the price: the stop trails, the target fills and
    cancels the stop (one-cancels-other)."""
    a, b = await instances("a"), await instances("b")
    entry = order(
        "br",
        price=Decimal(100),
        target_price=Decimal(110),
        stoploss_price=Decimal(95),
        trailing_jump=Decimal(2),
        symbol="TCS",
    )
    await a.place(entry)

    await b.place(order("p1", symbol="TCS", order_type=OrderType.LIMIT, price=Decimal(104), side=Side.SELL))
    stop = next(o for o in await a.orders() if o.client_order_id == "br.S")
    assert (stop.state, stop.trigger_price) == (OrderState.TRIGGER_PENDING, Decimal(99))
    await b.place(order("p2", symbol="TCS", price=Decimal(111), side=Side.SELL, quantity=1))

    states = {o.client_order_id: o.state for o in await a.orders()}
    assert (states["br.T"], states["br.S"]) == (OrderState.FILLED, OrderState.CANCELLED)
    found = await a.lookup("br")
    assert found is not None
    assert [part["state"] for part in found.details["bracket"]] == ["filled", "filled", "cancelled"]


async def test_the_sqlite_book_is_imported_once_at_the_first_start(
    instances: Callable[..., Any], tmp_path: Path
) -> None:
    """Moving to PostgreSQL keeps the trader's positions and order ids; the file is renamed, and a second
    instance's own file is left alone with a warning, not merged."""
    local = PaperBroker.from_settings({"prices": PRICES}, BrokerContext(account="practice", data_dir=tmp_path / "a"))
    await local.start()
    await local.place(order("old-1", price=Decimal(2900)))
    await local.place(order("old-2", order_type=OrderType.LIMIT, price=Decimal(2800), target_price=Decimal(2900)))
    await local.aclose()
    path = tmp_path / "a" / "paper-practice.sqlite3"
    second = PaperBroker.from_settings({}, BrokerContext(account="practice", data_dir=tmp_path / "b"))
    await second.start()
    await second.place(order("b-only", price=Decimal(1)))
    await second.aclose()

    with structlog.testing.capture_logs() as logs:
        a = await instances("a")
        b = await instances("b")

    assert [(p.symbol, p.net_quantity) for p in await b.book_positions()] == [("RELIANCE", 10)]
    assert [(o.order_id, o.client_order_id) for o in await b.orders()] == [
        ("PAPER-000001", "old-1"),
        ("PAPER-000002", "old-2"),
        ("PAPER-000003", "old-2.T"),
    ]
    assert (await a.place(order("new", price=Decimal(2900)))).order_id == "PAPER-000004"
    assert not path.exists()
    assert path.with_name(path.name + ".imported").exists()
    imported = [e for e in logs if e["event"] == "paper.sqlite_book_imported"]
    assert [(e["orders"], e["positions"], e["brackets"], e["noops"]) for e in imported] == [(3, 1, 1, 0)]
    ignored = [e for e in logs if e["event"] == "paper.sqlite_book_ignored"]
    assert [e["path"] for e in ignored] == [str(tmp_path / "b" / "paper-practice.sqlite3")]
    with sqlite3.connect(tmp_path / "b" / "paper-practice.sqlite3") as db:  # left as it was
        assert db.execute("SELECT client_order_id FROM orders").fetchall() == [("b-only",)]


async def test_an_unmigrated_database_stops_the_start_saying_what_to_do(pg_url: str, tmp_path: Path) -> None:
    context = BrokerContext(account="p", data_dir=tmp_path, database=SharedDatabase(pg_url))
    broker = PaperBroker.from_settings({}, context)
    with pytest.raises(BrokerUnavailableError, match="tvbridge db migrate"):
        await broker.start()
    await broker.aclose()


async def test_an_unreachable_database_is_unavailable_and_never_shows_the_password(tmp_path: Path) -> None:
    url = f"postgresql://trader:hunter2-s3cret@127.0.0.1:{free_port()}/tvbridge"
    context = BrokerContext(account="p", data_dir=tmp_path, database=SharedDatabase(url))
    broker = PaperBroker.from_settings({}, context)
    assert "hunter2" not in repr(broker.settings)
    with structlog.testing.capture_logs() as logs, pytest.raises(BrokerUnavailableError) as raised:
        await broker.start()
    await broker.aclose()
    assert "hunter2" not in str(raised.value)
    assert "hunter2" not in repr(logs)


async def test_the_book_survives_a_database_restart(own_pg_cluster: PgCluster, tmp_path: Path) -> None:
    """While the database is down a call is unavailable (nothing done); once it is back, the next call
    reconnects by itself and the book is as it was."""
    url = own_pg_cluster.create_database()
    await migrate_url(url)
    context = BrokerContext(account="p", data_dir=tmp_path, database=SharedDatabase(url))
    broker = PaperBroker.from_settings({}, context)
    await broker.start()
    try:
        await broker.place(order("before", price=Decimal(10)))
        own_pg_cluster.stop()
        with pytest.raises(BrokerUnavailableError, match="nothing was done"):
            await broker.place(order("during", price=Decimal(10)))
        assert not (await broker.health()).ok
        own_pg_cluster.start()
        await broker.place(order("after", price=Decimal(10)))
        assert [o.client_order_id for o in await broker.orders()] == ["before", "after"]
        assert (await broker.health()).ok
    finally:
        await broker.aclose()


async def test_a_frozen_instance_holding_the_accounts_lock_blocks_it_for_seconds_only(
    instances: Callable[..., Any], url: str
) -> None:
    """An instance frozen inside a paper transaction (SIGSTOP, a stalled VM) holds the account's lock; the server
    ends its idle transaction after `IDLE_IN_TRANSACTION_S`, so the other instance places again: its attempts
    meanwhile fail cleanly (nothing done), never wait forever. The frozen one's COMMIT then fails."""
    frozen = await asyncio.to_thread(PostgresTables.connect, url, "practice")
    transaction = frozen.write()
    await asyncio.to_thread(transaction.__enter__)  # the lock taken, then nothing: frozen
    b = await instances("b")
    refused, last = 0, ""
    try:
        async with asyncio.timeout(IDLE_IN_TRANSACTION_S + 3 * PG_TIMEOUT_S):
            while True:  # each attempt waits for the lock at most PG_TIMEOUT_S
                try:
                    placed = await b.place(order("after-freeze", price=Decimal(2900)))
                    break
                except BrokerUnavailableError as e:
                    refused += 1
                    last = str(e)
        assert placed.state is OrderState.FILLED
        assert refused >= 1  # the lock did hold while the holder's transaction lived
        assert "nothing was done" in last
        with pytest.raises(BrokerUnknownOutcomeError):
            await asyncio.to_thread(transaction.__exit__, None, None, None)
    finally:
        await asyncio.to_thread(frozen.close)


async def test_behind_a_frozen_holder_an_order_fails_unsent_within_the_hosts_broker_timeout(
    instances: Callable[..., Any], url: str
) -> None:
    """Through the host's own timeout guard (default `broker_timeout_s`): the wait for the account's lock ends
    before the guard gives up, so the order is reported not placed (nothing was done), never an unknown outcome
    whose `lookup()` would queue behind the blocked place and leave the alert neither placed nor retried."""
    frozen = await asyncio.to_thread(PostgresTables.connect, url, "practice")
    transaction = frozen.write()
    await asyncio.to_thread(transaction.__enter__)  # the lock taken, then nothing: frozen
    b = await instances("b")
    guarded = GuardedBroker(b, account="practice", plugin="paper", timeout_s=BROKER_TIMEOUT_S)
    try:
        with pytest.raises(BrokerUnavailableError, match="nothing was done"):
            await guarded.place(order("behind-frozen", price=Decimal(2900)))
        assert await guarded.lookup("behind-frozen") is None  # answered, not timed out: nothing was placed
    finally:
        await asyncio.to_thread(frozen.close)
    assert [o.client_order_id for o in await b.orders()] == []


async def test_the_first_order_after_a_database_restart_is_placed(own_pg_cluster: PgCluster, tmp_path: Path) -> None:
    """The connection the restart dropped is only seen as closed when used: the first order reconnects and is
    placed (no statement had run, so retrying is safe), rather than failing an alert TradingView never resends."""
    url = own_pg_cluster.create_database()
    await migrate_url(url)
    context = BrokerContext(account="p", data_dir=tmp_path, database=SharedDatabase(url))
    broker = PaperBroker.from_settings({}, context)
    await broker.start()
    try:
        await broker.place(order("before", price=Decimal(10)))
        assert (await broker.health()).ok  # health's own connection opened too
        await asyncio.to_thread(own_pg_cluster.stop)
        await asyncio.to_thread(own_pg_cluster.start)
        placed = await broker.place(order("after", price=Decimal(10)))
        assert (placed.order_id, placed.state) == ("PAPER-000002", OrderState.FILLED)
        assert (await broker.health()).ok  # its own connection, dropped too, reconnects for the read
        assert [o.client_order_id for o in await broker.orders()] == ["before", "after"]
    finally:
        await broker.aclose()


async def test_orders_waiting_behind_a_frozen_holder_do_not_make_the_instance_unhealthy(
    instances: Callable[..., Any], url: str
) -> None:
    """A burst of alerts queued behind a frozen instance's account lock: `health()` still answers within its
    bound (own connection), so one frozen instance does not pull every healthy one out of the proxies' rotation."""
    b = await instances("b")
    await b.place(order("resting", order_type=OrderType.LIMIT, price=Decimal(100)))  # below the price: rests
    frozen = await asyncio.to_thread(PostgresTables.connect, url, "practice")
    transaction = frozen.write()
    await asyncio.to_thread(transaction.__enter__)
    try:
        burst = [b.place(order(f"burst-{i}", price=Decimal(2900))) for i in range(4)]
        # gather starts them in order: the places are queued on the worker first, as when alerts came in first
        *outcomes, health = await asyncio.gather(*burst, b.health(), return_exceptions=True)
    finally:
        await asyncio.to_thread(frozen.close)
    assert isinstance(health, Health)
    assert health.ok, health.detail
    assert "1 resting order(s)" in health.detail
    assert all(isinstance(o, BrokerUnavailableError) for o in outcomes)


async def test_the_import_refuses_while_a_sqlite_server_still_serves_the_file(
    instances: Callable[..., Any], tmp_path: Path
) -> None:
    """An instance still serving the account on SQLite would go on writing orders into a file already read and
    renamed (its WAL under the old name): the import refuses, saying to stop it, and touches nothing. Once it is
    stopped the import takes every order, and leaves no -wal or -shm file behind."""
    serving = PaperBroker.from_settings({"prices": PRICES}, BrokerContext(account="practice", data_dir=tmp_path / "a"))
    await serving.start()
    await serving.place(order("old-1", price=Decimal(2900)))
    path = tmp_path / "a" / "paper-practice.sqlite3"
    try:
        with pytest.raises(BrokerUnavailableError, match="stop the tvbridge serving it on SQLite"):
            await instances("a")
        assert path.exists()
        assert not path.with_name(path.name + ".imported").exists()
        await serving.place(order("old-2", price=Decimal(2900)))  # still its book: nothing was taken from it
    finally:
        await serving.aclose()
    a = await instances("a")
    assert [o.client_order_id for o in await a.orders()] == ["old-1", "old-2"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["paper-practice.sqlite3.imported"]
