"""Moving the journal to PostgreSQL after the paper book joined the SQLite journal: never a flat start.

The joined book's orders and positions are in the SQLite journal's file (`[journal] path`); PostgreSQL holds none
of them. Started on the database, the account would show flat: EXIT_ALL would send nothing, a resend would book
again. tvbridge refuses to start instead, naming that file and what to do, before it connects anywhere (a real
PostgreSQL server, `tests/support/pgcluster.py`, stands for the new store).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import pytest
from aiohttp.test_utils import TestClient, TestServer
from helpers import alert, leg

from tvbridge.app import create_app
from tvbridge.errors import PluginStartError
from tvbridge.keys import BROKERS
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.config import Config


@pytest.fixture(autouse=True)
def _sqlite_first(store_env: dict[str, str]) -> None:
    if store_env:
        pytest.skip("starts on the SQLite journal, then moves to PostgreSQL itself")


async def start_fails(config: Config) -> str:
    """The message of the start's refusal."""
    client = TestClient(TestServer(create_app(config, make_converter(), resolve_credentials(config))))
    try:
        with pytest.raises(PluginStartError) as refused:
            await client.start_server()
    finally:
        await client.close()
    return str(refused.value)


async def test_a_book_in_the_sqlite_journal_is_never_started_flat_on_postgresql(
    make_client: ClientFactory, config: Config, pg_url: str
) -> None:
    """A position booked on the SQLite journal (the book joined it); `[journal] url` then set: the start refuses,
    naming the journal's file and both ways out. Back on SQLite the position is there; with the file moved away
    (the documented way to start flat on PostgreSQL), the account starts, flat."""
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", quantity="5", price="100")))
    assert (await response.json())["status"] == "success"
    await client.close()
    journal_file = config.data_path(config.journal.path)

    on_postgresql = attrs.evolve(config, journal=attrs.evolve(config.journal, url=pg_url))
    message = await start_fails(on_postgresql)
    assert f"its book (orders, positions) is in the SQLite journal {journal_file}, not in PostgreSQL" in message
    assert "remove [journal] url (and DATABASE_URL) to go on with the SQLite journal" in message
    assert message.endswith("or move that file away to start its paper accounts flat on PostgreSQL")
    assert pg_url not in message  # the password is in the URL

    client = await make_client(config)  # the way back: the position is where it was
    positions = await client.app[BROKERS]["paper"].positions()
    assert [(p.contract.symbol, p.net_quantity) for p in positions] == [("INFY", 5)]
    await client.close()

    journal_file.rename(journal_file.with_name("old-journal.sqlite3"))
    client = await make_client(on_postgresql)
    assert await client.app[BROKERS]["paper"].positions() == []
    await client.close()


async def test_another_accounts_book_does_not_stop_this_one(
    make_client: ClientFactory, config: Config, pg_url: str
) -> None:
    """The SQLite journal's file holds the book of account `paper` only: account `practice`, never joined, starts
    on PostgreSQL (its own book there, empty); `paper` alone would be refused."""
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", quantity="5", price="100")))
    assert (await response.json())["status"] == "success"
    await client.close()
    practice = attrs.evolve(
        config,
        journal=attrs.evolve(config.journal, url=pg_url),
        accounts={"practice": {"broker": "paper"}},
        routing=attrs.evolve(config.routing, accounts=("practice",)),
    )
    client = await make_client(practice)
    assert await client.app[BROKERS]["practice"].positions() == []
    await client.close()
