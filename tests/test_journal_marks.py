"""The SQLite journal's one-commit marks and its Store answers, on a real file: what crash recovery and the
dedupe guard read back (`order_log_pending`, `pending_order_log`, `claim_dedupe`), and what a clean stop leaves.

Issue 24's `journal` mutation group: each test here names the mistakes it catches."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

import tvbridge.journal
from tvbridge.alerts.records import AlertEntry, Finished, LegEntry, SettlingJoin
from tvbridge.errors import JournalError
from tvbridge.journal import Journal

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path

    from aiohttp import web
    from aiohttp.test_utils import TestClient

FINISHED = Finished(status="success", response={"status": "success", "orders": ["X1"]}, results=())


def entry(alert_id: str, *, offset: int = 0, dedupe_key: str | None = None) -> AlertEntry:
    return AlertEntry(
        alert_id=alert_id,
        alert_type="multi_leg_order",
        payload={"alertType": "multi_leg_order"},
        dedupe_key=dedupe_key,
        source=None,
        order_log_offset=offset,
        legs=(LegEntry(account="paper", leg_number=1, client_order_id=f"{alert_id}-1", state="sending"),),
    )


async def test_a_mark_left_lists_the_alert_with_its_answer_and_order_log_offset(tmp_path: Path) -> None:
    """An alert finished in its own commit whose rows were never reported written (a crash): after a restart,
    recovery's list has it, with the order log offset to search from and the answer the client got."""
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    await journal.record_plan(entry("A1", offset=1234), join=lambda _: FINISHED)
    await journal.close()
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    try:
        [found] = await journal.pending_order_log()
        assert (found["alert_id"], found["status"], found["response"], found["order_log_offset"]) == (
            "A1",
            "success",
            {"status": "success", "orders": ["X1"]},
            1234,
        )
    finally:
        await journal.close()


async def test_a_clean_stop_clears_the_marks_of_rows_written(tmp_path: Path) -> None:
    """Rows written, no later write to carry the clearing: a clean stop commits it, so the next start has no
    alert to look for in the order log (recovery would search the log for nothing)."""
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    await journal.record_plan(entry("A1"), join=lambda _: FINISHED)
    journal.order_log_written("A1")
    await journal.close()
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    try:
        assert await journal.pending_order_log() == []
    finally:
        await journal.close()


async def test_a_refused_write_keeps_the_marks_it_carried_for_the_next(tmp_path: Path) -> None:
    """A write the file refuses (the same alert id twice) is a `JournalError`, the alert's rows stay as they
    were, and the marks it carried are cleared by the next write instead."""
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    try:
        await journal.record_plan(entry("A1"), join=lambda _: FINISHED)
        journal.order_log_written("A1")
        with pytest.raises(JournalError, match="refused"):
            await journal.record_plan(entry("A1"))
        assert [r["alert_id"] for r in await journal.pending_order_log()] == ["A1"]
        await journal.record_plan(entry("A2"))
        assert await journal.pending_order_log() == []
        assert journal.healthy
    finally:
        await journal.close()


async def test_a_repeat_claims_the_first_copys_alert_id(tmp_path: Path) -> None:
    """The dedupe guard's claim on the journal: a key recorded before answers with the first copy's id (the
    repeat's answer names it), an unknown key with None."""
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    try:
        await journal.record_plan(entry("A1", dedupe_key="k1"))
        assert await journal.claim_dedupe("k1", "A2", "2000-01-01T00:00:00+00:00") == "A1"
        assert await journal.claim_dedupe("k2", "A3", "2000-01-01T00:00:00+00:00") is None
        assert await journal.is_leader() is True  # one process owns the file: it runs the queue and follow-ups
    finally:
        await journal.close()


async def test_run_commits_each_statement_with_its_arguments(tmp_path: Path) -> None:
    """`Store.run` (the refusal journal's writes): every statement, with its arguments, committed."""
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    await journal.run([("CREATE TABLE t (x INTEGER, y TEXT)", ()), ("INSERT INTO t VALUES (?, ?)", [7, "seven"])])
    await journal.close()
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    try:
        assert [tuple(row) for row in await journal.fetch("SELECT x, y FROM t WHERE x = ?", 7)] == [(7, "seven")]
    finally:
        await journal.close()


async def test_a_failed_write_keeps_the_marks_it_carried_and_reports_the_journal_unwritable(tmp_path: Path) -> None:
    """A write that fails for another reason than a bad row (here: the function raising) is the journal unwritable,
    the marks it carried wait for the next write, and the next write that succeeds makes the journal healthy."""

    def failing(conn: object) -> None:
        raise OSError("disk I/O error")

    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    try:
        await journal.record_plan(entry("A1"), join=lambda _: FINISHED)
        journal.order_log_written("A1")
        with pytest.raises(JournalError, match="unwritable"):
            await journal.write(failing)
        assert (journal.healthy, journal.last_error) == (False, "OSError: disk I/O error")
        assert [r["alert_id"] for r in await journal.pending_order_log()] == ["A1"]
        await journal.record_plan(entry("A2"))
        assert (journal.healthy, await journal.pending_order_log()) == (True, [])
    finally:
        await journal.close()


