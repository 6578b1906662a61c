"""A joining plugin cannot end the journal's transaction, however it spells it (`alerts/joined.py`: `JoinGuard`).

`place_joined` runs inside the transaction that records the alert. A plugin statement that commits, rolls back,
begins, or releases the host's savepoint would commit the alert half-written (or lose the host's savepoint) and
make the webhook answer 503 "not recorded" for an alert that is on disk, which recovery then sends. SQLite's own
authorizer refuses such statements while the plugin runs, whatever their spelling; the checks here are what a
trader sees: the answer, the journal's record, the book and the order log.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Literal

import attrs
import pytest
from helpers import alert, leg

from tvbridge.keys import JOURNAL
from tvbridge_brokers.paper import PaperBroker

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.broker import OrderRequest
    from tvbridge.config import Config


@pytest.fixture(autouse=True)
def _sqlite_only(store_env: dict[str, str]) -> None:
    if store_env:
        pytest.skip("the paper book joins the SQLite journal only")


def rows(config: Config, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(config.data_path("tvbridge.sqlite3"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [tuple(row) for row in conn.execute(sql)]
    finally:
        conn.close()


BYPASSES = {
    "commit": "COMMIT",
    "leading semicolon": ";COMMIT",
    "semicolon and space": "; COMMIT",
    "byte-order mark": "\ufeffCOMMIT",
    "comment": "/**/COMMIT",
    "line comment": "-- done\nCOMMIT",
    "end": "END",
    "end transaction": "end transaction",
    "rollback": "ROLLBACK",
    "begin": "BEGIN",
    "release the host's savepoint": "RELEASE joined_leg",
    "release it, quoted": 'RELEASE "JOINED_LEG"',
    "rollback to the host's savepoint": "ROLLBACK TO joined_leg",
    "release the group's savepoint": "RELEASE job",
}


THROUGH_THE_CURSOR = {
    # a statement's answer is rows, not a cursor: the cursor's `execute` or `connection` would run the host's own
    # COMMIT (or RELEASE), compiled while allowed and kept in sqlite3's statement cache, past the authorizer
    "cursor.execute": lambda rows: rows.execute("COMMIT"),
    "cursor.connection": lambda rows: rows.connection.execute("COMMIT"),
    "cursor.connection, release": lambda rows: rows.connection.execute("RELEASE joined_leg"),
    "cursor.executescript": lambda rows: rows.executescript("COMMIT"),
    "iter(rows).execute": lambda rows: iter(rows).execute("COMMIT"),  # iter(cursor) is the cursor itself
}


@pytest.mark.parametrize(
    ("how", "synchronous"),
    [
        *((how, "normal") for how in [*BYPASSES, *THROUGH_THE_CURSOR, "executescript", "commit()"]),
        ("leading semicolon", "full"),  # the journal's connection on a thread of its own
        ("commit", "full"),
        ("release the host's savepoint", "full"),
    ],
)
async def test_a_plugin_cannot_end_the_alerts_transaction_however_spelled(
    make_client: ClientFactory,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    synchronous: Literal["normal", "full"],
) -> None:
    """After a first alert (so the host's own COMMIT and savepoint statements are in sqlite3's statement cache),
    a joining plugin tries to end the alert's transaction, then books its order as if nothing happened. The
    statement is refused before it runs: the alert is answered 200 and recorded, its leg failed or unknown (the
    plugin's error), nothing of the second alert is booked, and the journal has both alerts."""
    config = attrs.evolve(config, journal=attrs.evolve(config.journal, synchronous=synchronous))
    client = await make_client(config)
    first = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    assert first.status == 200
    first_id = (await first.json())["alert_id"]
    booked = PaperBroker.place_joined

    def tries(self: PaperBroker, conn: Any, request: OrderRequest) -> Any:
        if how == "executescript":
            conn.executescript("COMMIT")
        elif how == "commit()":
            conn.commit()
        elif how in THROUGH_THE_CURSOR:
            THROUGH_THE_CURSOR[how](conn.execute("SELECT 1"))
        else:
            conn.execute(BYPASSES[how])
        return booked(self, conn, request)

    monkeypatch.setattr(PaperBroker, "place_joined", tries)
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100", quantity="3")))
    assert response.status == 200, await response.text()
    body = await response.json()
    (result,) = body["results"]
    assert result["status"] in {"failed", "unknown"}, result
    journal: Any = client.app[JOURNAL]  # the SQLite journal: `settle()` waits for the results handed over
    await journal.settle()
    record = await journal.get_alert(body["alert_id"])
    assert record is not None
    assert (record["status"], record["legs"][0]["state"]) == (body["status"], result["status"])
    assert rows(config, "SELECT client_order_id FROM paper_orders") == [(f"{first_id}-1",)]
    assert rows(config, "SELECT alert_id FROM alerts ORDER BY received_at") == [(first_id,), (body["alert_id"],)]


async def test_the_plugins_own_savepoints_and_statements_still_run(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard refuses only what ends the transaction or touches the host's savepoints: a plugin's own
    SAVEPOINT, ROLLBACK TO and RELEASE (the paper book writes in one), with a statement ending in `;`, run; the
    order is booked with its alert."""
    booked = PaperBroker.place_joined

    def own_savepoint(self: PaperBroker, conn: Any, request: OrderRequest) -> Any:
        conn.execute("SAVEPOINT mine;")
        conn.execute("ROLLBACK TO mine")
        conn.execute("RELEASE mine")
        return booked(self, conn, request)

    monkeypatch.setattr(PaperBroker, "place_joined", own_savepoint)
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "success", body
    assert rows(config, "SELECT client_order_id FROM paper_orders") == [(f"{body['alert_id']}-1",)]


@pytest.mark.parametrize(
    "statement",
    [
        "PRAGMA query_only = 1",
        "PRAGMA locking_mode = EXCLUSIVE",
        "PRAGMA busy_timeout = 0",
        "PRAGMA writable_schema = ON",
        "ATTACH DATABASE ':memory:' AS elsewhere",
    ],
)
async def test_a_plugin_cannot_change_the_journals_connection_for_later_alerts(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch, statement: str
) -> None:
    """A PRAGMA that sets a value, or an ATTACH, outlives the plugin's call on the journal's connection (with
    `query_only` every later alert's write fails: 503 for every alert after it). Refused: that alert's leg fails
    (nothing booked), and the next alert is recorded and booked as usual. A PRAGMA that only reads still runs."""
    client = await make_client(config)
    assert (await client.post("/webhook", json=alert(leg(symbol="INFY", price="100", quantity="1")))).status == 200
    booked = PaperBroker.place_joined
    reads: list[Any] = []

    def tries(self: PaperBroker, conn: Any, request: OrderRequest) -> Any:
        reads.append(conn.execute("PRAGMA table_info(alerts)").fetchone())
        reads.append(conn.execute("PRAGMA busy_timeout").fetchone())
        conn.execute(statement)
        return booked(self, conn, request)

    with monkeypatch.context() as patched:
        patched.setattr(PaperBroker, "place_joined", tries)
        refused = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100", quantity="2")))
        assert refused.status == 200, await refused.text()
        (result,) = (await refused.json())["results"]
        assert result["status"] in {"failed", "unknown"}, result
    assert len(reads) == 2
    assert all(row is not None for row in reads)
    after = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100", quantity="3")))
    assert after.status == 200, await after.text()
    body = await after.json()
    assert body["status"] == "success", body
    journal: Any = client.app[JOURNAL]
    await journal.settle()
    assert rows(config, "SELECT quantity FROM paper_orders ORDER BY rowid") == [(1,), (3,)]


async def test_a_connection_kept_past_the_call_runs_nothing(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin that keeps the connection it got in `place_joined` (for `health()`, a task) can run nothing with
    it afterwards: outside the call no check applies (a `PRAGMA query_only = 1` there failed every later alert),
    and a COMMIT compiled there would be reused unchecked inside the next call. Every statement raises; the next
    alert whose plugin tries that COMMIT is still recorded, and nothing of it is booked."""
    client = await make_client(config)
    booked = PaperBroker.place_joined
    kept: list[Any] = []

    def keeps(self: PaperBroker, conn: Any, request: OrderRequest) -> Any:
        kept.append(conn)
        return booked(self, conn, request)

    with monkeypatch.context() as patched:
        patched.setattr(PaperBroker, "place_joined", keeps)
        first = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100", quantity="1")))
        assert first.status == 200
    first_id = (await first.json())["alert_id"]
    for statement in ("PRAGMA query_only = 1", "COMMIT", "SELECT 1"):
        with pytest.raises(sqlite3.ProgrammingError, match="only during its place_joined call"):
            kept[0].execute(statement)
    with pytest.raises(sqlite3.ProgrammingError, match="only during its place_joined call"):
        kept[0].executemany("SELECT ?", [(1,)])

    def commits(self: PaperBroker, conn: Any, request: OrderRequest) -> Any:
        conn.execute("COMMIT")
        return booked(self, conn, request)

    monkeypatch.setattr(PaperBroker, "place_joined", commits)
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100", quantity="2")))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["results"][0]["status"] in {"failed", "unknown"}
    journal: Any = client.app[JOURNAL]
    await journal.settle()
    assert rows(config, "SELECT client_order_id FROM paper_orders") == [(f"{first_id}-1",)]
    assert rows(config, "SELECT alert_id FROM alerts ORDER BY received_at") == [(first_id,), (body["alert_id"],)]
