"""The order log's header after an upgrade: a file whose first line is not the current columns is kept whole
under a new name (`<name>.old-header-<UTC time>.csv`), logged, and a new file started with the header; a file
that already has the header is written on, never set aside."""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Self

import pytest
from helpers import in_time_zone
from structlog.testing import capture_logs
from test_orderlog import result, rows

from tvbridge import orderlog
from tvbridge.orderlog import COLUMNS, HEADER_LINE, OrderLog

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

REASON = "its header is not the current columns (an older version wrote it); a new file was started"
BEFORE_STRATEGIES = ",".join(COLUMNS[: COLUMNS.index("strategy")])
"""The header a version from before strategies wrote (no `strategy` column)."""
OLD_ROW = "2026-12-01T04:00:00+00:00,multi_leg_order,INFY,NSE,B,1,MKT,I,1500,success,P-1,ok,a1,1,paper,paper,c1,"


@pytest.fixture
def india_time() -> Iterator[None]:
    """The server's local zone is IST (UTC+05:30), as on a machine in India: a name in local time would be off."""
    with in_time_zone("Asia/Kolkata"):
        yield


async def open_and_write(path: Path, alert_id: str) -> None:
    log = OrderLog(path)
    await log.open()
    try:
        await log.append([result(1, 1)], alert_id=alert_id, alert_type="x")
    finally:
        await log.close()


@pytest.mark.usefixtures("india_time")
async def test_an_older_header_is_kept_whole_under_its_utc_time_and_logged(tmp_path: Path) -> None:
    """The old file is renamed `webhook_orders.old-header-YYYYMMDDTHHMMSSZ.csv` (the UTC time of the start, not
    the server's local time), byte for byte; one warning names both files and why; the new file holds the
    current header and the new rows only."""
    path = tmp_path / "webhook_orders.csv"
    old = f"{BEFORE_STRATEGIES}\n{OLD_ROW}\n".encode()
    path.write_bytes(old)
    before = datetime.now(UTC).replace(microsecond=0)
    with capture_logs() as events:
        await open_and_write(path, "A1")
    after = datetime.now(UTC)

    [kept] = [p for p in tmp_path.iterdir() if p != path]
    stamp = re.fullmatch(r"webhook_orders\.old-header-(\d{8}T\d{6}Z)\.csv", kept.name)
    assert stamp, kept.name
    assert before <= datetime.strptime(stamp[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) <= after
    assert kept.read_bytes() == old
    assert events == [
        {
            "event": "order_log.rotated",
            "log_level": "warning",
            "path": str(path),
            "kept_as": str(kept),
            "reason": REASON,
        }
    ]
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(COLUMNS)
    assert [(row["alert_id"], row["symbol"]) for row in rows(path)] == [("A1", "SYM1")]


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(BEFORE_STRATEGIES.encode(), id="before strategies"),
        pytest.param(",".join(COLUMNS[: COLUMNS.index("bracket")]).encode(), id="before brackets"),
        pytest.param(HEADER_LINE + b",exit_reason", id="a newer version's extra column"),
        pytest.param(HEADER_LINE + b" ", id="a trailing space"),
        pytest.param(HEADER_LINE + b"\t", id="a trailing tab"),
        pytest.param(HEADER_LINE + b"X", id="the last column renamed"),
        pytest.param(b"\xef\xbb\xbf" + HEADER_LINE, id="a byte order mark"),
        pytest.param(OLD_ROW.encode(), id="a row, the header lost"),
    ],
)
async def test_a_first_line_that_is_not_exactly_the_header_is_set_aside(tmp_path: Path, first: bytes) -> None:
    """csv.DictReader and pandas name the columns by the first line: any difference from the current header, at
    either end, even whitespace, would misname the new rows' cells, so the file is set aside, whole."""
    path = tmp_path / "webhook_orders.csv"
    old = first + b"\n" + OLD_ROW.encode() + b"\n"
    path.write_bytes(old)
    with capture_logs() as events:
        await open_and_write(path, "A1")
    [kept] = tmp_path.glob("webhook_orders.old-header-*.csv")
    assert kept.read_bytes() == old
    assert [e["event"] for e in events] == ["order_log.rotated"]
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(COLUMNS)
    assert [row["alert_id"] for row in rows(path)] == ["A1"]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(HEADER_LINE + b"\n", id="the header"),
        pytest.param(HEADER_LINE + b"\r\n", id="the header with CRLF"),
        pytest.param(HEADER_LINE, id="the header without its line break"),
    ],
)
async def test_a_file_with_the_current_header_or_none_is_written_on(tmp_path: Path, content: bytes) -> None:
    """A file with the current header (a spreadsheet may have saved it with CRLF), or an empty one, is the file
    to go on with: nothing is set aside or logged, and the rows go into it under one header, on the next line
    (a header without its line break gets one; a whole one no empty line)."""
    path = tmp_path / "webhook_orders.csv"
    path.write_bytes(content)
    with capture_logs() as events:
        await open_and_write(path, "A1")
    assert [p.name for p in tmp_path.iterdir()] == ["webhook_orders.csv"]
    assert events == []
    text = path.read_bytes()
    assert text.startswith(content or HEADER_LINE)
    assert text.count(b"timestamp") == 1
    assert text.count(b"\n") == 2  # the header's line and the row's, no empty line between them
    assert [row["alert_id"] for row in rows(path)] == ["A1"]


class _Frozen(datetime):
    """Every `now()` of the order log is one instant: starts within one second."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> Self:
        return cls.fromtimestamp(datetime(2026, 12, 6, 3, 45, 7, tzinfo=UTC).timestamp(), tz)


async def test_upgrades_within_one_second_never_overwrite_a_kept_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three starts on an old-header file within the same second: the first is kept under the time, the next
    ones under the time and -1, -2; every kept file is whole and its own."""
    monkeypatch.setattr(orderlog, "datetime", _Frozen)
    path = tmp_path / "webhook_orders.csv"
    olds = [f"{BEFORE_STRATEGIES}\n{OLD_ROW.replace('a1', f'old{n}')}\n".encode() for n in range(3)]
    for n, old in enumerate(olds):
        path.write_bytes(old)
        await open_and_write(path, f"A{n}")
    kept = {p.name: p.read_bytes() for p in tmp_path.glob("webhook_orders.old-header-*")}
    assert kept == {
        "webhook_orders.old-header-20261206T034507Z.csv": olds[0],
        "webhook_orders.old-header-20261206T034507Z-1.csv": olds[1],
        "webhook_orders.old-header-20261206T034507Z-2.csv": olds[2],
    }
    assert [row["alert_id"] for row in rows(path)] == ["A2"]
