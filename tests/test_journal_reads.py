"""What the journal gives back: the records `GET /alerts/<id>`, dedupe, crash recovery, order follow-up, the daily
risk count and `/health` read, on a real SQLite file, after the writes the alert path makes.

Each read is checked field by field: these rows are what recovery settles an order from and what a trader sees
for an alert. Several cases were surviving mutants of `tvbridge/journal.py` (docs/testing.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from structlog.testing import capture_logs

from tvbridge.alerts.records import AlertEntry, Finished, LegEntry, SettlingJoin
from tvbridge.errors import JournalError
from tvbridge.journal import Journal, OrderStateRecord, PlannedLeg, leg_state
from tvbridge.keys import JOURNAL
from tvbridge.models import LegResult, LegStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from helpers import ClientFactory

    from tvbridge.config import Config


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    opened = Journal(tmp_path / "journal.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


def result(leg_number: int = 1, account: str = "paper", **fields: Any) -> LegResult:
    base: dict[str, Any] = {
        "leg_number": leg_number,
        "account": account,
        "broker": "paper",
        "symbol": "RELIANCE",
        "exchange": "NSE",
        "transaction": "B",
        "quantity": "10",
        "order_type": "MKT",
        "product_type": "C",
        "price": "0",
        "status": LegStatus.SUCCESS,
        "message": "placed",
        "order_id": f"ord-{account}-{leg_number}",
        "client_order_id": f"cid-{account}-{leg_number}",
        "order_state": "open",
        "filled_quantity": 0,
        "average_price": None,
    }
    return LegResult(**{**base, **fields})


async def record(
    journal: Journal,
    alert_id: str,
    *legs: tuple[str, int],
    dedupe_key: str | None = None,
    offset: int | None = None,
    status: str = "accepted",
) -> None:
    await journal.record_alert(
        alert_id=alert_id,
        alert_type="multi_leg_order",
        payload={"secret": "s3cret", "alertType": "multi_leg_order", "order_legs": [{"symbol": "RELIANCE"}]},
        dedupe_key=dedupe_key,
        source="127.0.0.1",
        legs=[PlannedLeg(account=a, leg_number=n, client_order_id=f"cid-{a}-{n}") for a, n in legs],
        status=status,
        order_log_offset=offset,
    )


async def test_a_recorded_alert_reads_back_whole_without_its_secret(journal: Journal) -> None:
    """`GET /alerts/<id>` right after the alert is journaled: every field, legs sorted by account then number,
    all pending, no response yet, the payload without `secret`."""
    await record(journal, "a1", ("zeta", 1), ("alpha", 2), ("alpha", 1))
    shown = await journal.get_alert("a1")
    assert shown is not None
    received = datetime.fromisoformat(shown["received_at"])
    assert abs(datetime.now(UTC) - received) < timedelta(minutes=1)
    assert shown["updated_at"] == shown["received_at"]
    assert {k: v for k, v in shown.items() if k not in {"received_at", "updated_at", "legs"}} == {
        "alert_id": "a1",
        "alert_type": "multi_leg_order",
        "strategy": "default",
        "status": "accepted",
        "payload": {"alertType": "multi_leg_order", "order_legs": [{"symbol": "RELIANCE"}]},
        "response": None,
    }
    assert [(leg["account"], leg["leg_number"]) for leg in shown["legs"]] == [("alpha", 1), ("alpha", 2), ("zeta", 1)]
    first = shown["legs"][0]
    assert {k: v for k, v in first.items() if k != "updated_at"} == {
        "account": "alpha",
        "leg_number": 1,
        "client_order_id": "cid-alpha-1",
        "state": "pending",
        "order_id": None,
        "order_state": None,
        "filled_quantity": None,
        "average_price": None,
        "order_message": None,
        "order_updated_at": None,
        "message": None,
        "result": None,
        "bracket": [],
    }
    assert await journal.get_alert("nope") is None


async def test_leg_outcomes_read_back_as_their_states(journal: Journal) -> None:
    """Sending, then the broker's answer: the state, order id, message, the result as sent, the order columns."""
    await record(journal, "a1", ("paper", 1), ("paper", 2), ("paper", 3))
    await journal.mark_sending("a1", "paper", 1, None)
    sending = await journal.get_alert("a1")
    assert sending is not None
    assert [leg["state"] for leg in sending["legs"]] == ["sending", "pending", "pending"]

    placed = result(1, filled_quantity=4, average_price="101.5", order_state="partially_filled")
    await journal.mark_sending("a1", "paper", 2, placed)  # the previous leg's result in the same write
    await journal.record_leg("a1", result(2, status=LegStatus.FAILED, message="refused", order_id=None))
    await journal.record_leg("a1", result(3, order_type="CANCEL", message="cancelled 1 order(s)"))
    shown = await journal.get_alert("a1")
    assert shown is not None
    first, second, third = shown["legs"]
    assert (first["state"], first["order_id"], first["message"]) == ("placed", "ord-paper-1", "placed")
    assert (first["order_state"], first["filled_quantity"], first["average_price"]) == ("partially_filled", 4, "101.5")
    assert first["result"] == json.loads(json.dumps(attrs.asdict(placed, recurse=False)))
    assert (second["state"], second["order_id"], second["message"]) == ("failed", None, "refused")
    assert third["state"] == "cancelled"


