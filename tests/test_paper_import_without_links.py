"""The paper importer sets an imported book aside on a file system without hard links (FAT, exFAT, some network
and FUSE mounts), never over an earlier file.

`set_aside` links the file to `<db_path>.imported` (a link never overwrites) and removes the old name. Where
`link()` fails for want of hard links, it copies the file into a name it creates exclusively instead. This
machine's kernel has no such file system to mount, so `os.link` is made to answer as one does (EPERM); the copy,
the names, the modes and the failure are real files.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from helpers import alert, leg, typed_leg

from tvbridge.app import create_app
from tvbridge.broker import BrokerContext, OrderRequest
from tvbridge.errors import PluginStartError
from tvbridge.keys import BROKERS
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials
from tvbridge_brokers.paper import PaperBroker, importer

if TYPE_CHECKING:
    from pathlib import Path

    from helpers import ClientFactory

    from tvbridge.config import Config


@pytest.fixture(autouse=True)
def _sqlite_only(store_env: dict[str, str]) -> None:
    if store_env:
        pytest.skip("imports into the SQLite journal")


@pytest.fixture
def no_hard_links(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """`os.link` answers as on FAT: EPERM ("the file system does not support hard links"); the calls are kept."""
    calls: list[tuple[str, str]] = []

    def refuse(source: Any, target: Any, *_args: Any, **_kwargs: Any) -> None:
        calls.append((str(source), str(target)))
        raise OSError(errno.EPERM, "Operation not permitted", str(source))

    monkeypatch.setattr(os, "link", refuse)
    return calls


async def own_book(data_dir: Path) -> None:
    """A paper book in the account's own file from before (a buy of 1 INFY)."""
    own = PaperBroker.from_settings({"prices": {"INFY": "100"}}, BrokerContext(account="paper", data_dir=data_dir))
    await own.start()
    buy = typed_leg(quantity=1, symbol="INFY", price=Decimal(0))
    await own.place(OrderRequest(client_order_id="old-1", alert_id="old", leg_number=1, leg=buy))
    await own.aclose()


def orders_in(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT client_order_id FROM orders")]
    finally:
        conn.close()


async def held(client: TestClient[Any, Any]) -> list[tuple[str, int]]:
    positions = await client.app[BROKERS]["paper"].positions()
    return [(p.contract.symbol, p.net_quantity) for p in positions]


async def test_without_hard_links_the_book_is_copied_aside(
    make_client: ClientFactory, config: Config, no_hard_links: list[tuple[str, str]]
) -> None:
    """The import copies the book into `.imported` (0600, the whole book: its order is there), removes the
    original, and the account holds the position; the next start imports nothing again."""
    data_dir = config.server.data_dir
    await own_book(data_dir)
    client = await make_client(config)
    aside = data_dir / "paper-paper.sqlite3.imported"
    assert no_hard_links == [(str(data_dir / "paper-paper.sqlite3"), str(aside))]
    assert not (data_dir / "paper-paper.sqlite3").exists()
    assert orders_in(aside) == ["old-1"]
    assert stat.S_IMODE(aside.stat().st_mode) == 0o600
    assert await held(client) == [("INFY", 1)]
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", quantity="1", price="100", productType="I")))
    assert (await response.json())["status"] == "success"
    await client.close()
    client = await make_client(config)
    assert await held(client) == [("INFY", 2)]
    assert sorted(p.name for p in data_dir.glob("paper-paper.sqlite3*")) == ["paper-paper.sqlite3.imported"]


async def test_without_hard_links_an_earlier_imported_file_is_never_overwritten(
    make_client: ClientFactory, config: Config, no_hard_links: list[tuple[str, str]]
) -> None:
    """`.imported` is taken (an earlier import's file, maybe the only copy of an old book): the copy goes to
    `.imported.2`, the earlier file kept byte for byte."""
    data_dir = config.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    earlier = data_dir / "paper-paper.sqlite3.imported"
    earlier.write_bytes(b"an earlier import, kept")
    await own_book(data_dir)
    client = await make_client(config)
    assert earlier.read_bytes() == b"an earlier import, kept"
    assert not (data_dir / "paper-paper.sqlite3").exists()
    assert orders_in(data_dir / "paper-paper.sqlite3.imported.2") == ["old-1"]
    assert await held(client) == [("INFY", 1)]
    assert no_hard_links  # the copy, not a link


async def test_a_copy_that_fails_leaves_the_book_where_it_was(
    make_client: ClientFactory, config: Config, no_hard_links: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy fails half-way (the disk fills up): no partial `.imported` is left, the original file stays whole,
    and the start stops saying the book was imported but not set aside (rename it by hand). The next start finds
    the book in the journal and leaves the file alone."""
    data_dir = config.server.data_dir
    await own_book(data_dir)

    def full_disk(source: Any, target: Any, *_args: Any) -> None:
        target.write(source.read(100))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full_disk)
    refusing = TestClient(TestServer(create_app(config, make_converter(), resolve_credentials(config))))
    try:
        with pytest.raises(PluginStartError, match="was imported into the journal but cannot be renamed"):
            await refusing.start_server()
    finally:
        await refusing.close()
    assert not (data_dir / "paper-paper.sqlite3.imported").exists()
    assert orders_in(data_dir / "paper-paper.sqlite3") == ["old-1"]
    monkeypatch.undo()
    client = await make_client(config)
    assert await held(client) == [("INFY", 1)]
    assert (data_dir / "paper-paper.sqlite3").exists()  # ignored, not merged twice: `paper.sqlite_book_ignored`


WRITER = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None);"
    " c.execute('BEGIN IMMEDIATE'); c.execute('INSERT INTO t VALUES (2)'); c.execute('COMMIT'); print('wrote')"
)


def another_process_writes(path: Path) -> bool:
    """Whether another process (a tvbridge still serving the old book, say) can write `path` now."""
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip() == "wrote"


def test_the_book_stays_held_while_it_is_copied_aside(tmp_path: Path, no_hard_links: list[tuple[str, str]]) -> None:
    """The import holds the old book (`BEGIN EXCLUSIVE`) until it is set aside. Closing any descriptor of a file
    drops every POSIX lock the process holds on it: had the copy closed its source before the old name was
    removed, another process could write the book in between, and its rows would be in neither the copy nor
    the journal. The copy's source stays open until then: the other process is kept out throughout."""
    path = tmp_path / "paper.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    with importer._held(path):  # noqa: SLF001 - the window lies between two steps of one import
        assert not another_process_writes(path)
        source = importer._claim(path, tmp_path / "paper.sqlite3.imported")  # noqa: SLF001
        assert no_hard_links  # the copy, not a link
        assert source is not None
        try:
            assert not another_process_writes(path)
        finally:
            source.close()
    copy = sqlite3.connect(tmp_path / "paper.sqlite3.imported")
    try:
        assert copy.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        copy.close()
