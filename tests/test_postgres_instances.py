"""Two real `tvbridge serve` processes sharing one PostgreSQL database (issue 20): one truth, one order.

Both instances place on live Dhan against one fake Dhan API (this process), which places a repeated
correlationId a second time, as a broker that forgives nothing: a double order is seen, never hidden. The
database is a real PostgreSQL server (tests/support/pgcluster.py); the outage test stops and starts its own.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from durability_server import KillableServer
from fake_dhan import CLIENT_ID, TOKEN, FakeDhan
from helpers import alert, leg
from pgcluster import SHARED_KEY, PgCluster

from tvbridge_brokers.dhan.instruments import sample_master_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

ALERTS = 12
RECOVER_WITHIN_S = 30.0


@pytest.fixture
async def fake_dhan() -> AsyncIterator[FakeDhan]:
    fake = FakeDhan()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def dhan_env(fake: FakeDhan, tmp_path: Path, url: str) -> dict[str, str]:
    master = tmp_path / "master.csv"
    if not master.exists():
        shutil.copyfile(sample_master_path(), master)  # a live account refuses the shipped sample itself
    return {
        "TVBRIDGE_JOURNAL__URL": url,
        "TVBRIDGE_JOURNAL__SHARED_SECRET_KEY": SHARED_KEY,
        "TVBRIDGE_ROUTING__ACCOUNTS": '["dhan"]',
        "DHAN_CLIENT_ID": CLIENT_ID,
        "DHAN_ACCESS_TOKEN": TOKEN,
        "ENABLE_DHAN": "true",
        "TVBRIDGE_ACCOUNTS__DHAN__BASE_URL": fake.base_url,
        "TVBRIDGE_ACCOUNTS__DHAN__INSTRUMENTS_PATH": str(master),
        "TVBRIDGE_ACCOUNTS__DHAN__MAX_ORDERS_PER_S": "1000",
        "TVBRIDGE_FOLLOWUP__ENABLED": "false",  # the fake's order book is not what these tests are about
    }


async def start(server: KillableServer) -> KillableServer:
    """Start a server off the event loop (the fake Dhan API it talks to at start runs on this loop)."""
    return await asyncio.to_thread(server.start)


async def stop(*servers: KillableServer) -> None:
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            assert await asyncio.to_thread(server.terminate) == 0


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with session.post(url + "/webhook", json=body) as response:
        return response.status, await response.json()


async def health(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with session.get(url + "/health") as response:
        return response.status, await response.json()


def trade(i: int) -> dict[str, Any]:
    """One alert with the trader's own id (its dedupe key), two legs."""
    return alert(
        leg(symbol="RELIANCE", quantity=str(i + 1)),
        leg(symbol="INFY", quantity=str(i + 1), sort_order="2", transactionType="S"),
        id=f"pg-{i}",
    )


def stored_alert_ids(cluster: PgCluster, url: str) -> set[str]:
    database = url.rsplit("/", 1)[1]
    return set(cluster.psql("SELECT alert_id FROM alerts", database).split())


async def test_the_same_alert_sent_to_two_instances_at_once_places_one_order(
    tmp_path: Path, fake_dhan: FakeDhan, pg_cluster: PgCluster
) -> None:
    """TradingView's resend landing on the other server at the same moment: for each alert, exactly one copy runs
    and the broker gets each leg once; the other copy is answered `duplicate` with the first one's alert id and
    results (or 503 to be resent, never a second run)."""
    url = pg_cluster.create_database()
    env = dhan_env(fake_dhan, tmp_path, url)
    a = await start(KillableServer(tmp_path / "a", env, name="a"))
    b = await start(KillableServer(tmp_path / "b", env, name="b"))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            answers = [
                await asyncio.gather(post(session, a.url, trade(i)), post(session, b.url, trade(i)))
                for i in range(ALERTS)
            ]
    finally:
        await stop(a, b)
    placed = Counter(str(o.get("correlationId")) for o in fake_dhan.placed())
    assert placed, "nothing was placed"
    assert max(placed.values()) == 1, f"a leg placed twice: {placed.most_common(3)}"
    assert len(placed) == 2 * ALERTS
    duplicates = 0
    for first, second in answers:
        runs = [body for status, body in (first, second) if status == 200 and body["status"] == "success"]
        repeats = [body for status, body in (first, second) if status in {200, 202} and body["status"] == "duplicate"]
        assert len(runs) == 1, (first, second)
        assert all(r["duplicate_of"] == runs[0]["alert_id"] for r in repeats)
        assert all(r["results"] == runs[0]["results"] for r in repeats if r["first_status"] == "success")
        duplicates += len(repeats)
    assert duplicates >= ALERTS // 2  # most repeats are answered, not refused
    assert {
        body["alert_id"] for pair in answers for status, body in pair if status == 200 and body["status"] == "success"
    } <= (stored_alert_ids(pg_cluster, url))


