"""The order log rows of alerts finished in their own commit, written at the next start when a crash (or a full
disk) cut them off (`recovery.write_pending_rows`, issue 22), in this process against the real app.

The `kill -9` tests (`test_one_commit.py`) leave these journals for real, but mutation testing cannot see a
subprocess: here the killed run's journal is written through the journal's own interface (`record_plan` with a
join that settles the alert, which marks it "order log row pending"; no `order_log_written`, so the mark stays
as a crash leaves it), its order log through `OrderLog`, and the start happens in-process. What is checked is what
an operator sees: the order log's rows, the marks left in the journal, the log lines, and that nothing is placed.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import pytest
from helpers import alert, leg
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs
from test_recovery_restart import broker_orders, client_order_id, journal_of, order_log_rows, placed_result, scripted

from tvbridge.alerts.records import AlertEntry, Finished, LegEntry
from tvbridge.journal import Journal
from tvbridge.keys import JOURNAL
from tvbridge.orderlog import COLUMNS, OrderLog

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from helpers import ClientFactory

    from tvbridge.config import Config
    from tvbridge.models import LegResult


@pytest.fixture(autouse=True)
def sqlite_only(store_env: dict[str, str]) -> None:
    if store_env:
        pytest.skip("only the SQLite journal finishes an alert in its own commit")


async def finished_in_its_commit(
    config: Config, alert_id: str, raw: dict[str, Any], results: tuple[LegResult, ...], *, offset: int | None
) -> None:
    """What a run killed after an alert's one commit leaves: the alert finished (status, answer, each leg's
    result) and marked "order log row pending"; whether its rows reached the order log is up to the caller."""
    journal = Journal(config.data_path(config.journal.path))
    await journal.open()
    entry = AlertEntry(
        alert_id=alert_id,
        alert_type=raw["alertType"],
        payload=raw,
        dedupe_key=None,
        source="127.0.0.1",
        order_log_offset=offset,
        legs=tuple(
            LegEntry(account=r.account, leg_number=r.leg_number, client_order_id=r.client_order_id) for r in results
        ),
        strategy="",
    )
    finished = Finished(status="success", response={"alert_id": alert_id, "status": "success"}, results=results)
    await journal.record_plan(entry, join=lambda _conn: finished)
    await journal.close()


async def logged_rows(config: Config, alert_id: str, results: tuple[LegResult, ...], alert_type: str) -> int:
    """The killed run's rows of `alert_id`, written after the returned offset (the alert's, as journaled)."""
    order_log = OrderLog(config.data_path(config.order_log.file))
    await order_log.open()
    offset = order_log.size()
    await order_log.append(list(results), alert_id=alert_id, alert_type=alert_type)
    await order_log.close()
    return offset


def marks(config: Config) -> list[str]:
    """The alerts still marked "order log row pending", read from the journal's file."""
    conn = sqlite3.connect(config.data_path(config.journal.path))
    try:
        return [row[0] for row in conn.execute("SELECT alert_id FROM alerts WHERE order_log_pending IS NOT NULL")]
    finally:
        conn.close()


def row_facts(config: Config) -> list[tuple[str, ...]]:
    return [
        (r["alert_id"], r["account"], r["leg_number"], r["alert_type"], r["symbol"], r["status"], r["order_id"])
        for r in order_log_rows(config)
    ]


def recovery_lines(logs: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (e["log_level"], e["alert_id"], e["written"], e["already_in_order_log"])
        for e in logs
        if e["event"] == "recovery.order_log_rows"
    ]


async def two_alerts_cut_off(config: Config) -> None:
    """M1 (one leg): killed before its row. M2 (two legs): killed after leg 1's row, before leg 2's. An older
    alert's row is in the log before both offsets."""
    older = placed_result("OLD", 1, "SBIN", "P0")
    offset = await logged_rows(config, "OLD", (older,), "single_order")
    m1 = (placed_result("M1", 1, "INFY", "P1"),)
    await finished_in_its_commit(config, "M1", alert(leg(symbol="INFY"), alert_type="single_order"), m1, offset=offset)
    m2 = (placed_result("M2", 1, "TCS", "P2"), placed_result("M2", 2, "WIPRO", "P3"))
    m2_offset = await logged_rows(config, "M2", m2[:1], "multi_leg_order")
    raw = alert(leg(symbol="TCS"), leg(symbol="WIPRO", sort_order="2"))
    await finished_in_its_commit(config, "M2", raw, m2, offset=m2_offset)