async def test_a_result_for_an_unplanned_leg_is_kept(journal: Journal) -> None:
    """A leg the plan did not list (a cancel's, a queued alert's) is inserted with its result, not lost."""
    await record(journal, "a1")
    await journal.record_leg("a1", result(7, account="live", average_price="99"))
    shown = await journal.get_alert("a1")
    assert shown is not None
    [only] = shown["legs"]
    assert (only["account"], only["leg_number"], only["state"], only["client_order_id"]) == (
        "live",
        7,
        "placed",
        "cid-live-7",
    )
    assert (only["order_id"], only["order_state"], only["filled_quantity"], only["average_price"]) == (
        "ord-live-7",
        "open",
        0,
        "99",
    )


class Settles(SettlingJoin):
    """A join that settles the alert inside its commit (as the paper book's does): leg 1 with a result that names no
    client order id, leg 2 refused, and a result for a leg the plan did not list."""

    def __init__(self) -> None:
        self.alerts_seen: int | None = None

    def __call__(self, conn: Any) -> Finished | None:
        self.alerts_seen = conn.execute("SELECT count(*) FROM alerts WHERE alert_id = 'a1'").fetchone()[0]
        results = (result(1, client_order_id=None, filled_quantity=10, average_price="101"), result(9, account="x"))
        return Finished(status="success", response={"status": "success", "n": 2}, results=results)

    def settled(self, entry: AlertEntry) -> AlertEntry:
        legs = tuple(
            attrs.evolve(leg, state="failed", message="refused in the commit") if leg.leg_number == 2 else leg
            for leg in entry.legs
        )
        return attrs.evolve(entry, legs=legs)


async def test_a_settling_join_runs_first_and_its_rows_are_inserted_settled(journal: Journal) -> None:
    """`SettlingJoin`: the join runs before the alert's rows (it sees none), then the alert is inserted with the
    final status, the answer and the "order log row pending" mark, each leg with its result (a result without a
    client order id keeps the planned one), a refused leg `failed` with its reason, an unlisted leg's result kept."""
    join = Settles()
    legs = tuple(
        LegEntry(account="paper", leg_number=n, client_order_id=f"cid-paper-{n}", state="sending") for n in (1, 2)
    )
    entry = AlertEntry(
        alert_id="a1", alert_type="single_leg_order", payload={"secret": "s"}, dedupe_key=None, source=None, legs=legs
    )
    await journal.record_plan(entry, join=join)
    assert join.alerts_seen == 0
    shown = await journal.get_alert("a1")
    assert shown is not None
    assert (shown["status"], shown["response"]) == ("success", {"status": "success", "n": 2})
    assert [a["alert_id"] for a in await journal.pending_order_log()] == ["a1"]
    by_leg = {(leg["account"], leg["leg_number"]): leg for leg in shown["legs"]}
    first = by_leg["paper", 1]
    assert (first["state"], first["client_order_id"], first["order_id"], first["message"]) == (
        "placed",
        "cid-paper-1",
        "ord-paper-1",
        "placed",
    )
    assert (first["order_state"], first["filled_quantity"], first["average_price"]) == ("open", 10, "101")
    assert first["result"]["client_order_id"] is None
    second = by_leg["paper", 2]
    assert (second["state"], second["message"], second["result"]) == ("failed", "refused in the commit", None)
    assert (by_leg["x", 9]["state"], by_leg["x", 9]["client_order_id"]) == ("placed", "cid-x-9")