async def wait_for_health(session: aiohttp.ClientSession, url: str, wanted: int) -> dict[str, Any]:
    deadline = time.monotonic() + RECOVER_WITHIN_S
    while True:
        status, body = await health(session, url)
        if status == wanted:
            return body
        assert time.monotonic() < deadline, f"/health still {status} after {RECOVER_WITHIN_S} s: {body}"
        await asyncio.sleep(0.2)


async def test_database_outage_is_503_and_the_server_recovers_by_itself(
    tmp_path: Path, fake_dhan: FakeDhan, own_pg_cluster: PgCluster
) -> None:
    """PostgreSQL stopped under the server: `/webhook` and `/health` answer 503, nothing is acknowledged and
    nothing sent; started again: `/health` turns 200 by itself (no restart) and the resent alert is placed once."""
    url = own_pg_cluster.create_database()
    server = await start(KillableServer(tmp_path / "a", dhan_env(fake_dhan, tmp_path, url), name="a"))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            status, body = await post(session, server.url, trade(0))
            assert (status, body["status"]) == (200, "success")
            await asyncio.to_thread(own_pg_cluster.stop)
            down = await wait_for_health(session, server.url, 503)
            assert down["checks"]["journal"]["ok"] is False
            refused = [await post(session, server.url, trade(i)) for i in (1, 2, 3)]
            assert [status for status, _ in refused] == [503, 503, 503]
            assert all("resend" in body["message"] or "journal" in body["message"] for _, body in refused)
            assert len(fake_dhan.placed()) == 2  # the first alert's two legs: nothing sent while down
            await asyncio.to_thread(own_pg_cluster.start)
            await wait_for_health(session, server.url, 200)
            status, body = await post(session, server.url, trade(1))  # TradingView's resend
            assert (status, body["status"]) == (200, "success")
    finally:
        await stop(server)
    placed = Counter(str(o.get("correlationId")) for o in fake_dhan.placed())
    assert len(placed) == 4
    assert max(placed.values()) == 1
    assert len(stored_alert_ids(own_pg_cluster, url)) == 2


LEASE = {"TVBRIDGE_JOURNAL__LEADER_LEASE_S": "3"}


async def post_or_none(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]] | None:
    """(status, body), or None when the server died before answering."""
    try:
        return await post(session, url, body)
    except (aiohttp.ClientError, TimeoutError):
        return None


def table(cluster: PgCluster, url: str, sql: str) -> list[list[str]]:
    database = url.rsplit("/", 1)[1]
    out = cluster.psql(sql, database)
    return [line.split("|") for line in out.splitlines() if line]


async def wait_until_finished(cluster: PgCluster, url: str, within_s: float = RECOVER_WITHIN_S) -> None:
    """Until no alert in the database is unfinished (`accepted`) or queued, within `within_s`."""
    async with asyncio.timeout(within_s):
        while True:
            if not table(cluster, url, "SELECT alert_id FROM alerts WHERE status IN ('accepted', 'queued')"):
                return
            await asyncio.sleep(0.2)  # polling another process's records, bounded by the timeout


async def test_an_instance_killed_in_a_burst_has_its_alerts_finished_by_the_other(
    tmp_path: Path, fake_dhan: FakeDhan, pg_cluster: PgCluster
) -> None:
    """A burst shared by two instances; one dies by SIGKILL right after a broker call, before journaling its
    answer (`after_send`). Once its lease has expired, the living instance finishes its unfinished alerts as
    a restart would: it looks each open leg up and sends only what Dhan lacks. Every leg the journal holds is
    at Dhan exactly once, and every alert answered 2xx is finished in the journal."""
    url = pg_cluster.create_database()
    env = {**dhan_env(fake_dhan, tmp_path, url), **LEASE}
    dying = await start(KillableServer(tmp_path / "a", {**env, "TVBRIDGE_TEST_CRASH_AT": "after_send:5"}, name="a"))
    living = await start(KillableServer(tmp_path / "b", env, name="b"))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            answers = await asyncio.gather(
                *(post_or_none(session, (dying if i % 2 else living).url, trade(100 + i)) for i in range(16))
            )
            assert await asyncio.to_thread(dying.wait, 30) == -9
            await wait_until_finished(pg_cluster, url)
            taken_over = [e for e in living.events() if e.get("event") == "recovery.alert"]
            assert taken_over, "the living instance recovered nothing"
    finally:
        await stop(living)
    placed = Counter(str(o.get("correlationId")) for o in fake_dhan.placed())
    assert max(placed.values()) == 1, f"a leg placed twice: {placed.most_common(3)}"
    legs = table(pg_cluster, url, "SELECT client_order_id, state FROM legs")
    assert {cid for cid, state in legs if state == "placed"} == set(placed)
    statuses = dict(table(pg_cluster, url, "SELECT alert_id, status FROM alerts"))
    acknowledged = [
        body["alert_id"] for answer in answers if answer is not None for status, body in [answer] if status < 300
    ]
    assert acknowledged
    assert all(statuses[alert_id] == "success" for alert_id in acknowledged)
    assert None in answers  # the kill did cut into the burst