async def test_rows_a_crash_cut_off_are_written_once_at_the_start(make_client: ClientFactory, config: Config) -> None:
    """Two alerts finished in their own commit, one with no row in the order log, one with its first leg's row
    only: the start writes the missing rows (alert id, account, leg, alert type, contract, status, order id as
    journaled), never a second row for a leg, logs which it wrote and which it found, clears both marks, and
    places nothing. A second start finds no mark and writes nothing."""
    config = scripted(config)
    await two_alerts_cut_off(config)
    assert sorted(marks(config)) == ["M1", "M2"]
    with capture_logs() as logs:
        client = await make_client(config)
    assert row_facts(config) == [
        ("OLD", "sim", "1", "single_order", "SBIN", "success", "P0"),
        ("M2", "sim", "1", "multi_leg_order", "TCS", "success", "P2"),
        ("M1", "sim", "1", "single_order", "INFY", "success", "P1"),
        ("M2", "sim", "2", "multi_leg_order", "WIPRO", "success", "P3"),
    ]
    assert [r["client_order_id"] for r in order_log_rows(config)[2:]] == [
        client_order_id("M1", 1),
        client_order_id("M2", 2),
    ]
    assert recovery_lines(logs) == [("warning", "M1", ["sim#1"], None), ("warning", "M2", ["sim#2"], ["sim#1"])]
    assert marks(config) == []
    assert broker_orders(config) == []
    record = await journal_of(client, "M1")
    assert (record["status"], [leg["order_id"] for leg in record["legs"]]) == ("success", ["P1"])
    assert await client.app[JOURNAL].unfinished() == []
    await client.close()

    with capture_logs() as logs:
        await make_client(config)
    assert recovery_lines(logs) == []
    assert len(order_log_rows(config)) == 4


async def test_rows_the_disk_refuses_at_the_start_keep_their_mark_for_the_next(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order log refuses M1's row at the start (a full disk): an `order_log.write_failed` error line with
    M1's id and the traceback, M1 keeps its mark, and the server still starts and writes M2's row. The next start,
    with room on the disk, writes M1's row."""
    config = scripted(config)
    await two_alerts_cut_off(config)
    write = OrderLog._write  # noqa: SLF001 - the one place rows reach the file
    at = COLUMNS.index("alert_id")

    def full_disk_for_m1(self: OrderLog, rows: list[list[str]]) -> None:
        if any(row[at] == "M1" for row in rows):
            raise OSError(28, "No space left on device")
        write(self, rows)

    monkeypatch.setattr(OrderLog, "_write", full_disk_for_m1)
    with capture_logs(processors=[merge_contextvars]) as logs:
        client = await make_client(config)
    failed = [
        (e["log_level"], e.get("alert_id"), e.get("exc_info")) for e in logs if e["event"] == "order_log.write_failed"
    ]
    assert failed == [("error", "M1", True)]
    assert recovery_lines(logs) == [("warning", "M2", ["sim#2"], ["sim#1"])]
    assert [(r["alert_id"], r["leg_number"]) for r in order_log_rows(config)] == [
        ("OLD", "1"),
        ("M2", "1"),
        ("M2", "2"),
    ]
    assert marks(config) == ["M1"]
    await client.close()

    monkeypatch.undo()
    with capture_logs() as logs:
        await make_client(config)
    assert recovery_lines(logs) == [("warning", "M1", ["sim#1"], None)]
    assert [(r["alert_id"], r["leg_number"]) for r in order_log_rows(config)][-1] == ("M1", "1")
    assert marks(config) == []


async def test_a_mark_without_an_offset_has_its_rows_looked_for_in_the_whole_log(
    make_client: ClientFactory, config: Config
) -> None:
    """A marked alert journaled without an order log offset (N1, its row already written) beside one with an
    offset (M1, no row): the whole log is searched, so N1's row is not written again, and M1's is written."""
    config = scripted(config)
    n1 = (placed_result("N1", 1, "SBIN", "P0"),)
    await logged_rows(config, "N1", n1, "single_order")
    await finished_in_its_commit(config, "N1", alert(leg(symbol="SBIN"), alert_type="single_order"), n1, offset=None)
    m1 = (placed_result("M1", 1, "INFY", "P1"),)
    raw = alert(leg(symbol="INFY"), alert_type="single_order")
    await finished_in_its_commit(config, "M1", raw, m1, offset=config.data_path(config.order_log.file).stat().st_size)
    with capture_logs() as logs:
        await make_client(config)
    assert [(r["alert_id"], r["leg_number"]) for r in order_log_rows(config)] == [("N1", "1"), ("M1", "1")]
    assert recovery_lines(logs) == [("warning", "N1", None, ["sim#1"]), ("warning", "M1", ["sim#1"], None)]
    assert marks(config) == []
