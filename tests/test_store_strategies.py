"""The strategies' reads added after the issue-19 review (orders not final in a contract, a strategy's open
brackets, whose order an id is, fills with their time and flatten mark, and the queue leaving a halted
strategy's rows) read the same on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
from test_store import postgres, result, sqlite  # noqa: F401 - the two stores' fixtures

from tvbridge.alertqueue import QueueInsert, create_schema
from tvbridge.journal import PlannedLeg
from tvbridge.models import LegStatus

if TYPE_CHECKING:
    from tvbridge.journal import Journal
    from tvbridge.store import Store
    from tvbridge.store.postgres import PostgresStore

KEY = "NSE|RELIANCE|EQ||||I"


async def strategy_reads(store: Store) -> dict[str, Any]:
    """alpha: a bracket entry (filled, its stop resting) and an open order, with a queued account; then an
    operator's flatten (`default`) sells 10 in the contract."""
    await store.ensure_tables(create_schema)
    due = datetime(2026, 12, 7, 3, 45, tzinfo=UTC)
    legs = [PlannedLeg(account="paper", leg_number=n, client_order_id=f"A1-{n}") for n in (1, 2)]
    legs.append(PlannedLeg(account="later", leg_number=1, client_order_id="A1-L1"))
    await store.record_alert(
        alert_id="A1",
        alert_type="multi_leg_order",
        payload={"alertType": "multi_leg_order"},
        dedupe_key=None,
        source="test",
        legs=legs,
        also=QueueInsert(alert_id="A1", entries=(("later", due, "closed"),), leg_states=(("later", "queued", "c"),)),
        strategy="alpha",
    )
    bracket = (
        {"part": "entry", "order_id": "P1", "state": "filled"},
        {"part": "stop_loss", "order_id": "P2", "state": "trigger_pending"},
    )
    entry = result(
        1,
        LegStatus.SUCCESS,
        order_id="P1",
        client_order_id="A1-1",
        order_state="filled",
        filled_quantity=10,
        bracket=bracket,
        strategy="alpha",
        position_key=KEY,
    )
    resting = result(
        2,
        LegStatus.SUCCESS,
        order_id="P3",
        client_order_id="A1-2",
        order_state="open",
        filled_quantity=0,
        strategy="alpha",
        position_key=KEY,
    )
    for leg in (entry, resting):
        await store.mark_sending("A1", "paper", leg.leg_number, None)
    await store.finish_alert("A1", "success", {"status": "success"}, [entry, resting])
    await store.record_alert(
        alert_id="F1",
        alert_type="flatten",
        payload={"flatten": {"account": "paper"}},
        dedupe_key=None,
        source="flatten",
        legs=[PlannedLeg(account="paper", leg_number=1, client_order_id="F1-1")],
    )
    close = result(
        1,
        LegStatus.SUCCESS,
        order_id="P4",
        client_order_id="F1-1",
        order_state="filled",
        filled_quantity=10,
        position_key=KEY,
    )
    close = attrs.evolve(close, transaction="S")
    await store.mark_sending("F1", "paper", 1, None)
    await store.finish_alert("F1", "success", {"status": "success"}, [close])
    return {
        "unsettled": await store.unsettled("paper", KEY),
        "unsettled_other": await store.unsettled("paper", "NSE|INFY|EQ||||I"),
        "brackets": await store.bracket_entries("alpha", "paper"),
        "owners_stop": await store.order_strategies("paper", "P2"),
        "owners_close": await store.order_strategies("paper", "P4"),
        "owners_unknown": await store.order_strategies("paper", "X"),
        "fills": [(f.strategy, f.key, f.side, f.quantity, f.resets, bool(f.at)) for f in await store.fills("paper")],
        "next_due_halted": await store.queue.next_due(halted=["alpha"]),
        "claimed_halted": await store.queue.claim_due(due, halted=["alpha"]),
        "claimed": [e.alert_id for e in await store.queue.claim_due(due, halted=["beta"])],
    }


async def test_both_stores_read_the_strategies_alike(sqlite: Journal, postgres: PostgresStore) -> None:  # noqa: F811
    on_sqlite = await strategy_reads(sqlite)
    assert on_sqlite == {
        "unsettled": {"A1-1", "A1-2"},
        "unsettled_other": set(),
        "brackets": [("P1", KEY, "B", 10)],
        "owners_stop": {"alpha"},
        "owners_close": {"default"},
        "owners_unknown": set(),
        "fills": [("alpha", KEY, "B", 10, False, True), ("default", KEY, "S", 10, True, True)],
        "next_due_halted": None,
        "claimed_halted": [],
        "claimed": ["A1"],
    }
    assert await strategy_reads(postgres) == on_sqlite