async def test_the_final_write_keeps_what_follow_up_found(journal: Journal) -> None:
    """The alert's final write repeats each leg's placement answer; order follow-up's later view of the order
    (filled, its price) is what stays, and the alert's status and response are stored."""
    await record(journal, "a1", ("paper", 1))
    await journal.record_leg("a1", result(1))
    await journal.set_order_state(
        "a1", "paper", 1, OrderStateRecord(state="filled", filled_quantity=10, average_price="100.25", message="ok")
    )
    await journal.finish_alert("a1", "success", {"status": "success", "results": [1]}, [result(1)])
    shown = await journal.get_alert("a1")
    assert shown is not None
    assert (shown["status"], shown["response"]) == ("success", {"status": "success", "results": [1]})
    [only] = shown["legs"]
    assert (only["order_state"], only["filled_quantity"], only["average_price"], only["order_message"]) == (
        "filled",
        10,
        "100.25",
        "ok",
    )
    assert only["order_updated_at"] is not None


async def test_follow_up_touches_the_alert_and_keeps_bracket_parts(journal: Journal) -> None:
    """A change of an order moves its alert's `updated_at` (the status page's stream watches it); a change
    without parts leaves the stored bracket parts as they were."""
    parts = ({"role": "entry", "order_id": "e1", "state": "open"},)
    await record(journal, "a1", ("paper", 1))
    await journal.record_leg("a1", result(1, bracket=parts))
    before = await journal.get_alert("a1")
    assert before is not None
    assert before["legs"][0]["bracket"] == [dict(parts[0])]
    await journal.set_order_state("a1", "paper", 1, OrderStateRecord(state="open"))
    after = await journal.get_alert("a1")
    assert after is not None
    assert after["updated_at"] > before["updated_at"]
    assert after["legs"][0]["bracket"] == [dict(parts[0])]


async def test_follow_up_work_list(journal: Journal) -> None:
    """Order follow-up resumes placed legs whose order is open, oldest alert first, then account and leg; not
    finished orders, not legs without a client order id, not alerts recovery will run again."""
    await record(journal, "old", ("paper", 2), ("paper", 1), status="success")
    await record(journal, "new", ("paper", 1), status="success")
    await record(journal, "rerun", ("paper", 1))  # still accepted: crash recovery hands it over
    await journal.record_leg("old", result(2, order_state="trigger_pending"))
    await journal.record_leg("old", result(1, order_state="pending"))
    await journal.record_leg("new", result(1, order_state="open"))
    await journal.record_leg("rerun", result(1, order_state="open"))
    await journal.record_leg("new", result(4, order_state="filled"))
    await journal.record_leg("new", result(5, order_state="open", client_order_id=None))
    await journal.record_leg("new", result(6, order_state="open", status=LegStatus.FAILED))
    await journal.record_leg("new", result(8, order_state="filled", bracket=({"role": "target", "state": "open"},)))
    await journal.record_leg(
        "new", result(9, order_state="filled", bracket=({"role": "target", "state": "cancelled"},))
    )
    work = await journal.followed_orders()
    assert [(w["alert_id"], w["leg_number"]) for w in work] == [("old", 1), ("old", 2), ("new", 1), ("new", 8)]
    first = work[0]
    assert {k: v for k, v in first.items() if k != "result"} == {
        "alert_id": "old",
        "account": "paper",
        "leg_number": 1,
        "client_order_id": "cid-paper-1",
        "order_id": "ord-paper-1",
        "order_state": "pending",
        "filled_quantity": 0,
        "average_price": None,
        "bracket": [],
    }
    assert first["result"]["order_id"] == "ord-paper-1"
    assert work[3]["bracket"] == [{"role": "target", "state": "open"}]


