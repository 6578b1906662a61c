"""Issue 22: a one-leg paper alert costs ONE journal commit in all: the alert, its plan, the book's order, the leg's
result, the final status and the answer (`alerts/joined.py`, `Executor._finish_joined`); its order log row follows
the commit, and the alert's "order log row pending" mark is cleared by the next write's transaction.

Checked where a user sees it: the journal's rows (read back from the file and compared with the two-write path's),
the commits counted, the order log, `GET /alerts/<id>`, the answer to a repeat, and real `kill -9` of a real
`tvbridge serve` between the commit and the row, and after the row before the mark's clearing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import sqlite3
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from durability_server import ADMIN_TOKEN, KillableServer, alert_record, journal_rows, order_log, post_alert
from helpers import ClientFactory, alert, leg, with_accounts
from test_crash_recovery import seed, seed_on_failure  # noqa: F401 - `seed` is a fixture, used by name

from tvbridge.alerts.records import AlertEntry, Finished, LegEntry
from tvbridge.broker import BrokerUnknownOutcomeError, OrderRequest
from tvbridge.config import RiskConfig
from tvbridge.halt import halt_path, set_halt
from tvbridge.journal import Journal
from tvbridge.keys import CONFIG, EXECUTOR, JOURNAL
from tvbridge_brokers.paper import PaperBroker

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from aiohttp.test_utils import TestClient
    from aiohttp.web import Application, Request

    from tvbridge.config import Config

PAPER_ENV = {"TVBRIDGE_ROUTING__ACCOUNTS": '["paper"]'}
PAPER_TOML = '[accounts.paper]\nbroker = "paper"\n[accounts.paper.prices]\nRELIANCE = 100\nINFY = 100\n'


@pytest.fixture(autouse=True)
def _sqlite_only(store_env: dict[str, str]) -> None:
    if store_env:
        pytest.skip("the paper book joins the SQLite journal only")


def stored(data_dir: Path, alert_id: str) -> dict[str, Any]:
    """The alert's journal rows as `record_results` (or the one commit) left them, read from the file: the
    alert's status and answer (without its timestamp), every column of its legs but the write times; the alert's
    own id replaced, so two alerts' rows compare."""
    conn = sqlite3.connect(data_dir / "tvbridge.sqlite3")
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT status, response FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
        legs = conn.execute(
            "SELECT account, leg_number, client_order_id, state, order_id, message, result, order_state,"
            " filled_quantity, average_price, order_message, bracket FROM legs WHERE alert_id = ?"
            " ORDER BY account, leg_number",
            (alert_id,),
        ).fetchall()
    finally:
        conn.close()
    response = json.loads(row["response"])
    response.pop("timestamp")
    found = {
        "status": row["status"],
        "response": response,
        "legs": [{**dict(leg), "result": json.loads(leg["result"])} for leg in legs],
    }
    same: dict[str, Any] = json.loads(json.dumps(found).replace(alert_id, "<alert id>"))
    return same


def marks(data_dir: Path, name: str = "tvbridge.sqlite3") -> dict[str, int]:
    """Alerts whose order log row may be missing (`order_log_pending`), by id."""
    conn = sqlite3.connect(data_dir / name)
    try:
        rows = conn.execute("SELECT alert_id, order_log_pending FROM alerts WHERE order_log_pending IS NOT NULL")
        return dict(rows.fetchall())
    finally:
        conn.close()


