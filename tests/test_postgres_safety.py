"""The PostgreSQL store's safety fixes (issue 20's review): no password in errors, no claim released under a
recorded alert, one leader at a time, and the other fences between instances.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from helpers import SECRET
from server_process import run_cli

from tvbridge.alertqueue import QueueInsert
from tvbridge.config import load_config
from tvbridge.errors import ConfigError, JournalError
from tvbridge.halt import Halt, clear_halt, halt_path, read_halt, write_halt
from tvbridge.halt_sync import HaltSync
from tvbridge.journal import PlannedLeg
from tvbridge.parsing import make_converter
from tvbridge.store import postgres
from tvbridge.store.postgres import LEADER_LOCK, PostgresStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from pgcluster import PgCluster

# a password with an unencoded `/`: the driver's parser takes "S3CRET" for the port and quotes it
UNENCODED = "postgresql://tvbridge:S3CRET/x@127.0.0.1:1/x"


async def test_an_unparsable_url_does_not_show_the_password_at_start() -> None:
    """`serve` opening the store: the error names the fix, not the URL's pieces."""
    with pytest.raises(JournalError) as refused:
        await PostgresStore(UNENCODED).open()
    assert "S3CRET" not in str(refused.value)
    assert "percent-encode the password" in str(refused.value)


def test_an_unparsable_url_does_not_show_the_password_in_db_migrate(tmp_path: Path) -> None:
    env = {"TVBRIDGE_SERVER__DATA_DIR": str(tmp_path), "WEBHOOK_SECRET": SECRET, "DATABASE_URL": UNENCODED}
    done = run_cli(tmp_path, env, "db", "migrate")
    assert done.returncode == 1
    assert "S3CRET" not in done.stderr + done.stdout
    assert "journal.url cannot be parsed (percent-encode the password)" in done.stderr


async def test_the_health_detail_of_a_lost_database_names_no_host_port_or_user(own_pg_cluster: PgCluster) -> None:
    """`last_error` is `/health`'s journal detail, answered to anyone: it says the database is in trouble, and
    nothing about where it is or who logs in."""
    url = own_pg_cluster.create_database()
    store = PostgresStore(url)
    await store.open()
    try:
        own_pg_cluster.stop()
        for _ in range(3):  # the pooled connection found cut, then new connections refused
            with pytest.raises(JournalError):
                await store.unfinished()
        assert store.healthy is False
        assert store.last_error
        for revealing in ("127.0.0.1", str(own_pg_cluster.port), "tvbridge"):
            assert revealing not in store.last_error
    finally:
        await store.close()


async def test_a_recorded_alerts_claim_is_not_released_by_its_failure(pg_url: str) -> None:
    """An alert recorded (its orders may be out) whose answer failed (503: its results could not be written)
    keeps its claim: TradingView's resend, on this instance or another, learns the first copy's id and is
    answered from the journal, never placed again. A copy refused before it was recorded gives its claim back."""
    one, two = PostgresStore(pg_url), PostgresStore(pg_url)
    await one.open()
    await two.open()
    try:
        since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        assert await one.claim_dedupe("id:k", "first", since) is None
        await one.record_alert(
            alert_id="first", alert_type="single_order", payload={}, dedupe_key="id:k", source=None, legs=[]
        )
        await one.release_dedupe("id:k", "first")  # the middleware's release after a >= 400 answer
        assert await two.claim_dedupe("id:k", "resend", since) == "first"
        assert await one.claim_dedupe("id:unrecorded", "refused", since) is None
        await one.release_dedupe("id:unrecorded", "refused")
        assert await two.claim_dedupe("id:unrecorded", "resend", since) is None
    finally:
        await one.close()
        await two.close()


def lock_holders(cluster: PgCluster, url: str) -> list[str]:
    """The application names of the backends holding the leader's advisory lock."""
    database = url.rsplit("/", 1)[1]
    held = cluster.psql(
        "SELECT string_agg(a.application_name, '|') FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"  # noqa: S608 - constants
        f" WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = {LEADER_LOCK >> 32}"
        f" AND l.objid::bigint = {LEADER_LOCK & 0xFFFF_FFFF}",
        database,
    )
    return [name for name in held.split("|") if name]