async def test_dedupe_finds_the_first_copy_in_the_window(journal: Journal) -> None:
    """The first alert with the key at or after `since`, with its answer once there is one; none before."""
    await record(journal, "first", dedupe_key="k")
    await record(journal, "second", dedupe_key="k")
    await record(journal, "other", dedupe_key="j")
    found = await journal.find_by_dedupe_key("k", "2000-01-01")
    assert found == {"alert_id": "first", "status": "accepted", "response": None}
    await journal.finish_alert("first", "success", {"status": "success"})
    assert await journal.find_by_dedupe_key("k", "2000-01-01") == {
        "alert_id": "first",
        "status": "success",
        "response": {"status": "success"},
    }
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert await journal.find_by_dedupe_key("k", later) is None
    assert await journal.find_by_dedupe_key("missing", "2000-01-01") is None


async def test_pruned_keys_no_longer_dedupe(journal: Journal) -> None:
    """Pruning clears the keys of alerts received before the cut, counts them, and keeps the alerts."""
    await record(journal, "a", dedupe_key="k")
    await record(journal, "b", dedupe_key="j")
    await record(journal, "c")
    cut = datetime.now(UTC).isoformat()
    await record(journal, "d", dedupe_key="k")
    assert await journal.prune_dedupe_keys("2000-01-01") == 0
    assert await journal.prune_dedupe_keys(cut) == 2
    assert await journal.get_alert("a") is not None
    assert await journal.prune_dedupe_keys(cut) == 0  # "d" was received after the cut: kept
    found = await journal.find_by_dedupe_key("k", "2000-01-01")
    assert found is not None
    assert found["alert_id"] == "d"


async def test_recovery_work_list_and_where_its_rows_start(journal: Journal) -> None:
    """Unfinished alerts oldest first; their order-log rows start at the smallest offset journaled with them,
    or at 0 (the whole log) when one has none or nothing is unfinished."""
    assert await journal.unfinished() == []
    assert await journal.order_log_start() == 0
    await record(journal, "done", offset=10, status="success")
    await record(journal, "b", offset=300)
    await record(journal, "a", offset=200)
    assert await journal.unfinished() == ["b", "a"]
    assert await journal.order_log_start() == 200
    await record(journal, "c")  # journaled before offsets existed
    assert await journal.order_log_start() == 0
    await journal.finish_alert("c", "success", {})
    await journal.finish_alert("a", "success", {})
    assert await journal.unfinished() == ["b"]
    assert await journal.order_log_start() == 300


async def test_the_daily_count_counts_what_may_be_at_the_broker(journal: Journal) -> None:
    """The risk count: the account's legs sent (or maybe sent) since the cut; not failed, pending or skipped
    legs, not other accounts, not legs before the cut."""
    await record(journal, "a1", ("paper", 1), ("paper", 2), ("paper", 3), ("paper", 4), ("live", 1))
    since = datetime.now(UTC) - timedelta(seconds=5)
    await journal.record_leg("a1", result(1))  # placed
    await journal.mark_sending("a1", "paper", 2, None)  # may be at the broker
    await journal.record_leg("a1", result(3, status=LegStatus.FAILED, order_id=None))
    await journal.record_leg("a1", result(1, account="live", status=LegStatus.UNKNOWN, order_id=None))
    assert await journal.count_orders("paper", since=since) == 2
    assert await journal.count_orders("live", since=since) == 1
    ist = timezone_ist()
    assert await journal.count_orders("paper", since=since.astimezone(ist)) == 2  # the same instant in IST
    assert await journal.count_orders("paper", since=datetime.now(UTC) + timedelta(seconds=5)) == 0


def timezone_ist() -> Any:
    from zoneinfo import ZoneInfo  # noqa: PLC0415 - only this test needs it

    return ZoneInfo("Asia/Kolkata")


async def test_health_reads(tmp_path: Path) -> None:
    """A sound journal passes the integrity check and the write probe; a deleted one fails the probe, says so,
    and is not healthy."""
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path, probe_bytes=4096)
    await journal.open()
    try:
        assert await journal.integrity_ok() is True
        assert await journal.probe() is True
        assert (journal.healthy, journal.problem()) == (True, "")
        with sqlite3.connect(path) as conn:
            [(size,)] = conn.execute("SELECT length(filler) FROM probe").fetchall()
        assert size == 4096  # as large as the largest alert
        path.unlink()
        assert await journal.probe() is False
        assert journal.healthy is False
        assert journal.last_error == f"journal {path} was deleted while tvbridge had it open"
    finally:
        await journal.close()


