"""Several instances on one PostgreSQL store: an instance that is serving finishes the alerts another instance
left unfinished, once that instance's lease is gone (`recovery_ctx`'s adopt loop, every half
`journal.leader_lease_s`), in this process.

`test_postgres_instances.py` kills real instances, but mutation testing cannot see a subprocess: here the living
instance is the real app in-process, and the other instance is a `PostgresStore` of its own that journals an
alert after the app has started (so the start's own recovery cannot have taken it) and stops without finishing
it, as an instance killed mid-alert leaves it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import attrs
from helpers import alert, leg, with_accounts
from pgcluster import SHARED_KEY
from structlog.testing import capture_logs
from test_recovery_restart import broker_orders, client_order_id

from tvbridge.errors import JournalError
from tvbridge.journal import PlannedLeg
from tvbridge.keys import JOURNAL
from tvbridge.store.postgres import PostgresStore

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.config import Config

LEASE_S = 1.0


async def finished(client: Any, alert_id: str) -> dict[str, Any]:
    """The alert's journal record once it is no longer `accepted`: the serving app's pass runs on its own
    schedule (every LEASE_S / 2), so this polls, bounded (the machine is slow and shared)."""
    async with asyncio.timeout(20 * LEASE_S):
        while True:
            record = await client.app[JOURNAL].get_alert(alert_id)
            assert record is not None
            if record["status"] != "accepted":
                return dict(record)
            await asyncio.sleep(LEASE_S / 10)


async def left_unfinished(pg_url: str, alert_id: str, symbol: str) -> None:
    """Another instance journals `alert_id` (one pending leg of `symbol` on account `sim`) and stops before
    sending it, as an instance killed mid-alert leaves it."""
    other = PostgresStore(pg_url, lease_s=LEASE_S)
    await other.open()
    raw = alert(leg(symbol=symbol))
    await other.record_alert(
        alert_id=alert_id,
        alert_type=raw["alertType"],
        payload=raw,
        dedupe_key=None,
        source="127.0.0.1",
        legs=[PlannedLeg(account="sim", leg_number=1, client_order_id=client_order_id(alert_id, 1))],
        order_log_offset=0,
    )
    await other.close()


async def test_an_alert_another_instance_left_unfinished_is_finished_while_serving(
    make_client: ClientFactory, config: Config, pg_url: str
) -> None:
    """The app serves; then another instance journals alert E1 (one pending leg, on the ticker `NSE:INFY`) and
    stops before sending it.
    Within a few lease periods the serving app sends the leg once, with its client order id, and finishes E1:
    its status, its leg's order, no longer unfinished."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "broker_timeout_s": 0.5}})
    journal = attrs.evolve(config.journal, url=pg_url, shared_secret_key=SHARED_KEY, leader_lease_s=LEASE_S)
    config = attrs.evolve(config, journal=journal)
    client = await make_client(config)
    assert client.app[JOURNAL].shared

    await left_unfinished(pg_url, "E1", "NSE:INFY")  # a TradingView ticker: parsed by the converter

    record = await finished(client, "E1")
    assert (record["status"], [leg["state"] for leg in record["legs"]]) == ("success", ["placed"])
    assert [(o["client_order_id"], o["symbol"]) for o in broker_orders(config)] == [("E1-1", "INFY")]
    assert await client.app[JOURNAL].unfinished() == []


async def test_a_pass_the_database_fails_is_logged_and_the_next_pass_finishes_the_alert(
    make_client: ClientFactory, config: Config, pg_url: str
) -> None:
    """The database fails one pass (its list of unfinished alerts: an outage): a `recovery.failed` error line with
    the traceback, and the passes go on: the next one finishes the alert another instance left."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "broker_timeout_s": 0.5}})
    journal = attrs.evolve(config.journal, url=pg_url, shared_secret_key=SHARED_KEY, leader_lease_s=LEASE_S)
    config = attrs.evolve(config, journal=journal)
    client = await make_client(config)
    store = client.app[JOURNAL]
    listed = store.unfinished
    failures = [JournalError("the PostgreSQL journal is unreachable")]

    async def outage_once() -> list[str]:
        if failures:
            raise failures.pop()
        return await listed()

    with capture_logs() as logs:
        store.unfinished = outage_once  # type: ignore[method-assign]
        await left_unfinished(pg_url, "E2", "INFY")
        record = await finished(client, "E2")
    assert failures == []
    failed = [(e["log_level"], e.get("exc_info")) for e in logs if e["event"] == "recovery.failed"]
    assert failed == [("error", True)]
    assert record["status"] == "success"
    assert [o["client_order_id"] for o in broker_orders(config)] == ["E2-1"]


async def test_the_serving_app_looks_for_orphaned_alerts_every_half_lease(
    make_client: ClientFactory, config: Config, pg_url: str
) -> None:
    """While serving, the app asks the store for alerts a dead instance left unfinished every half
    `leader_lease_s` (recovery's module docstring): an orphan's legs wait at most half a lease after that
    instance's lease expired. Measured from the end of one pass's look-up to the start of the next (the pause
    between passes; a pause never ends early): not shorter than half the lease (a third: the database asked
    half as often again as documented), and well short of twice the lease (an orphan's order left waiting up to
    two whole leases). With a lease of 2 s the upper bound leaves 2 s for the event loop to wake up."""
    lease_s = 2.0
    config = with_accounts(config, {"sim": {"broker": "scripted", "broker_timeout_s": 0.5}})
    journal = attrs.evolve(config.journal, url=pg_url, shared_secret_key=SHARED_KEY, leader_lease_s=lease_s)
    client = await make_client(attrs.evolve(config, journal=journal))
    store = client.app[JOURNAL]
    listed = store.unfinished
    loop = asyncio.get_running_loop()
    asked: list[float] = []
    answered: list[float] = []
    third = asyncio.Event()

    async def timed() -> list[str]:
        asked.append(loop.time())
        if len(asked) == 3:
            third.set()
        try:
            return await listed()
        finally:
            answered.append(loop.time())

    store.unfinished = timed  # type: ignore[method-assign]
    async with asyncio.timeout(10 * lease_s):
        await third.wait()
    pauses = [start - end for end, start in zip(answered, asked[1:], strict=False)]
    assert len(pauses) == 2
    assert all(lease_s / 2 - 0.01 <= pause < 1.5 * lease_s for pause in pauses), pauses
