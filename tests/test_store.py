"""The store interface (`tvbridge.store`): SQLite and PostgreSQL keep the same records, and PostgreSQL's claims
hold across instances (issue 20).

The parity test drives both stores through one alert's life and compares what each answers, so a column
written differently by one of them (a leg state, a result, the queue) shows up as a difference. The
cross-instance tests open two stores on one database, as two servers would, and race them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from helpers import SECRET
from pgcluster import PgCluster
from server_process import run_cli

from tvbridge.alertqueue import QueueInsert, create_schema
from tvbridge.config import load_config
from tvbridge.errors import JournalError
from tvbridge.journal import Journal, OrderStateRecord, PlannedLeg
from tvbridge.models import LegResult, LegStatus
from tvbridge.parsing import make_converter
from tvbridge.store.migrations import LATEST
from tvbridge.store.postgres import PostgresStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tvbridge.store import Store

CLOCK_KEYS = frozenset({"received_at", "updated_at", "order_updated_at", "created_at"})


@pytest.fixture
async def postgres(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_url)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[Journal]:
    store = Journal(tmp_path / "journal.sqlite3")
    await store.open()
    yield store
    await store.close()


def result(leg_number: int, status: LegStatus, **fields: Any) -> LegResult:
    return LegResult(
        leg_number=leg_number,
        account="paper",
        broker="paper",
        symbol="RELIANCE",
        exchange="NSE",
        transaction="B",
        quantity="10",
        order_type="MKT",
        product_type="C",
        price="0",
        status=status,
        message=fields.pop("message", "ok"),
        **fields,
    )


def without_clock(value: Any) -> Any:
    """`value` with the moments (which differ between two runs) taken out."""
    if isinstance(value, dict):
        return {k: without_clock(v) for k, v in value.items() if k not in CLOCK_KEYS}
    if isinstance(value, list):
        return [without_clock(v) for v in value]
    return value


async def one_alert_life(store: Store) -> dict[str, Any]:
    """Accept an alert (two legs, one account queued), send, answer, follow; return everything a caller reads."""
    await store.ensure_tables(create_schema)  # the queue's table (at start, `alertqueue.scheduler_ctx` does this)
    legs = [PlannedLeg(account="paper", leg_number=n, client_order_id=f"A1-{n}") for n in (1, 2)]
    legs.append(PlannedLeg(account="later", leg_number=1, client_order_id="A1-L1"))
    due = datetime(2026, 12, 7, 3, 45, tzinfo=UTC)
    await store.record_alert(
        alert_id="A1",
        alert_type="multi_leg_order",
        payload={"secret": SECRET, "alertType": "multi_leg_order", "order_legs": [{"symbol": "RELIANCE"}]},
        dedupe_key="id:k1",
        source="52.89.214.238",
        legs=legs,
        also=QueueInsert(
            alert_id="A1", entries=(("later", due, "NSE closed"),), leg_states=(("later", "queued", "NSE closed"),)
        ),
        order_log_offset=42,
    )
    await store.mark_sending("A1", "paper", 1, None)
    placed = result(1, LegStatus.SUCCESS, order_id="P1", client_order_id="A1-1", order_state="open", filled_quantity=0)
    await store.mark_sending("A1", "paper", 2, placed)
    failed = result(2, LegStatus.FAILED, message="rejected: no margin", client_order_id="A1-2")
    await store.finish_alert("A1", "partial", {"status": "partial", "results": ["..."]}, [placed, failed])
    await store.set_order_state(
        "A1", "paper", 1, OrderStateRecord(state="partially_filled", filled_quantity=4, average_price="2900.5")
    )
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    return {
        "order_log_start": await store.order_log_start(),
        "alert": await store.get_alert("A1"),
        "missing": await store.get_alert("nope"),
        "by_key": await store.find_by_dedupe_key("id:k1", since),
        "by_other_key": await store.find_by_dedupe_key("id:k2", since),
        "claim_recorded": await store.claim_dedupe("id:k1", "A2", since),
        "followed": await store.followed_orders(),
        "orders_today": await store.count_orders("paper", since=datetime.now(UTC) - timedelta(hours=1)),
        "queue": [e.as_json() for e in await store.queue.entries()],
        "next_due": await store.queue.next_due(),
        "claimed_early": await store.queue.claim_due(due - timedelta(seconds=1)),
        "claimed": [e.as_json() for e in await store.queue.claim_due(due)],
        "probe": await store.probe(),
        "healthy": store.healthy,
    }


async def test_both_stores_keep_the_same_records(sqlite: Journal, postgres: PostgresStore) -> None:
    """The same alert's life on SQLite and on PostgreSQL reads back the same, moment for moment aside: the stored
    payload without the secret, each leg's state, result and order columns, the dedupe look-up, recovery's and
    follow-up's work lists, the daily order count and the queue."""
    on_sqlite = without_clock(await one_alert_life(sqlite))
    on_postgres = without_clock(await one_alert_life(postgres))
    assert on_postgres == on_sqlite
    record = on_postgres["alert"]
    assert "secret" not in record["payload"]
    assert [(leg["account"], leg["leg_number"], leg["state"]) for leg in record["legs"]] == [
        ("later", 1, "queued"),
        ("paper", 1, "placed"),
        ("paper", 2, "failed"),
    ]
    assert record["legs"][1]["order_state"] == "partially_filled"
    assert on_postgres["order_log_start"] == 0  # nothing unfinished any more
    assert on_postgres["claim_recorded"] == "A1"
    assert [row["alert_id"] for row in on_postgres["followed"]] == ["A1"]
    assert on_postgres["orders_today"] == 1
    assert on_postgres["claimed_early"] == []
    assert [row["account"] for row in on_postgres["claimed"]] == ["later"]
    assert on_postgres["probe"] is True