async def test_a_refused_row_is_not_a_broken_journal(journal: Journal) -> None:
    """The same alert id twice is refused as a bad row; the journal stays healthy and says what was refused."""
    await record(journal, "a1")
    with pytest.raises(JournalError, match="journal refused the write: UNIQUE constraint failed"):
        await record(journal, "a1")
    assert journal.healthy is True


async def test_commit_times_are_reported(journal: Journal) -> None:
    seen: list[float] = []
    journal.observe_commits(seen.append)
    await record(journal, "a1")
    assert len(seen) == 1
    assert 0 <= seen[0] < 60


async def test_a_journal_from_before_follow_up_gets_its_columns(tmp_path: Path) -> None:
    """A journal written by a version without order follow-up or order-log offsets opens: the new columns are
    added, each placed leg's order state is taken from its stored result, and its open orders are followed."""
    path = tmp_path / "journal.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE alerts (alert_id TEXT PRIMARY KEY, received_at TEXT NOT NULL, alert_type TEXT NOT NULL,
                dedupe_key TEXT, source TEXT, payload TEXT NOT NULL, status TEXT NOT NULL, response TEXT,
                updated_at TEXT NOT NULL);
            CREATE TABLE legs (alert_id TEXT NOT NULL, account TEXT NOT NULL, leg_number INTEGER NOT NULL,
                client_order_id TEXT, state TEXT NOT NULL, order_id TEXT, message TEXT, result TEXT,
                updated_at TEXT NOT NULL, PRIMARY KEY (alert_id, account, leg_number));
            """
        )
        stored = json.dumps({"order_id": "o1", "order_state": "open"})
        conn.execute(
            "INSERT INTO alerts VALUES ('old', '2026-01-01T00:00:00+00:00', 'multi_leg_order', NULL, NULL, '{}',"
            " 'success', NULL, '2026-01-01T00:00:00+00:00')"
        )
        conn.execute(
            "INSERT INTO legs VALUES ('old', 'paper', 1, 'c1', 'placed', 'o1', 'placed', ?, '2026-01-01')", (stored,)
        )
        conn.execute(
            "INSERT INTO legs VALUES ('old', 'paper', 2, 'c2', 'failed', NULL, 'no', ?, '2026-01-01')",
            (json.dumps({"order_id": None}),),
        )
    journal = Journal(path)
    await journal.open()
    try:
        work = await journal.followed_orders()
        assert [(w["alert_id"], w["leg_number"], w["order_state"]) for w in work] == [("old", 1, "open")]
        await record(journal, "new", offset=42)
        assert await journal.order_log_start() == 42
        shown = await journal.get_alert("old")
        assert shown is not None
        assert [leg["order_state"] for leg in shown["legs"]] == ["open", None]
    finally:
        await journal.close()
    with sqlite3.connect(path) as conn:
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(legs)")}
    assert "legs_followed" in indexes


@pytest.mark.parametrize(
    ("status", "order_type", "state"),
    [
        (LegStatus.SUCCESS, "MKT", "placed"),
        (LegStatus.SUCCESS, "CANCEL", "cancelled"),
        (LegStatus.UNKNOWN, "MKT", "unknown"),
        (LegStatus.SKIPPED, "CANCEL", "skipped"),
    ],
)
def test_leg_states(status: LegStatus, order_type: str, state: str) -> None:
    assert leg_state(result(status=status, order_type=order_type)) == state


async def test_another_modules_rows_join_the_alerts_transaction(journal: Journal) -> None:
    """`also` writes in the alert's own transaction (the closed-market queue's entries): both are there."""
    await journal.write(lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS queued (alert_id TEXT)"))
    await journal.record_alert(
        alert_id="q1",
        alert_type="single_order",
        payload={},
        dedupe_key=None,
        source=None,
        legs=[],
        status="queued",
        also=lambda conn: conn.execute("INSERT INTO queued VALUES ('q1')"),
    )
    rows = await journal.read(lambda conn: conn.execute("SELECT alert_id FROM queued").fetchall())
    assert [row[0] for row in rows] == ["q1"]
    shown = await journal.get_alert("q1")
    assert shown is not None
    assert shown["status"] == "queued"


async def test_an_answer_with_numbers_and_times_is_stored_as_text(journal: Journal) -> None:
    """The answer kept for `GET /alerts/<id>` may hold prices and times: they are stored as their text."""
    await record(journal, "a1")
    at = datetime(2026, 12, 6, 9, 15, tzinfo=UTC)
    await journal.finish_alert("a1", "success", {"price": Decimal("101.5"), "at": at})
    shown = await journal.get_alert("a1")
    assert shown is not None
    assert shown["response"] == {"price": "101.5", "at": "2026-12-06 09:15:00+00:00"}


async def test_follow_up_replaces_bracket_parts_it_reports(journal: Journal) -> None:
    await record(journal, "a1", ("paper", 1))
    await journal.record_leg("a1", result(1, bracket=({"role": "target", "state": "open"},)))
    now: tuple[dict[str, str | None], ...] = ({"role": "target", "state": "filled"},)
    await journal.set_order_state("a1", "paper", 1, OrderStateRecord(state="filled", bracket=now))
    shown = await journal.get_alert("a1")
    assert shown is not None
    assert shown["legs"][0]["bracket"] == [{"role": "target", "state": "filled"}]


@contextlib.contextmanager
def all_writes_refused(path: Path) -> Iterator[None]:
    """Every descriptor this process has open on `path` (SQLite opens the WAL once per connection) leads to
    /dev/full while inside, so writes fail with ENOSPC as on a full disk; the originals come back afterwards."""
    descriptors = [int(link.name) for link in Path("/proc/self/fd").iterdir() if link.resolve() == path.resolve()]
    assert descriptors, f"{path} is not open"
    saved = {fd: os.dup(fd) for fd in descriptors}
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        for fd in descriptors:
            os.dup2(full, fd)
        yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(full)


async def test_a_full_disk_fails_the_probe(tmp_path: Path) -> None:
    """`/health`'s write probe on a disk that refuses the write: not ready, and the journal is marked unhealthy;
    once the disk takes writes again, the next probe clears it."""
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path, probe_bytes=65536)
    await journal.open()
    try:
        await record(journal, "a1")
        with all_writes_refused(path.with_name(f"{path.name}-wal")):
            assert await journal.probe() is False
        assert journal.healthy is False
        assert journal.last_error.startswith(("OperationalError", "DatabaseError"))
        assert await journal.probe() is True
        assert journal.healthy is True
    finally:
        await journal.close()


async def test_a_damaged_file_fails_the_integrity_check(tmp_path: Path) -> None:
    """A journal whose pages were overwritten (a disk fault) is reported, not called sound."""
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    await journal.open()
    for n in range(200):
        await record(journal, f"a{n}")
    await journal.close()
    damaged = bytearray(path.read_bytes())
    damaged[3 * 4096 : 3 * 4096 + 200] = b"\xab" * 200
    path.write_bytes(bytes(damaged))
    reopened = Journal(path)
    await reopened.open()
    try:
        assert await reopened.integrity_ok() is False
    finally:
        await reopened.close()


@pytest.fixture
def india_local_time() -> Iterator[None]:
    """The process's local zone is Asia/Kolkata, as on a server in India, for the test's length."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.mark.usefixtures("india_local_time")