async def test_a_write_cancelled_while_it_waits_is_cancelled_and_its_marks_still_cleared(tmp_path: Path) -> None:
    """A client gone while its alert waits for the group commit: the write is cancelled as such (not another error
    in its place), and the marks it carried are cleared all the same, by that commit or the next."""
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    try:
        await journal.record_plan(entry("A1"), join=lambda _: FINISHED)
        journal.order_log_written("A1")
        waiting = asyncio.create_task(journal.record_plan(entry("A2")))
        await asyncio.sleep(0)  # not a wait for time: lets the write reach its group commit's queue
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await journal.record_plan(entry("A3"))
        assert await journal.pending_order_log() == []
    finally:
        await journal.close()


async def test_an_alert_finished_in_a_later_commit_is_not_marked(tmp_path: Path) -> None:
    """Only an alert settled inside its first commit waits for its order log rows: one finished by a later write
    (`finish_alert`, after the executor wrote its rows) is never on recovery's list, before or after a restart."""
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    await journal.record_plan(entry("A1"))
    await journal.finish_alert("A1", "success", {"status": "success"})
    assert await journal.pending_order_log() == []
    await journal.close()
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    try:
        assert (await journal.pending_order_log(), (await journal.get_alert("A1") or {}).get("status")) == (
            [],
            "success",
        )
    finally:
        await journal.close()


async def test_a_stop_whose_last_write_fails_still_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fails as a clean stop commits the marks' clearing: the stop still closes the file, raising
    nothing (the mark stays, and the next start's recovery finds the rows in the order log)."""

    async def failing(fn: object) -> None:
        raise OSError("disk I/O error")

    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    await journal.record_plan(entry("A1"), join=lambda _: FINISHED)
    journal.order_log_written("A1")
    with monkeypatch.context() as patch:
        patch.setattr(journal.database, "write", failing)
        await journal.close()
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    try:
        assert [r["alert_id"] for r in await journal.pending_order_log()] == ["A1"]
    finally:
        await journal.close()


async def test_a_server_on_the_sqlite_journal_runs_no_instance_sharing(
    client: TestClient[web.Request, web.Application],
) -> None:
    """One process owns a SQLite journal: no loop re-running recovery while it serves (it would take the alerts in
    flight for a dead instance's and send their legs again), no sharing of the rate limits between instances."""
    assert (await client.get("/health")).status == 200
    running = {task.get_name() for task in asyncio.all_tasks()}
    assert not running & {"recovery-adopt", "rate-limit-share"}, running


class _Settled(SettlingJoin):
    """A join that settles the alert in its first commit (as the paper book does), refusing no leg."""

    def __call__(self, conn: sqlite3.Connection) -> Finished | None:  # noqa: ARG002 - the interface
        return FINISHED

    def settled(self, entry: AlertEntry) -> AlertEntry:
        return entry


async def test_an_alert_settled_in_its_first_commit_is_stamped_when_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alert's `updated_at` (what the daily counts compare with their day's start) is the time it was settled,
    taken after the join ran, as a later `finish_alert` would stamp it; `received_at` is when it arrived."""
    stamps = iter(["2026-01-05T09:14:59.999000+00:00", "2026-01-05T09:15:00.001000+00:00"])
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    try:
        monkeypatch.setattr(tvbridge.journal, "_now", lambda: next(stamps))
        await journal.record_plan(entry("A1"), join=_Settled())
        monkeypatch.undo()
        record = await journal.get_alert("A1") or {}
        assert (record.get("received_at"), record.get("updated_at"), record.get("status")) == (
            "2026-01-05T09:14:59.999000+00:00",
            "2026-01-05T09:15:00.001000+00:00",
            "success",
        )
    finally:
        await journal.close()


async def test_recovery_clears_the_marks_of_the_alerts_it_found_in_one_commit(tmp_path: Path) -> None:
    """After a restart recovery found (or wrote) the rows of the marked alerts: their marks go, and only theirs."""
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    try:
        for alert_id in ("A1", "A2", "A3"):
            await journal.record_plan(entry(alert_id), join=lambda _: FINISHED)
        batches = journal.database.batches
        await journal.clear_order_log_marks(("A1", "A3"))
        await journal.clear_order_log_marks(())
        assert journal.database.batches - batches == 1
        assert [r["alert_id"] for r in await journal.pending_order_log()] == ["A2"]
    finally:
        await journal.close()
