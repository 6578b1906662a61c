"""What the journal keeps of an alert: everything recovery and `GET /alerts/<id>` need, and never the secret."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import attrs
import pytest
from helpers import SECRET, alert, leg

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.config import Config

ADMIN_TOKEN = "admin-token-0123456789abcdef"

pytestmark = pytest.mark.sqlite_only  # reads the SQLite journal file itself


async def test_the_secret_is_not_kept_in_the_journal_nor_shown_by_get_alert(
    make_client: ClientFactory, config: Config
) -> None:
    """A placed alert and a stale one are journaled with their legs and meta but without `secret`: not in the
    stored payload, not anywhere in the journal's files (the WAL included), not in `GET /alerts/<id>`."""
    config = attrs.evolve(config, server=attrs.evolve(config.server, admin_token=ADMIN_TOKEN))
    client = await make_client(config)
    old = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    placed = await client.post("/webhook", json=alert(leg(symbol="INFY")))
    stale = await client.post("/webhook", json=alert(leg(symbol="TCS", meta={"timenow": old})))
    assert (placed.status, stale.status) == (200, 422)
    journal = config.data_path(config.journal.path)

    for response, symbol in ((placed, "INFY"), (stale, "TCS")):
        alert_id = (await response.json())["alert_id"]
        shown = await client.get(f"/alerts/{alert_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        record = await shown.json()
        assert shown.status == 200
        assert record["payload"]["order_legs"][0]["symbol"] == symbol  # the alert is there...
        assert "secret" not in record["payload"]  # ...without its secret
        assert SECRET not in await shown.text()
        with sqlite3.connect(journal) as conn:
            [stored] = conn.execute("SELECT payload FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
        assert symbol in stored
        assert SECRET not in stored
    files = [journal, *journal.parent.glob(f"{journal.name}-*")]
    assert any(path.name.endswith("-wal") for path in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path.name