async def test_the_daily_count_is_the_same_on_a_server_in_ist(journal: Journal) -> None:
    """The count compares instants, not local clock text: on a server whose zone is IST, legs sent in the last
    minutes count, and none counts from a cut after them."""
    await record(journal, "a1", ("paper", 1))
    await journal.record_leg("a1", result(1))
    now = datetime.now(UTC)
    assert await journal.count_orders("paper", since=now - timedelta(minutes=1)) == 1
    assert await journal.count_orders("paper", since=now + timedelta(hours=1)) == 0


@pytest.mark.sqlite_only  # reads SQLite's own PRAGMA and the probe table through the SQLite journal's read()
async def test_the_servers_journal_takes_its_settings_from_the_config(
    make_client: ClientFactory, config: Config
) -> None:
    """`journal.synchronous = "full"` reaches SQLite, and `/health`'s probe writes as much as the largest alert
    (`limits.max_body_bytes`), so a disk too full for an alert fails the probe too."""
    config = attrs.evolve(
        config,
        journal=attrs.evolve(config.journal, synchronous="full"),
        limits=attrs.evolve(config.limits, max_body_bytes=12345),
    )
    client = await make_client(config)
    journal = client.app[JOURNAL]
    assert await journal.read(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
    response = await client.get("/health")
    assert response.status == 200
    sizes = await journal.read(lambda conn: conn.execute("SELECT length(filler) FROM probe").fetchall())
    assert [row[0] for row in sizes] == [12345]


async def test_a_new_journal_is_healthy_and_durable_as_the_default_says(tmp_path: Path) -> None:
    """Opened with the defaults: healthy with no error yet, `synchronous = NORMAL`, and a probe as large as the
    default largest alert (64 KiB)."""
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    await journal.open()
    try:
        assert (journal.healthy, journal.last_error, journal.problem()) == (True, "", "")
        assert await journal.read(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]) == 1  # NORMAL
        assert await journal.probe() is True
        sizes = await journal.read(lambda conn: conn.execute("SELECT length(filler) FROM probe").fetchall())
        assert [row[0] for row in sizes] == [65536]
    finally:
        await journal.close()


