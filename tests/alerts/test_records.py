"""The journal's write interface for the alert path (`tvbridge/alerts/records.py`), on a real SQLite journal.

`record_plan` is one transaction (the alert, every leg in its planned state, and whatever `join` writes), and a
failure leaves nothing; `record_results` is handed over and not waited for, yet a repeat's dedupe look-up and
`GET /alerts/<id>` see it (read-your-writes); a failed results write is reported, not raised.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from structlog.testing import capture_logs

from tvbridge.alerts.records import AlertEntry, LegEntry
from tvbridge.errors import JournalError
from tvbridge.journal import Journal
from tvbridge.models import LegResult, LegStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    opened = Journal(tmp_path / "journal.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


def entry(alert_id: str = "A1", *, dedupe_key: str | None = "key-1") -> AlertEntry:
    return AlertEntry(
        alert_id=alert_id,
        alert_type="multi_leg_order",
        payload={"secret": "s3cret-not-kept", "alertType": "multi_leg_order", "order_legs": []},
        dedupe_key=dedupe_key,
        source="127.0.0.1",
        order_log_offset=0,
        legs=(
            LegEntry(account="a", leg_number=1, client_order_id=f"{alert_id}-1", state="sending"),
            LegEntry(account="a", leg_number=2, client_order_id=f"{alert_id}-2"),
            LegEntry(account="q", leg_number=1, client_order_id=f"{alert_id}-1", state="queued", message="closed"),
        ),
    )


def result(alert_id: str, number: int) -> LegResult:
    return LegResult(
        leg_number=number,
        account="a",
        broker="paper",
        symbol="RELIANCE",
        exchange="NSE",
        transaction="B",
        quantity="1",
        order_type="MKT",
        product_type="C",
        price="0",
        status=LegStatus.SUCCESS,
        message="filled",
        order_id=f"P-{number}",
        client_order_id=f"{alert_id}-{number}",
        order_state="filled",
    )


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_record_plan_is_one_commit_with_the_planned_states_and_the_joined_rows(
    journal: Journal, tmp_path: Path
) -> None:
    """The alert (without its secret), its legs in their planned states and a joined table's row are committed
    together, in one transaction of the journal."""
    await journal.write(lambda conn: conn.execute("CREATE TABLE joined (alert_id TEXT)"))
    before = journal._db.batches  # noqa: SLF001 - the commit count is what this test is about
    await journal.record_plan(entry(), join=lambda conn: conn.execute("INSERT INTO joined VALUES ('A1')"))
    assert journal._db.batches - before == 1  # noqa: SLF001
    path = tmp_path / "journal.sqlite3"
    assert rows(path, "SELECT alert_id, status, dedupe_key FROM alerts") == [("A1", "accepted", "key-1")]
    assert "s3cret" not in str(rows(path, "SELECT payload FROM alerts"))
    assert rows(path, "SELECT account, leg_number, client_order_id, state, message FROM legs ORDER BY 1, 2") == [
        ("a", 1, "A1-1", "sending", None),
        ("a", 2, "A1-2", "pending", None),
        ("q", 1, "A1-1", "queued", "closed"),
    ]
    assert rows(path, "SELECT alert_id FROM joined") == [("A1",)]


async def test_a_failing_join_records_nothing(journal: Journal, tmp_path: Path) -> None:
    """A joined write that fails fails the whole record: JournalError, and neither the alert nor its legs are
    there (the webhook answers 503 and nothing was sent)."""

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(JournalError):
        await journal.record_plan(entry(), join=broken)
    path = tmp_path / "journal.sqlite3"
    assert rows(path, "SELECT COUNT(*) FROM alerts") == [(0,)]
    assert rows(path, "SELECT COUNT(*) FROM legs") == [(0,)]


async def test_results_not_awaited_are_seen_by_a_repeat_and_by_get_alert(journal: Journal) -> None:
    """`record_results` is handed over without waiting; the dedupe look-up and `get_alert` made right after
    see the finished alert and its legs' results, never the alert still `accepted`."""
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    await journal.record_plan(entry())
    body = {"status": "success", "results": [{"leg_number": 1}]}
    journal.record_results("A1", "success", body, [result("A1", 1), result("A1", 2)])
    found = await journal.find_by_dedupe_key("key-1", since)
    assert found == {"alert_id": "A1", "status": "success", "response": body}

    await journal.record_plan(entry("A2", dedupe_key=None))
    journal.record_results("A2", "success", body, [result("A2", 1)])
    record = await journal.get_alert("A2")
    assert record is not None
    assert record["status"] == "success"
    assert [(leg["leg_number"], leg["state"], leg["order_id"]) for leg in record["legs"] if leg["account"] == "a"] == [
        (1, "placed", "P-1"),
        (2, "pending", None),
    ]


async def test_a_failed_results_write_is_reported_and_leaves_the_alert_for_recovery(
    journal: Journal, tmp_path: Path
) -> None:
    """Results for an alert whose leg rows cannot take them (here: the journal's legs table is gone) are not
    raised at the caller: the awaitable says False, `journal.finish_failed` is logged, and the alert stays
    `accepted` for crash recovery."""
    await journal.record_plan(entry())
    await journal.write(lambda conn: conn.execute("DROP TABLE legs"))
    with capture_logs() as logs:
        ok = await journal.record_results("A1", "success", {"status": "success"}, [result("A1", 1)])
    assert ok is False
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["journal.finish_failed"]
    assert rows(tmp_path / "journal.sqlite3", "SELECT status FROM alerts") == [("accepted",)]