async def test_a_dedupe_claim_is_one_row_across_instances(pg_url: str) -> None:
    """Two instances claiming one key at the same moment, twenty times each: exactly one claim wins; the others
    learn the winner's alert id. Released (the winner was refused), the key can be claimed again."""
    one, two = PostgresStore(pg_url), PostgresStore(pg_url)
    await one.open()
    await two.open()
    try:
        since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        claims = [(store, f"{name}-{i}") for i in range(20) for name, store in (("one", one), ("two", two))]
        answers = await asyncio.gather(*(store.claim_dedupe("id:same", alert_id, since) for store, alert_id in claims))
        winners = [alert_id for (_, alert_id), answer in zip(claims, answers, strict=True) if answer is None]
        assert len(winners) == 1
        assert {answer for answer in answers if answer is not None} == set(winners)
        await one.release_dedupe("id:same", winners[0])
        assert await two.claim_dedupe("id:same", "again", since) is None
        assert await one.claim_dedupe("id:same", "late", since) == "again"
    finally:
        await one.close()
        await two.close()


async def test_a_claim_taken_over_cannot_be_recorded(postgres: PostgresStore) -> None:
    """A copy whose claim another copy took over (it stayed unrecorded too long) is refused at record time with
    `JournalError` (503, resend), so the alert is not recorded twice."""
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert await postgres.claim_dedupe("id:k", "first", since) is None
    await postgres.release_dedupe("id:k", "first")
    assert await postgres.claim_dedupe("id:k", "second", since) is None
    with pytest.raises(JournalError, match="being accepted elsewhere"):
        await postgres.record_alert(
            alert_id="first", alert_type="single_order", payload={}, dedupe_key="id:k", source=None, legs=[]
        )
    await postgres.record_alert(
        alert_id="second", alert_type="single_order", payload={}, dedupe_key="id:k", source=None, legs=[]
    )
    assert await postgres.get_alert("first") is None
    assert postgres.healthy  # a lost claim is not a database failure


async def test_a_dead_instances_alert_is_taken_over_once_and_fenced(pg_url: str) -> None:
    """An unfinished alert belongs to the instance running it: another instance does not recover it while that
    one's lease lives; once the lease has expired it takes the alert over (and only one taker gets it), and the
    old owner can no longer mark a leg `sending` nor record a result (it would double what the new owner does)."""
    one, two, three = PostgresStore(pg_url), PostgresStore(pg_url), PostgresStore(pg_url)
    for store in (one, two, three):
        await store.open()
    try:
        legs = [PlannedLeg(account="paper", leg_number=1, client_order_id="A1-1")]
        await one.record_alert(
            alert_id="A1", alert_type="single_order", payload={}, dedupe_key=None, source=None, legs=legs
        )
        assert await one.unfinished() == []  # its own running alert
        assert await two.unfinished() == []  # one's lease is alive
        await one.run_write(
            lambda conn: conn.execute(
                "UPDATE instances SET lease_until = '2000-01-01T00:00:00+00:00' WHERE instance_id = $1", one.instance
            )
        )
        taken = await asyncio.gather(two.unfinished(), three.unfinished())
        assert sorted(taken, key=len) == [[], ["A1"]]
        taker = two if taken[0] else three
        with pytest.raises(JournalError, match="taken over by instance"):
            await one.mark_sending("A1", "paper", 1, None)
        with pytest.raises(JournalError, match="taken over by instance"):
            await one.finish_alert("A1", "success", {"status": "success"})
        await taker.mark_sending("A1", "paper", 1, None)
        await taker.finish_alert("A1", "success", {"status": "success"}, [result(1, LegStatus.SUCCESS, order_id="P1")])
        record = await taker.get_alert("A1")
        assert record is not None
        assert (record["status"], record["legs"][0]["state"]) == ("success", "placed")
        assert one.healthy  # a lost lease is not a database failure
    finally:
        for store in (one, two, three):
            await store.close()