async def test_a_deleted_wal_is_named(tmp_path: Path) -> None:
    """The WAL is watched like the journal itself: deleted under the server, the problem names it."""
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    await journal.open()
    try:
        wal = path.with_name(f"{path.name}-wal")
        wal.unlink()
        assert journal.problem() == f"journal {wal} was deleted while tvbridge had it open"
    finally:
        await journal.close()


async def test_a_journal_that_cannot_be_opened_says_which(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    path.mkdir()  # a directory where the file should be
    with pytest.raises(JournalError, match=rf"^journal {path} cannot be opened: "):
        await Journal(path).open()


async def test_an_alert_the_disk_refuses_is_reported_as_not_recorded(tmp_path: Path) -> None:
    """The write that fails on a full disk says the alert was not recorded, and the journal reports why."""
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    await journal.open()
    try:
        await record(journal, "a0")
        with (
            all_writes_refused(path.with_name(f"{path.name}-wal")),
            pytest.raises(JournalError, match=r"^journal unwritable: the alert was not recorded$"),
        ):
            await record(journal, "a1", ("paper", 1))
        assert journal.healthy is False
        assert journal.last_error.startswith(("OperationalError: ", "DatabaseError: "))
    finally:
        await journal.close()


async def test_handed_over_results_are_committed_by_settle(journal: Journal) -> None:
    """`record_results` returns before its commit; `settle()` waits for it, after which the alert reads back
    finished, and the alert's source is kept as it arrived."""
    await record(journal, "a1", ("paper", 1))
    written = journal.record_results("a1", "success", {"status": "success"}, [result(1)])
    await journal.settle()
    assert written.done()
    assert written.result() is True
    shown = await journal.get_alert("a1")
    assert shown is not None
    assert (shown["status"], shown["legs"][0]["state"]) == ("success", "placed")
    sources = await journal.read(lambda conn: conn.execute("SELECT source FROM alerts").fetchall())
    assert [row[0] for row in sources] == ["127.0.0.1"]


async def test_results_the_disk_refuses_are_logged_and_leave_the_alert_for_recovery(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    await journal.open()
    try:
        await record(journal, "a1", ("paper", 1))
        with capture_logs() as logs, all_writes_refused(path.with_name(f"{path.name}-wal")):
            written = journal.record_results("a1", "success", {"status": "success"}, [result(1)])
            await journal.settle()
        assert written.result() is False
        assert [(e["log_level"], e["alert_id"]) for e in logs if e["event"] == "journal.finish_failed"] == [
            ("error", "a1")
        ]
        assert await journal.unfinished() == ["a1"]
    finally:
        await journal.close()
