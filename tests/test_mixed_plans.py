"""Alerts whose plan mixes accounts that send now with accounts queued for the open or refused (issue 22's
review): what is journaled, answered again on a repeat, and sent after a crash."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import pytest
from helpers import alert, with_accounts

# the fixtures `clock` and `start` come with the helpers they serve
from test_tradingday import WEDNESDAY_22, Clock, admin, clock, ist, received, sessions_on, start  # noqa: F401

from tvbridge.errors import JournalError
from tvbridge.journal import Journal
from tvbridge.keys import SCHEDULER

if TYPE_CHECKING:
    from tvbridge.config import Config


def mixed(config: Config) -> Config:
    """At 22:00 IST: `live` sends now as an AMO, `s` is queued for the open, `r` refuses (market closed)."""
    return sessions_on(
        with_accounts(
            config,
            {
                "live": {"broker": "scripted", "when_closed": "amo"},
                "s": {"broker": "scripted"},
                "r": {"broker": "scripted", "when_closed": "reject"},
            },
        ),
        amo_brokers=("scripted",),
    )


def statuses(results: list[dict[str, Any]], key: str = "status") -> list[tuple[str, str]]:
    return sorted((r["account"], r[key]) for r in results)


ANSWERED = [("live", "success"), ("r", "failed"), ("s", "queued")]


@pytest.mark.sqlite_only  # leaves the SQLite journal as a kill -9 would
async def test_a_crash_mid_alert_does_not_send_the_queued_or_refused_accounts(
    start: Any,  # noqa: F811 - the fixture imported above
    config: Config,
    clock: Clock,  # noqa: F811
) -> None:
    config = mixed(config)
    clock.at = WEDNESDAY_22
    client = await start(config)
    response = await client.post("/webhook", json=alert())
    body = await response.json()
    assert statuses(body["results"]) == ANSWERED
    alert_id = body["alert_id"]
    await client.close()
    # what a kill -9 during live's order leaves: the plan's transaction and live's `sending` mark, nothing after
    db = sqlite3.connect(config.data_path(config.journal.path))
    with db:
        db.execute("UPDATE alerts SET status = 'accepted', response = NULL WHERE alert_id = ?", (alert_id,))
        db.execute("UPDATE legs SET result = NULL WHERE alert_id = ? AND account IN ('s', 'r')", (alert_id,))
        db.execute(
            "UPDATE legs SET state = 'sending', result = NULL, order_id = NULL WHERE alert_id = ? AND account = 'live'",
            (alert_id,),
        )
    db.close()

    client = await start(config)  # recovery runs at 22:00: the market is still closed
    assert len(received(config, "live")) == 1  # looked up, found, not sent again
    assert received(config, "s") == []
    assert received(config, "r") == []
    record = await (await client.get(f"/alerts/{alert_id}", headers=admin(client))).json()
    assert statuses(record["legs"], "state") == [("live", "placed"), ("r", "failed"), ("s", "queued")]

    clock.at = ist("2026-11-26T09:15")
    await client.app[SCHEDULER].run_due()
    assert len(received(config, "s")) == 1  # once, at the open
    assert received(config, "r") == []


async def test_the_journal_keeps_the_answer_a_mixed_plan_gave(start: Any, config: Config, clock: Clock) -> None:  # noqa: F811
    """The final record is the combined answer (every account, `scheduled_at`), not the running accounts' part
    alone, and a repeat of the alert is answered the same."""
    config = mixed(config)
    clock.at = WEDNESDAY_22
    client = await start(config)
    sent = alert()
    response = await client.post("/webhook", json=sent)
    body = await response.json()
    assert (response.status, body["status"], statuses(body["results"])) == (200, "partial", ANSWERED)
    assert "scheduled_at" in body

    record = await (await client.get(f"/alerts/{body['alert_id']}", headers=admin(client))).json()
    assert record["status"] == body["status"]
    assert statuses(record["response"]["results"]) == ANSWERED
    assert record["response"]["scheduled_at"] == body["scheduled_at"]
    repeat = await (await client.post("/webhook", json=sent)).json()
    assert statuses(repeat["results"]) == ANSWERED


async def test_an_alert_every_account_refuses_is_journaled_failed_with_its_plan(
    start: Any,  # noqa: F811
    config: Config,
    clock: Clock,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`when_closed = "reject"` on the only account, at 22:00: the plan's own commit says `failed`, so a crash
    (here: the answer's record failing) before the answer's record leaves it `failed`, never `queued`."""
    config = sessions_on(with_accounts(config, {"r": {"broker": "scripted", "when_closed": "reject"}}))
    clock.at = WEDNESDAY_22

    async def lost(*args: Any, **kwargs: Any) -> None:
        raise JournalError("journal unwritable")

    monkeypatch.setattr(Journal, "finish_alert", lost)
    client = await start(config)
    response = await client.post("/webhook", json=alert())
    body = await response.json()
    assert (response.status, body["status"]) == (200, "failed")
    await client.close()
    monkeypatch.undo()

    client = await start(config)
    record = await (await client.get(f"/alerts/{body['alert_id']}", headers=admin(client))).json()
    assert (record["status"], statuses(record["legs"], "state")) == ("failed", [("r", "failed")])
    assert received(config, "r") == []