async def test_concurrent_leadership_questions_keep_exactly_one_leader(pg_cluster: PgCluster, pg_url: str) -> None:
    """The queue loop and the square-off loop ask `is_leader` at the same moment: every answer of a round agrees,
    exactly one instance says yes, and it is the one whose backend holds the advisory lock (no orphaned lock held
    by an instance that says no, no error dropping the leader)."""
    stores = [PostgresStore(pg_url, lease_s=1.0) for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        for _ in range(5):
            answers = await asyncio.gather(*(store.is_leader() for store in stores for _ in range(4)))
            per_store = [set(answers[i * 4 : (i + 1) * 4]) for i in range(len(stores))]
            assert per_store.count({True}) == 1, per_store
            assert per_store.count({False}) == len(stores) - 1, per_store
            leader = stores[per_store.index({True})]
            holders = await asyncio.to_thread(lock_holders, pg_cluster, pg_url)
            assert holders == [f"tvbridge leader {leader.instance}"[:63]]
    finally:
        for store in stores:
            await store.close()


class PausingStore(PostgresStore):
    """A store whose `shared_halts` runs `meanwhile` after its read, as something else happening during the await."""

    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def shared_halts(self) -> dict[str, tuple[int, Halt | None]]:
        answer = await super().shared_halts()
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            await meanwhile()
        return answer


async def test_a_halt_written_during_a_sync_round_is_shared(pg_url: str, tmp_path: Path) -> None:
    """`tvbridge halt` writes the file while the sync round waits on the database: the halt reaches the shared
    row (every instance), instead of being taken for a file already in step."""
    store = PausingStore(pg_url)
    await store.open()
    try:
        path = halt_path(tmp_path)
        sync = HaltSync({"": path}, store)
        await sync.once()

        async def halt_here() -> None:
            write_halt(path, Halt(reason="fat finger", since="2026-12-06T04:00:00+00:00", by="cli"))

        store.meanwhile = halt_here
        await sync.once()
        await sync.once()
        _, shared = (await store.shared_halts())[""]
        assert shared is not None
        assert shared.reason == "fat finger"
    finally:
        await store.close()


async def test_a_resume_racing_another_instances_halt_does_not_undo_it(pg_url: str, tmp_path: Path) -> None:
    """A resumes while B halts again at the same moment: the shared row keeps B's halt and A's file takes it
    (compare-and-set on the row's version; when in doubt, trade nothing)."""
    a, b = PausingStore(pg_url), PostgresStore(pg_url)
    await a.open()
    await b.open()
    try:
        path = halt_path(tmp_path)
        first = Halt(reason="first", since="2026-12-06T04:00:00+00:00", by="a")
        write_halt(path, first)
        sync = HaltSync({"": path}, a)
        await sync.once()  # shared: halted "first"
        clear_halt(path)  # resumed on A
        again = Halt(reason="again on B", since="2026-12-06T04:01:00+00:00", by="b")

        async def halt_on_b() -> None:
            version, _ = (await b.shared_halts())[""]
            assert await b.share_halt(again, expected=version) is not None

        a.meanwhile = halt_on_b
        await sync.once()
        _, shared = (await b.shared_halts())[""]
        assert shared == again
        assert read_halt(path) == again
    finally:
        await a.close()
        await b.close()


async def test_a_fast_clock_does_not_take_over_a_living_instances_alert(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases run on the database's clock: an instance whose machine's clock is a minute ahead (well past the
    10 s lease) still sees the other instance's lease alive and leaves its running alert alone."""
    one, two = PostgresStore(pg_url), PostgresStore(pg_url)
    await one.open()
    await two.open()
    try:
        await one.record_alert(
            alert_id="A1",
            alert_type="single_order",
            payload={},
            dedupe_key=None,
            source=None,
            legs=[PlannedLeg(account="paper", leg_number=1, client_order_id="A1-1")],
        )
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 60)

        def ahead() -> str:
            return (datetime.now(UTC) + timedelta(seconds=60)).isoformat()

        monkeypatch.setattr(postgres, "_now", ahead)
        await two._renew_lease()  # noqa: SLF001 - the renewal a running instance does every lease_s / 3
        assert await two.unfinished() == []
        assert two.live_instances == 2
    finally:
        await one.close()
        await two.close()


async def test_an_instance_whose_lease_expired_sends_nothing_and_a_send_extends_the_lease(pg_url: str) -> None:
    """Fencing the broker call: with its lease expired (not yet taken over) an instance cannot mark a leg
    `sending`; with its lease alive, marking one extends it to at least `lease_s` from now, so the send ends
    before another instance may take the alert over."""
    one = PostgresStore(pg_url, lease_s=10.0)
    await one.open()
    try:
        for alert_id in ("A1", "A2"):
            await one.record_alert(
                alert_id=alert_id,
                alert_type="single_order",
                payload={},
                dedupe_key=None,
                source=None,
                legs=[PlannedLeg(account="paper", leg_number=1, client_order_id=f"{alert_id}-1")],
            )
        set_lease = "UPDATE instances SET lease_until = $2 WHERE instance_id = $1"
        soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        await one.run_write(lambda conn: conn.execute(set_lease, one.instance, soon))
        await one.mark_sending("A1", "paper", 1, None)
        until = await one.run_read(
            lambda conn: conn.fetchval(
                "SELECT lease_until::timestamptz - clock_timestamp() FROM instances WHERE instance_id = $1",
                one.instance,
            )
        )
        assert until > timedelta(seconds=8)
        await one.run_write(lambda conn: conn.execute(set_lease, one.instance, "2000-01-01T00:00:00+00:00"))
        with pytest.raises(JournalError, match="lease has expired"):
            await one.mark_sending("A2", "paper", 1, None)
        record = await one.get_alert("A2")
        assert record is not None
        assert record["legs"][0]["state"] != "sending"
    finally:
        await one.close()


def test_the_lease_must_outlast_the_slowest_broker_call(tmp_path: Path) -> None:
    env = {
        "WEBHOOK_SECRET": SECRET,
        "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path),
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/tv",
        "TVBRIDGE_JOURNAL__LEADER_LEASE_S": "3",
    }
    config = tmp_path / "config.toml"
    config.write_text('[accounts.slow]\nbroker = "paper"\nbroker_timeout_s = 5\n')
    with pytest.raises(ConfigError, match=r"journal.leader_lease_s: must exceed .*broker_timeout_s \(5 s\), got 3"):
        load_config(config, make_converter(), env, tmp_path)
    assert load_config(config, make_converter(), {**env, "TVBRIDGE_JOURNAL__LEADER_LEASE_S": "6"}, tmp_path)
    sqlite_env = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    assert load_config(config, make_converter(), sqlite_env, tmp_path)  # one instance: nothing taken over


async def test_a_new_leader_never_resends_rows_a_living_instance_is_sending(pg_url: str) -> None:
    """The old leader claimed a due row and is sending it when another instance becomes the leader: the new
    leader's settling leaves the row alone, cannot claim it, and cannot hand it over; the old leader hands it
    over. Once the claimer's lease has expired (it died mid-send), the new leader takes the row back."""
    one, two = PostgresStore(pg_url), PostgresStore(pg_url)
    await one.open()
    await two.open()
    try:
        due = datetime(2026, 12, 7, 3, 45, tzinfo=UTC)
        for alert_id in ("Q1", "Q2"):
            await one.record_alert(
                alert_id=alert_id,
                alert_type="single_order",
                payload={},
                dedupe_key=None,
                source=None,
                legs=[PlannedLeg(account="paper", leg_number=1, client_order_id=f"{alert_id}-1")],
                status="queued",
                also=QueueInsert(
                    alert_id=alert_id, entries=(("paper", due, "closed"),), leg_states=(("paper", "queued", "closed"),)
                ),
            )
        assert sorted(e.alert_id for e in await one.queue.claim_due(due)) == ["Q1", "Q2"]
        await two.queue.after_crash()  # two becomes the leader while one still sends
        assert await two.queue.claim_due(due) == []
        with pytest.raises(JournalError, match="no longer claimed by this instance"):
            await two.queue.hand_over("Q1", ["paper"])
        await one.queue.hand_over("Q1", ["paper"])
        await one.run_write(
            lambda conn: conn.execute(
                "UPDATE instances SET lease_until = '2000-01-01T00:00:00+00:00' WHERE instance_id = $1", one.instance
            )
        )
        assert [e.alert_id for e in await two.queue.claim_due(due)] == ["Q2"]  # Q1 was handed over: recovered
        with pytest.raises(JournalError, match="no longer claimed by this instance"):
            await one.queue.hand_over("Q2", ["paper"])
        await two.queue.hand_over("Q2", ["paper"])
    finally:
        await one.close()
        await two.close()
