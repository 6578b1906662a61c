"""An operator reading the live journal from outside (`sqlite3 tvbridge.sqlite3 'select ...'`, a script) leaves
it whole: the server keeps its `-wal` file, and every later alert is recorded and answered.

SQLite's locks are POSIX locks, which a process loses on ANY close of a descriptor of the file. If the server
opened and closed the journal's file itself (it did, to create it 0600, for every new connection: the
checkpointer's, a reopen), it held no lock afterwards, and the outside reader, closing, believed itself the
last connection and deleted the `-wal` file: the next alert was answered 503 "was deleted while tvbridge had it
open" until a restart, and commits written to the deleted file are lost at the next crash.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Literal

import attrs
import pytest
from helpers import alert, leg

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.config import Config

READER = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
    " print(c.execute('SELECT count(*) FROM alerts').fetchone()[0]); c.close()"
)


@pytest.fixture(autouse=True)
def _sqlite_only(store_env: dict[str, str]) -> None:
    if store_env:
        pytest.skip("the SQLite journal's file")


def read_from_outside(config: Config) -> int:
    done = subprocess.run(
        [sys.executable, "-c", READER, str(config.data_path("tvbridge.sqlite3"))],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return int(done.stdout)


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_an_outside_reader_leaves_the_live_journal_whole(
    make_client: ClientFactory, config: Config, synchronous: Literal["normal", "full"]
) -> None:
    config = attrs.evolve(config, journal=attrs.evolve(config.journal, synchronous=synchronous))
    client = await make_client(config)
    wal = config.data_path("tvbridge.sqlite3-wal")
    first = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    assert first.status == 200, await first.text()
    assert read_from_outside(config) >= 1
    assert wal.exists()
    second = await client.post("/webhook", json=alert(leg(symbol="TCS", price="100")))
    assert second.status == 200, await second.text()
    assert read_from_outside(config) >= 2
    assert wal.exists()
