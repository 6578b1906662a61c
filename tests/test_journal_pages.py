"""The journal's dedupe index costs no random page per alert (issue 22), and a journal from before it keeps its
repeats: the old index goes, the window's keys are still found, with `synchronous = "full"` as with "normal"."""

from __future__ import annotations

import secrets
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from tvbridge.alerts.records import AlertEntry
from tvbridge.journal import Journal, _create

if TYPE_CHECKING:
    from pathlib import Path

OLD_INDEX = "CREATE INDEX alerts_dedupe ON alerts (dedupe_key, received_at)"
INSERT = (
    "INSERT INTO alerts (alert_id, received_at, alert_type, dedupe_key, source, payload, status, updated_at)"
    " VALUES (?, ?, 'multi_leg_order', ?, '127.0.0.1', '{}', 'accepted', ?)"
)
GROUP = 32
"""Alerts per commit: the journal's group commits under load at concurrency 32."""


def wal_frames_per_alert(path: Path, *, old_index: bool) -> float:
    """WAL frames written per alert for 20 commits of `GROUP` alerts with random dedupe keys, into a journal that
    already holds 20,000 alerts with keys in the window (the database checkpointed before)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.row_factory = sqlite3.Row
    _create(conn)
    if old_index:
        conn.execute(OLD_INDEX)
        conn.execute("DROP INDEX alerts_dedupe_window")
    start = datetime.now(UTC) - timedelta(seconds=30)

    def rows(first: int, count: int) -> list[tuple[str, str, str, str]]:
        stamps = [(start + timedelta(milliseconds=first + n)).isoformat() for n in range(count)]
        return [(f"{first + n:017x}", at, "body:" + secrets.token_hex(32), at) for n, at in enumerate(stamps)]

    conn.execute("BEGIN")
    conn.executemany(INSERT, rows(0, 20_000))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for group in range(20):
        conn.execute("BEGIN")
        conn.executemany(INSERT, rows(20_000 + group * GROUP, GROUP))
        conn.execute("COMMIT")
    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    conn.close()
    return float(frames) / (20 * GROUP)


def test_an_alerts_dedupe_key_adds_no_random_page_to_its_commit(tmp_path: Path) -> None:
    """The keys of the alerts committed together share the index's last page: the WAL grows by well under one
    page per alert for the whole alert row, where a random-key index alone added about one and a half."""
    now = wal_frames_per_alert(tmp_path / "now.sqlite3", old_index=False)
    before = wal_frames_per_alert(tmp_path / "before.sqlite3", old_index=True)
    assert now < 0.8, now
    assert before > now + 1.0, (before, now)


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_a_journal_from_before_the_index_keeps_its_repeats(tmp_path: Path, synchronous: str) -> None:
    """A journal written with the old index opens with the new one only, and a key recorded before the restart,
    within the window, is still a repeat; one recorded before the window is not."""
    path = tmp_path / "tvbridge.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.row_factory = sqlite3.Row
    _create(conn)
    conn.execute("DROP INDEX alerts_dedupe_window")
    conn.execute(OLD_INDEX)
    recent = (datetime.now(UTC) - timedelta(seconds=10)).isoformat()
    old = (datetime.now(UTC) - timedelta(seconds=120)).isoformat()
    conn.executemany(INSERT, [("a-recent", recent, "body:recent", recent), ("a-old", old, "body:old", old)])
    conn.close()

    journal = Journal(path, synchronous)  # type: ignore[arg-type]  # the two literals
    await journal.open()
    try:
        since = (datetime.now(UTC) - timedelta(seconds=60)).isoformat()
        found = await journal.find_by_dedupe_key("body:recent", since)
        assert found is not None
        assert found["alert_id"] == "a-recent"
        assert await journal.find_by_dedupe_key("body:old", since) is None
        await journal.record_plan(
            AlertEntry(alert_id="a-new", alert_type="multi_leg_order", payload={}, dedupe_key="body:new", source=None)
        )
        again = await journal.find_by_dedupe_key("body:new", since)
        assert again is not None
        assert again["alert_id"] == "a-new"
    finally:
        await journal.close()
    with sqlite3.connect(path) as db:
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "alerts_dedupe" not in indexes
    assert "alerts_dedupe_window" in indexes