async def test_one_leader_at_a_time_and_a_successor_when_it_goes(pg_url: str) -> None:
    """Of three instances exactly one is the leader; when it goes (its connection to the database closes, as
    when its process dies), another becomes the leader at its next look."""
    stores = [PostgresStore(pg_url, lease_s=1.0) for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        first = [await store.is_leader() for store in stores]
        assert first.count(True) == 1
        assert [await store.is_leader() for store in stores] == first  # it stays with the leader
        leader = stores[first.index(True)]
        await leader.close()
        rest = [store for store in stores if store is not leader]
        assert [await store.is_leader() for store in rest].count(True) == 1
    finally:
        for store in stores:
            await store.close()


async def test_a_due_queue_row_is_claimed_by_one_instance(pg_url: str) -> None:
    """Two schedulers on two instances claiming at the open: every due row is claimed once, by one of them."""
    one, two = PostgresStore(pg_url), PostgresStore(pg_url)
    await one.open()
    await two.open()
    try:
        due = datetime(2026, 12, 7, 3, 45, tzinfo=UTC)
        for i in range(30):
            await one.record_alert(
                alert_id=f"Q{i}",
                alert_type="single_order",
                payload={},
                dedupe_key=None,
                source=None,
                legs=[PlannedLeg(account="paper", leg_number=1, client_order_id=f"Q{i}-1")],
                status="queued",
                also=QueueInsert(alert_id=f"Q{i}", entries=(("paper", due, "closed"),)),
            )
        claims = await asyncio.gather(*(store.queue.claim_due(due) for store in (one, two, one, two)))
        ids = [entry.alert_id for claim in claims for entry in claim]
        assert sorted(ids) == sorted(f"Q{i}" for i in range(30))
    finally:
        await one.close()
        await two.close()


async def test_the_schema_is_versioned_and_migrated_once(pg_cluster: PgCluster) -> None:
    """Two instances starting together on an empty database migrate it once; a database whose schema is newer
    than this tvbridge is refused at start, not written in a shape the code does not know."""
    url = pg_cluster.create_database()
    stores = [PostgresStore(url), PostgresStore(url)]
    await asyncio.gather(*(store.open() for store in stores))
    for store in stores:
        await store.close()
    database = url.rsplit("/", 1)[1]
    versions = pg_cluster.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version", database)
    assert versions == ",".join(str(v) for v in range(1, LATEST + 1))
    pg_cluster.psql(f"INSERT INTO schema_version VALUES ({LATEST + 1})", database)  # noqa: S608 - a constant
    with pytest.raises(JournalError, match=f"version {LATEST + 1}, newer than this tvbridge knows"):
        await PostgresStore(url).open()


def test_db_migrate_command(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """`tvbridge db migrate` creates the schema, then says it is up to date; without `journal.url` it is a config
    error (exit 2) naming the key; an unreachable database is exit 1 with one line and no password."""
    url = pg_cluster.create_database()
    env = {"TVBRIDGE_SERVER__DATA_DIR": str(tmp_path), "WEBHOOK_SECRET": SECRET, "DATABASE_URL": url}
    first = run_cli(tmp_path, env, "db", "migrate")
    assert (first.returncode, first.stdout.strip()) == (0, f"schema version {LATEST} (was 0)")
    again = run_cli(tmp_path, env, "db", "migrate")
    assert (again.returncode, again.stdout.strip()) == (0, f"schema version {LATEST}: up to date")
    unset = run_cli(tmp_path, {**env, "DATABASE_URL": ""}, "db", "migrate")
    assert unset.returncode == 2
    assert "journal.url is not set" in unset.stderr
    down = run_cli(
        tmp_path, {**env, "DATABASE_URL": "postgresql://tvbridge:hunter2-password@127.0.0.1:1/x"}, "db", "migrate"
    )
    assert down.returncode == 1
    assert "cannot be migrated" in down.stderr
    assert "hunter2" not in down.stderr + down.stdout
    assert "Traceback" not in down.stderr


def test_database_url_sets_the_store_and_is_masked(tmp_path: Path) -> None:
    """`DATABASE_URL` (the platforms' name) sets `journal.url` unless `TVBRIDGE_JOURNAL__URL` does; a URL that is
    not PostgreSQL's is refused naming the key; `check-config` masks it (it carries the password)."""
    converter = make_converter()
    env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path)}
    url = "postgresql://u:pw-secret@db.internal:5432/tv"
    assert load_config(None, converter, {**env, "DATABASE_URL": url}, tmp_path).journal.url == url
    both = {**env, "DATABASE_URL": url, "TVBRIDGE_JOURNAL__URL": "postgresql://other/tv"}
    assert load_config(None, converter, both, tmp_path).journal.url == "postgresql://other/tv"
    assert load_config(None, converter, env, tmp_path).journal.url == ""
    bad = run_cli(tmp_path, {**env, "DATABASE_URL": "mysql://u:pw-secret@h/tv"}, "check-config")
    assert bad.returncode == 2
    assert "journal: url must be a postgresql:// URL" in bad.stderr
    assert "pw-secret" not in bad.stderr + bad.stdout
    shown = run_cli(tmp_path, {**env, "DATABASE_URL": url}, "check-config")
    assert shown.returncode == 0, shown.stderr
    assert "pw-secret" not in shown.stdout + shown.stderr