def book_orders(data_dir: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(data_dir / "tvbridge.sqlite3")
    try:
        rows = conn.execute("SELECT client_order_id, state FROM paper_orders ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(row[0], row[1]) for row in rows]


def commits(client: TestClient[Request, Application]) -> int:
    journal = client.app[JOURNAL]
    assert isinstance(journal, Journal)
    return journal.database.batches


async def posted(client: TestClient[Request, Application], body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The answer to `body`, and how many journal commits it cost (its results handed over committed too)."""
    journal = client.app[JOURNAL]
    assert isinstance(journal, Journal)
    before = commits(client)
    response = await client.post("/webhook", json=body)
    assert response.status == 200
    answer = await response.json()
    await journal.settle()
    return answer, commits(client) - before


async def warmed(client: TestClient[Request, Application]) -> None:
    """One alert through first: what a server writes once after its start (the closed-market queue's first look)
    is not counted as an alert's commit."""
    await posted(client, alert(leg(symbol="SBIN", quantity="1", price="100")))


def two_writes(client: TestClient[Request, Application], monkeypatch: pytest.MonkeyPatch) -> None:
    """This app's executor settles nothing inside the commit: every alert takes the two-write path."""
    monkeypatch.setattr(client.app[EXECUTOR], "_finish_joined", lambda *_, **__: None)


CASES: dict[str, tuple[Callable[[], dict[str, Any]], RiskConfig]] = {
    # built when the test runs: a leg's `meta.timenow` is the moment it is built (made at import, the alert would
    # be stale by the time a full run reaches the test)
    "filled, with a warning": (lambda: alert(leg(symbol="INFY", price="100"), comment="unknown key"), RiskConfig()),
    "resting limit": (lambda: alert(leg(symbol="INFY", orderType="LMT", price="90")), RiskConfig()),
    "refused by the book": (
        lambda: alert(leg(symbol="INFY", orderType="SL", price="90", triggerPrice="100")),
        RiskConfig(),
    ),
    "refused by the checks": (lambda: alert(leg(symbol="INFY", quantity="50")), RiskConfig(max_qty_per_order=5)),
    "halted inside the commit": (lambda: alert(leg(symbol="INFY", price="100")), RiskConfig()),
}


def halt_before_the_commit(client: TestClient[Request, Application], monkeypatch: pytest.MonkeyPatch) -> None:
    """The kill switch is set after the alert's checks passed, while it waits for its commit (as `tvbridge halt`
    would): the commit reads the halts again and refuses the leg there."""
    journal = client.app[JOURNAL]
    record_plan = journal.record_plan

    async def halt_then_record(entry: Any, **kwargs: Any) -> None:
        set_halt(halt_path(client.app[CONFIG].server.data_dir), reason="stop now", by="test")
        await record_plan(entry, **kwargs)

    monkeypatch.setattr(journal, "record_plan", halt_then_record)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_the_one_commit_writes_the_rows_the_two_writes_do(
    make_client: ClientFactory, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The same alert on two fresh servers, one settling it inside its commit, one with the results written after
    (the path of every other alert): the journal's rows (status, answer, every leg column), the answer, `GET
    /alerts/<id>`, the order log row and a repeat's answer are the same; one commit against two."""
    make_body, risk = CASES[case]
    body = make_body()
    found: dict[str, dict[str, Any]] = {}
    costs: dict[str, int] = {}
    for path in ("one", "two"):
        data_dir = tmp_path / path
        data_dir.mkdir()
        server = attrs.evolve(config.server, data_dir=data_dir, admin_token=ADMIN_TOKEN)
        client = await make_client(attrs.evolve(config, server=server, risk=risk))
        if path == "two":
            two_writes(client, monkeypatch)
        await warmed(client)  # and the daily count read: joins from now
        if "halted" in case:
            halt_before_the_commit(client, monkeypatch)
        answer, costs[path] = await posted(client, body)
        alert_id = answer["alert_id"]
        got = await client.get(f"/alerts/{alert_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert got.status == 200
        record = await got.json()
        # on either path stamped when it was settled, after its arrival (the daily count reads `updated_at`)
        assert record["updated_at"] > record["received_at"], (path, record)
        assert all(lg["updated_at"] > record["received_at"] for lg in record["legs"]), (path, record["legs"])
        repeat = await (await client.post("/webhook", json=body)).json()
        await client.close()
        row = next(r for r in order_log(data_dir) if r["alert_id"] == alert_id)
        found[path] = json.loads(
            json.dumps(
                {
                    "rows": stored(data_dir, alert_id),
                    "answer": {k: v for k, v in answer.items() if k != "timestamp"},
                    "record": {
                        "status": record["status"],
                        "response": {k: v for k, v in record["response"].items() if k != "timestamp"},
                        "legs": [
                            {k: v for k, v in leg.items() if k not in {"updated_at", "order_updated_at"}}
                            for leg in record["legs"]
                        ],
                    },
                    "repeat": {k: v for k, v in repeat.items() if k not in {"timestamp", "alert_id"}},
                    "order log": {k: v for k, v in row.items() if k != "timestamp"},
                }
            ).replace(alert_id, "<alert id>")
        )
        assert marks(data_dir) == {}  # cleared at the clean stop
    assert found["one"] == found["two"]
    assert found["one"]["repeat"]["status"] == "duplicate"
    assert found["one"]["answer"]["warnings"] == (["comment: unknown key, ignored"] if "warning" in case else [])
    assert costs == {"one": 1, "two": 2}
    if "halted" in case:
        assert found["one"]["answer"]["results"][0]["message"] == "trading halted (stop now): nothing was sent"


async def test_two_paper_accounts_one_leg_is_one_commit(make_client: ClientFactory, config: Config) -> None:
    """Two paper accounts, one leg: both legs are joined first legs, so the alert is still one commit, and the
    journal holds both results, the final status and the answer given."""
    config = with_accounts(config, {"paper": {"broker": "paper"}, "practice": {"broker": "paper"}})
    client = await make_client(config)
    await warmed(client)
    answer, cost = await posted(client, alert(leg(symbol="INFY", price="100")))
    assert cost == 1
    assert [(r["account"], r["status"]) for r in answer["results"]] == [("paper", "success"), ("practice", "success")]
    rows = stored(config.server.data_dir, answer["alert_id"])
    assert rows["status"] == "success"
    assert [(leg["account"], leg["state"]) for leg in rows["legs"]] == [("paper", "placed"), ("practice", "placed")]
    assert rows["response"]["results"] == json.loads(
        json.dumps(answer["results"]).replace(answer["alert_id"], "<alert id>")
    )


async def test_the_one_commit_inserts_each_row_once(make_client: ClientFactory, config: Config) -> None:
    """The paper book is booked BEFORE the alert's rows (`records.SettlingJoin`): the alert's row goes in with its
    final status and answer, and its leg's with its result, each one INSERT; no UPDATE of either in the commit
    (an INSERT then an UPDATE of the same rows cost ~30 us per alert, issue 22). What the rows hold is the two-write
    path's (`test_the_one_commit_writes_the_rows_the_two_writes_do`)."""
    client = await make_client(config)
    await warmed(client)
    journal = client.app[JOURNAL]
    assert isinstance(journal, Journal)
    statements: list[str] = []
    await journal.database.read(lambda conn: conn.set_trace_callback(statements.append))
    try:
        answer, cost = await posted(client, alert(leg(symbol="INFY", price="100")))
    finally:
        await journal.database.read(lambda conn: conn.set_trace_callback(None))
    assert cost == 1
    assert answer["status"] == "success"
    words = [" ".join(statement.split()[:3]) for statement in statements]
    assert words.count("INSERT INTO alerts") == 1
    assert words.count("INSERT INTO legs") == 1
    assert [w for w in words if w.startswith("UPDATE legs")] == []
    updates = [s for s in statements if s.startswith("UPDATE alerts")]
    assert all(s.startswith("UPDATE alerts SET order_log_pending = NULL") for s in updates)  # the previous alert's
    rows = stored(config.server.data_dir, answer["alert_id"])
    assert rows["status"] == "success"
    assert [(leg["state"], leg["order_state"]) for leg in rows["legs"]] == [("placed", "filled")]


async def test_the_mark_is_cleared_by_the_next_alerts_commit(make_client: ClientFactory, config: Config) -> None:
    """After its commit and its order log row, an alert stays marked until the next write: the next alert's
    commit clears it (and marks that alert), with no commit of its own; a clean stop clears the last one."""
    client = await make_client(config)
    data_dir = config.server.data_dir
    await warmed(client)
    first, cost = await posted(client, alert(leg(symbol="INFY", price="100")))
    assert cost == 1
    assert [r["alert_id"] for r in order_log(data_dir)][1:] == [first["alert_id"]]
    assert marks(data_dir) == {first["alert_id"]: 1}
    second, cost = await posted(client, alert(leg(symbol="TCS", price="100")))
    assert cost == 1
    assert marks(data_dir) == {second["alert_id"]: 1}
    await client.close()
    assert marks(data_dir) == {}


async def test_paths_that_keep_two_writes(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A two-leg alert (its second leg is marked `sending` and booked after the commit) and an unknown outcome
    (only `lookup()`, after the commit, can settle it) keep the results' own write: more than one commit, and the
    alert is never marked (its order log row is written before its final status, as before)."""
    client = await make_client(config)
    data_dir = config.server.data_dir
    await warmed(client)
    two_legs = alert(leg(symbol="INFY", price="100"), leg(symbol="TCS", price="100", sort_order="2"))
    answer, cost = await posted(client, two_legs)
    assert [r["status"] for r in answer["results"]] == ["success", "success"]
    assert cost == 4  # the alert with leg 1's order; leg 2's `sending` mark; leg 2's booking; the results
    assert stored(data_dir, answer["alert_id"])["status"] == "success"
    assert marks(data_dir) == {}

    def unknown(self: PaperBroker, conn: sqlite3.Connection, request: OrderRequest) -> Any:
        raise BrokerUnknownOutcomeError("the line went quiet")

    monkeypatch.setattr(PaperBroker, "place_joined", unknown)
    answer, cost = await posted(client, alert(leg(symbol="WIPRO", price="100")))
    (result,) = answer["results"]
    assert result["status"] == "unknown"
    assert cost == 2  # the alert; the results after the lookup
    rows = stored(data_dir, answer["alert_id"])
    assert (rows["status"], rows["legs"][0]["state"]) == ("failed", "unknown")
    assert marks(data_dir) == {}


async def test_an_older_journal_gets_the_mark_column(tmp_path: Path) -> None:
    """A journal from before one-commit alerts (no `order_log_pending`) is given the column at open; its alerts
    are not marked."""
    path = tmp_path / "journal.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE alerts (alert_id TEXT PRIMARY KEY, received_at TEXT NOT NULL, alert_type TEXT NOT NULL,"
        " dedupe_key TEXT, source TEXT, payload TEXT NOT NULL, status TEXT NOT NULL, response TEXT,"
        " updated_at TEXT NOT NULL, order_log_offset INTEGER, strategy TEXT)"
    )
    conn.execute(
        "INSERT INTO alerts VALUES ('old', 't', 'multi_leg_order', NULL, NULL, '{}', 'success', NULL, 't', 0, NULL)"
    )
    conn.commit()
    conn.close()
    journal = Journal(path)
    await journal.open()
    try:
        assert await journal.pending_order_log() == []
        record = await journal.get_alert("old")
        assert record is not None
        assert record["status"] == "success"
    finally:
        await journal.close()


async def start(data_dir: Path, env: dict[str, str], name: str) -> KillableServer:
    return await asyncio.to_thread(KillableServer(data_dir, env, name=name).start)


@pytest.mark.parametrize(
    ("point", "written"),
    [("after_send", ["paper#1"]), ("before_order_log", ["paper#1"]), ("after_order_log", None)],
)
async def test_killed_between_the_commit_and_the_marks_clearing(
    tmp_path: Path, point: str, written: list[str] | None
) -> None:
    """SIGKILL after the one commit: as the executor reads the booking's outcome (`after_send`: the same state as
    `before_order_log`), before the order log row, or after it and before the mark is cleared (`after_order_log`). The alert is finished and marked in the file; the restart places and
    looks up nothing, writes the row only when it is missing: one order in the book, one row in the log, the
    journal finished and unmarked, and a repeat of the alert after the restart answers the first answer."""
    (tmp_path / "config.toml").write_text(PAPER_TOML)
    body = alert(leg(symbol="INFY", quantity="3"))
    server = await start(tmp_path, {**PAPER_ENV, "TVBRIDGE_TEST_CRASH_AT": point}, "crashing")
    assert await post_alert(server.url, body) is None
    assert await asyncio.to_thread(server.wait, 10) == -9
    alerts, legs, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    (alert_id,) = alerts
    assert (alerts[alert_id], legs[alert_id, 1]) == ("success", "placed")
    assert marks(tmp_path) == {alert_id: 1}
    assert len(order_log(tmp_path)) == (1 if point == "after_order_log" else 0)

    restarted = await start(tmp_path, PAPER_ENV, "restarted")
    events = restarted.events()
    assert [e["event"] for e in events if e["event"].startswith(("recovery.alert", "recovery.leg", "leg."))] == []
    (rows,) = (e for e in events if e["event"] == "recovery.order_log_rows")
    assert (rows["alert_id"], rows["written"]) == (alert_id, written)
    record = await alert_record(restarted.url, alert_id)
    assert (record["status"], [leg["state"] for leg in record["legs"]]) == ("success", ["placed"])
    first_answer = record["response"]
    outcome = await post_alert(restarted.url, body)
    assert outcome is not None
    status, repeat = outcome
    assert (status, repeat["status"], repeat["duplicate_of"], repeat["first_status"]) == (
        200,
        "duplicate",
        alert_id,
        "success",
    )
    assert repeat["results"] == first_answer["results"]
    assert await asyncio.to_thread(restarted.terminate) == 0

    assert book_orders(tmp_path) == [(f"{alert_id}-1", "filled")]
    logged = order_log(tmp_path)
    assert [(r["alert_id"], r["leg_number"], r["account"], r["status"]) for r in logged] == [
        (alert_id, "1", "paper", "success")
    ]
    assert logged[0]["order_id"] == first_answer["results"][0]["order_id"]
    alerts, legs, integrity = journal_rows(tmp_path)
    assert (alerts, legs, integrity) == ({alert_id: "success"}, {(alert_id, 1): "placed"}, "ok")
    assert marks(tmp_path) == {}


async def test_random_kills_of_one_commit_alerts(tmp_path: Path, seed: int) -> None:  # noqa: F811 - the fixture
    """Bursts of one-leg paper alerts (each one commit), each cut by SIGKILL at a random moment or at a random hit
    of a crash point around the commit and the order log row, each followed by a restart: every alert answered
    2xx is booked once and has one order log row; no order and no row without its alert; nothing unfinished or
    marked at the end."""
    (tmp_path / "config.toml").write_text(PAPER_TOML)
    rng = random.Random(seed)  # noqa: S311 - a test schedule, not a secret
    points = ["in_join", "after_record", "after_send", "before_order_log", "after_order_log"]
    answered: set[str] = set()
    with seed_on_failure(seed):
        for round_ in range(3):
            crash = (
                {"TVBRIDGE_TEST_CRASH_AT": f"{rng.choice(points)}:{rng.randint(5, 40)}"} if rng.random() < 0.6 else {}
            )
            server = await start(tmp_path, {**PAPER_ENV, **crash}, f"round{round_}")
            semaphore = asyncio.Semaphore(6)

            async def one(
                i: int, url: str = server.url, gate: asyncio.Semaphore = semaphore
            ) -> tuple[int, dict[str, Any]] | None:
                async with gate:
                    return await post_alert(url, alert(leg(symbol="INFY", quantity=str(i + 1))))

            burst = asyncio.gather(*(one(round_ * 100 + i) for i in range(50)))
            if crash:  # the server kills itself at the point, or the burst ends without reaching it
                outcomes = await asyncio.wait_for(burst, 60)
            else:
                task = asyncio.ensure_future(burst)
                await asyncio.sleep(rng.uniform(0.05, 0.5))  # the random kill moment, not a wait for a result
                server.kill()
                outcomes = await asyncio.wait_for(task, 60)
            server.kill()
            answered |= {o[1]["alert_id"] for o in outcomes if o is not None and 200 <= o[0] < 300}
        final = await start(tmp_path, PAPER_ENV, "final")
        assert await asyncio.to_thread(final.terminate) == 0
        assert answered
        alerts, legs, integrity = journal_rows(tmp_path)
        assert integrity == "ok"
        assert [a for a, status in alerts.items() if status == "accepted"] == []
        assert marks(tmp_path) == {}
        booked = collections.Counter(cid for cid, _ in book_orders(tmp_path))
        assert [cid for cid, n in booked.items() if n > 1] == []
        assert {cid.rsplit("-", 1)[0] for cid in booked} <= set(alerts)
        rows = collections.Counter((r["alert_id"], r["leg_number"], r["account"]) for r in order_log(tmp_path))
        assert [key for key, n in rows.items() if n > 1] == []
        assert {a for a, _, _ in rows} == set(alerts)
        for alert_id in answered:
            assert booked[f"{alert_id}-1"] == 1
            assert rows[alert_id, "1", "paper"] == 1
            assert (alerts[alert_id], legs[alert_id, 1]) == ("success", "placed")


async def test_many_marks_waiting_get_a_commit_of_their_own(tmp_path: Path) -> None:
    """Alerts finished in their own commit, their rows written, and no later write to carry the clearing of their
    marks: up to 255 they wait (no commit); the 256th gets them one commit, and none is marked after it."""
    journal = Journal(tmp_path / "journal.sqlite3")
    await journal.open()
    try:
        finished = Finished(status="success", response={"status": "success"}, results=())
        ids = [f"A{i}" for i in range(256)]
        await asyncio.gather(*(journal.record_plan(entry(alert_id), join=lambda _: finished) for alert_id in ids))
        assert len(marks(tmp_path, "journal.sqlite3")) == 256
        before = journal.database.batches
        for alert_id in ids[:255]:
            journal.order_log_written(alert_id)
        await journal.settle()
        assert (journal.database.batches - before, len(marks(tmp_path, "journal.sqlite3"))) == (0, 256)
        journal.order_log_written(ids[255])
        await journal.settle()
        assert (journal.database.batches - before, marks(tmp_path, "journal.sqlite3")) == (1, {})
    finally:
        await journal.close()


def entry(alert_id: str) -> AlertEntry:
    return AlertEntry(
        alert_id=alert_id,
        alert_type="multi_leg_order",
        payload={"alertType": "multi_leg_order"},
        dedupe_key=None,
        source=None,
        order_log_offset=0,
        legs=(LegEntry(account="paper", leg_number=1, client_order_id=f"{alert_id}-1", state="sending"),),
    )