async def test_the_leaders_death_hands_the_opens_queue_to_another_instance(
    tmp_path: Path, fake_dhan: FakeDhan, pg_cluster: PgCluster
) -> None:
    """An alert queued 30 s before the open on a two-instance pair; the leader (which runs the queue) is killed
    before the open. The other instance takes the lead within the lease and sends the alert at the open, once."""
    url = pg_cluster.create_database()
    before_open = {"TVBRIDGE_SESSIONS__ENABLED": "true", "TVBRIDGE_TEST_NOW": "2026-11-30T09:14:30+05:30"}
    env = {**dhan_env(fake_dhan, tmp_path, url), **LEASE, **before_open}
    leader = await start(KillableServer(tmp_path / "a", env, name="a"))
    follower = await start(KillableServer(tmp_path / "b", env, name="b"))
    try:
        assert [e for e in leader.events() if e.get("event") == "store.leader"]
        assert not [e for e in follower.events() if e.get("event") == "store.leader"]
        body = alert({k: v for k, v in leg().items() if k != "meta"})  # no timenow: the clocks are pinned
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            status, answer = await post(session, follower.url, body)
        assert (status, answer["status"]) == (202, "queued"), answer
        leader.kill()
        await wait_until_finished(pg_cluster, url, within_s=60)  # the open is up to 30 s away on the clocks
        assert [e for e in follower.events() if e.get("event") == "queue.sending"]
    finally:
        await stop(follower)
    placed = [str(o.get("correlationId")) for o in fake_dhan.placed()]
    assert len(placed) == 1
    statuses = dict(table(pg_cluster, url, "SELECT alert_id, status FROM alerts"))
    assert statuses == {answer["alert_id"]: "success"}


async def test_order_follow_up_runs_on_the_leader_only_and_moves_with_it(
    tmp_path: Path, fake_dhan: FakeDhan, pg_cluster: PgCluster
) -> None:
    """An order resting open at Dhan, placed through the follower B: the leader A looks it up (B's order, read
    from the database) and B never does; each instance calls Dhan with its own token, so the fake tells them
    apart. A killed (-9): B becomes the leader, looks the order up, and records its fill."""
    url = pg_cluster.create_database()
    token_b = "tok-B-SECRET-0123456789abcdef"
    fake_dhan.valid_tokens.add(token_b)
    followup = {
        "TVBRIDGE_FOLLOWUP__ENABLED": "true",
        "TVBRIDGE_FOLLOWUP__FIRST_INTERVAL_S": "0.2",
        "TVBRIDGE_FOLLOWUP__MAX_INTERVAL_S": "0.5",
    }
    env = {**dhan_env(fake_dhan, tmp_path, url), **LEASE, **followup}
    leader = await start(KillableServer(tmp_path / "a", env, name="a"))
    follower = await start(KillableServer(tmp_path / "b", {**env, "DHAN_ACCESS_TOKEN": token_b}, name="b"))

    def lookups(token: str) -> int:
        return sum(
            1 for r in fake_dhan.requests if r.method == "GET" and r.path.startswith("/v2/orders/") and r.token == token
        )

    async def until(condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(RECOVER_WITHIN_S):
                while True:
                    if condition():
                        return
                    await asyncio.sleep(0.1)  # polling the fake's record of another process's calls, bounded
        except TimeoutError:
            raise AssertionError(f"not within {RECOVER_WITHIN_S} s: {what}") from None

    try:
        assert [e for e in leader.events() if e.get("event") == "store.leader"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            status, body = await post(session, follower.url, alert(leg(), id="rests"))
        assert (status, body["status"]) == (200, "success"), body
        [order_id] = list(fake_dhan.orders)
        await until(lambda: lookups(TOKEN) >= 3, "the leader looks up the follower's order")
        assert lookups(token_b) == 0
        leader.kill()
        await until(lambda: lookups(token_b) >= 1, "the new leader looks the order up")
        fake_dhan.trade(order_id, price="2900")
        await until(lambda: table(pg_cluster, url, "SELECT order_state FROM legs") == [["filled"]], "the fill recorded")
        assert [e for e in follower.events() if e.get("event") == "followup.leading"]
    finally:
        await stop(follower)
