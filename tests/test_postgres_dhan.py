"""Dhan's scheduled work on the leader only (issue 20): two real `tvbridge serve` processes on one PostgreSQL
database and one Dhan account, against ONE fake Dhan API (which, like Dhan, invalidates a token when it is
renewed). Near expiry only one RenewToken call is made and both instances order with the new token; the
leader's `kill -9` hands the renewal to the other within the lease; the token the leader shares is encrypted in
the database; the pre-open readiness check is notified once, by the leader. Clocks are the servers' injected
ones (`TVBRIDGE_TEST_NOW`); every wait is bounded."""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from durability_server import ADMIN_TOKEN, KillableServer, server_env
from fake_dhan import CLIENT_ID, TOKEN, FakeDhan, jwt
from helpers import alert, leg
from notify_sink import running_sink
from pgcluster import SHARED_KEY, PgCluster
from server_process import run_cli

from tvbridge_brokers.dhan.instruments import sample_master_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

LEASE_S = 3.0
POLL_S = LEASE_S / 2
"""How often a follower looks at the leader's token and asks for leadership (`cluster.poll_s`)."""
WAIT_S = 30.0


@pytest.fixture
async def fake_dhan() -> AsyncIterator[FakeDhan]:
    fake = FakeDhan()
    fake.master = sample_master_path().read_bytes()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def instance_env(fake: FakeDhan, data_dir: Path, url: str, token: str, **extra: str) -> dict[str, str]:
    """One instance: its own data directory and master file, the shared database and Dhan account."""
    data_dir.mkdir(parents=True, exist_ok=True)
    master = data_dir / "master.csv"
    shutil.copyfile(sample_master_path(), master)  # a live account refuses the shipped sample itself
    return {
        "TVBRIDGE_JOURNAL__URL": url,
        "TVBRIDGE_JOURNAL__LEADER_LEASE_S": str(LEASE_S),
        "TVBRIDGE_JOURNAL__SHARED_SECRET_KEY": SHARED_KEY,
        "TVBRIDGE_ROUTING__ACCOUNTS": '["dhan"]',
        "DHAN_CLIENT_ID": CLIENT_ID,
        "DHAN_ACCESS_TOKEN": token,
        "ENABLE_DHAN": "true",
        "TVBRIDGE_ACCOUNTS__DHAN__BASE_URL": fake.base_url,
        "TVBRIDGE_ACCOUNTS__DHAN__INSTRUMENTS_PATH": str(master),
        "TVBRIDGE_ACCOUNTS__DHAN__INSTRUMENTS_URL": fake.master_url,
        "TVBRIDGE_ACCOUNTS__DHAN__MAX_ORDERS_PER_S": "1000",
        "TVBRIDGE_FOLLOWUP__ENABLED": "false",
        **extra,
    }


async def start(server: KillableServer) -> KillableServer:
    return await asyncio.to_thread(server.start)


async def stop(*servers: KillableServer) -> None:
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            assert await asyncio.to_thread(server.terminate) == 0, server.err.read_text()[-2000:]


def order(i: int) -> dict[str, Any]:
    """An alert without TradingView's `timenow`: the two servers' clocks are pinned apart."""
    return alert({k: v for k, v in leg(symbol="RELIANCE", quantity=str(i + 1)).items() if k != "meta"}, id=f"dl-{i}")


async def place(session: aiohttp.ClientSession, server: KillableServer, body: dict[str, Any]) -> None:
    async with session.post(server.url + "/webhook", json=body) as response:
        answer = await response.json()
        assert (response.status, answer["status"]) == (200, "success"), answer


def order_tokens(fake: FakeDhan) -> list[str]:
    return [r.token for r in fake.requests if r.method == "POST" and r.path == "/v2/orders"]


def renewals(fake: FakeDhan) -> list[str]:
    """The token each RenewToken call renewed (generation would show here too)."""
    return [r.token if r.path == "/v2/RenewToken" else r.path for r in fake.token_calls()]


async def until(check: Callable[[], bool], what: str, within_s: float = WAIT_S) -> float:
    """Seconds until `check()` holds (polled: it reads another process's effects), failing after `within_s`."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(within_s):
            while True:
                if check():
                    return time.monotonic() - started
                await asyncio.sleep(0.05)  # polling another process's effects, bounded by the timeout
    except TimeoutError:
        raise AssertionError(f"not within {within_s:g} s: {what}") from None


def events(server: KillableServer, name: str) -> list[dict[str, Any]]:
    return [e for e in server.events() if e.get("event") == name]


async def test_one_renewal_for_two_instances_both_order_with_it_and_the_leaders_death_hands_renewal_over(
    tmp_path: Path, fake_dhan: FakeDhan, pg_cluster: PgCluster
) -> None:
    url = pg_cluster.create_database()
    first = jwt(time.time() + 1800)  # 30 min left: inside renew_before_s (1 h) on A's clock
    fake_dhan.valid_tokens = {first}
    a = await start(KillableServer(tmp_path / "a", instance_env(fake_dhan, tmp_path / "a", url, first), name="a"))
    assert renewals(fake_dhan) == [first]  # A leads: it renewed at its start
    [renewed] = fake_dhan.issued
    assert first not in fake_dhan.valid_tokens  # Dhan dropped it: anyone still using it gets DH-901
    # B's clock is 23.5 h ahead: the renewed token is inside B's renewal window, but B follows and renews nothing
    later = (datetime.now(UTC) + timedelta(hours=23, minutes=30)).isoformat()
    b_env = instance_env(fake_dhan, tmp_path / "b", url, first, TVBRIDGE_TEST_NOW=later)
    b = await start(KillableServer(tmp_path / "b", b_env, name="b"))
    try:
        assert renewals(fake_dhan) == [first]
        assert events(b, "dhan.token.adopted")
        assert [e["leader"] for e in events(a, "dhan.leadership")] == [True]
        assert [e["leader"] for e in events(b, "dhan.leadership")] == [False]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await place(session, a, order(1))
            await place(session, b, order(2))
            assert order_tokens(fake_dhan) == [renewed, renewed]
            assert renewals(fake_dhan) == [first]

            fake_dhan.now = lambda: time.time() + 23.5 * 3600  # tokens issued from here live 24 h on B's clock
            a.kill()
            took = await until(lambda: bool(events(b, "dhan.token.shared")), "B renewed and shared after A's death")
            assert renewals(fake_dhan) == [first, renewed]  # B renewed the token A had shared
            assert took <= LEASE_S + POLL_S, f"B took the renewal over {took:.1f} s after A's death"
            third = fake_dhan.issued[-1]
            await place(session, b, order(3))
            assert order_tokens(fake_dhan) == [renewed, renewed, third]
            assert [e["leader"] for e in events(b, "dhan.leadership")] == [False, True]
    finally:
        await stop(b)
    assert len(fake_dhan.token_calls()) == 2  # no ping-pong: one renewal per leader, no generation
    dump = pg_cluster.dump(url)
    assert "broker_shared" in dump
    assert "gAAAAA" in dump  # a Fernet token: the shared access token, encrypted
    logs = "".join(p.read_text() for s in (a, b) for p in (s.out, s.err))
    for token in (first, renewed, third):
        assert token not in dump
        assert token not in logs
        assert token.split(".")[1] not in dump + logs  # not even its claims part


async def test_the_pre_open_readiness_check_is_notified_once_by_the_leader(
    tmp_path: Path, fake_dhan: FakeDhan, pg_cluster: PgCluster
) -> None:
    """Both instances stand at 08:45 IST on a trading day, the check's moment, with a clock Dhan disagrees with:
    each checks its own account and shows the result on its own /status. The leader notifies everything; the
    follower only what is its own (its clock, its master file): the leader cannot see those."""
    url = pg_cluster.create_database()
    fake_dhan.date_skew_s = 30.0
    async with running_sink() as sink:
        at_the_check = {"TVBRIDGE_TEST_NOW": "2026-11-30T08:45:00+05:30"}
        servers = []
        for name in ("a", "b"):
            env = instance_env(fake_dhan, tmp_path / name, url, TOKEN, **at_the_check)
            # config.toml in the working directory (the data directory): the notification target
            (tmp_path / name / "config.toml").write_text(f'[notify]\nurls = ["{sink.url}"]\nmin_interval_s = 0\n')
            servers.append(await start(KillableServer(tmp_path / name, env, name=name)))
        a, b = servers
        try:
            await until(lambda: bool(events(a, "readiness.checked") and events(b, "readiness.checked")), "checked")
            [checked_a], [checked_b] = events(a, "readiness.checked"), events(b, "readiness.checked")
            assert (checked_a["ready"], checked_a["notified"]) == (False, True)
            assert (checked_b["ready"], checked_b["notified"]) == (False, True)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json"}
                async with session.get(b.url + "/status", headers=headers) as response:
                    summary = await response.json()
            [account] = summary["readiness"]["accounts"]
            assert {c["name"]: c["ok"] for c in account["checks"]}["clock"] is False  # the follower's own truth
            await sink.wait_for(2)
        finally:
            await stop(a, b)  # a notification held back is sent at shutdown: count after both stopped
        not_ready = [str(m) for m in sink.received if "Not ready for the open" in str(m)]
        assert len(not_ready) == 2, sink.received
        assert all("dhan clock" in m for m in not_ready)


async def test_a_shared_secret_is_encrypted_in_the_database_and_another_key_cannot_read_it(pg_url: str) -> None:
    """The store's side of the seam: a secret published by one instance is read back by another holding the
    same key, is not in the table as written, and an instance with another key gets a clear error, not garbage."""
    from cryptography.fernet import Fernet  # noqa: PLC0415 - the postgres extra's

    from tvbridge.cluster import SharedKeyError, StoreCluster, fernet_of  # noqa: PLC0415
    from tvbridge.store.postgres import PostgresStore  # noqa: PLC0415 - asyncpg is an optional extra

    stores = [PostgresStore(pg_url, lease_s=LEASE_S), PostgresStore(pg_url, lease_s=LEASE_S)]
    for store in stores:
        await store.open()
    try:
        mine = StoreCluster(stores[0], lease_s=LEASE_S, key=fernet_of(SHARED_KEY))
        same = StoreCluster(stores[1], lease_s=LEASE_S, key=fernet_of(SHARED_KEY))
        other = StoreCluster(stores[1], lease_s=LEASE_S, key=fernet_of(Fernet.generate_key().decode()))
        assert await mine.publish("dhan", "access_token", TOKEN, secret=True, expected=0) == 1
        assert await same.publish("dhan", "access_token", "late", secret=True, expected=0) is None  # lost the race
        shared = await same.load("dhan", "access_token")
        assert shared is not None
        assert (shared.value, shared.version) == (TOKEN, 1)
        [row] = await stores[0].fetch("SELECT value, secret FROM broker_shared")
        assert row["secret"] is True
        assert TOKEN not in row["value"]
        with pytest.raises(SharedKeyError, match="shared_secret_key differs"):
            await other.load("dhan", "access_token")
        # docs/postgresql.md's key rotation: the secret rows go, the first instance on the new key publishes again
        dropped = await stores[0].fetch("DELETE FROM broker_shared WHERE secret RETURNING name")
        assert [row["name"] for row in dropped] == ["access_token"]
        assert await other.load("dhan", "access_token") is None
        assert await other.publish("dhan", "access_token", "renewed", secret=True, expected=0) == 1
        shared = await other.load("dhan", "access_token")
        assert shared is not None
        assert shared.value == "renewed"
        assert await mine.is_leader() != await same.is_leader()  # one leader of the two
    finally:
        for store in stores:
            await store.close()


def test_db_new_key_prints_a_usable_key_and_the_server_refuses_a_bad_or_missing_one(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    from cryptography.fernet import Fernet  # noqa: PLC0415 - the postgres extra's

    done = run_cli(tmp_path, {}, "db", "new-key")
    assert done.returncode == 0, done.stderr
    Fernet(done.stdout.strip().encode())  # a valid key, or this raises
    fake_url = "http://127.0.0.1:1/v2"  # never reached: the start stops before any broker call
    base = server_env(tmp_path / "data") | {
        "TVBRIDGE_JOURNAL__URL": pg_cluster.create_database(),
        "TVBRIDGE_ROUTING__ACCOUNTS": '["dhan"]',
        "DHAN_CLIENT_ID": CLIENT_ID,
        "DHAN_ACCESS_TOKEN": TOKEN,
        "ENABLE_DHAN": "true",
        "TVBRIDGE_ACCOUNTS__DHAN__BASE_URL": fake_url,
    }
    bad = run_cli(tmp_path, {**base, "TVBRIDGE_JOURNAL__SHARED_SECRET_KEY": "not-a-key-hunter2"}, "serve")
    assert bad.returncode != 0
    assert "journal.shared_secret_key: not a Fernet key" in bad.stderr
    assert "hunter2" not in bad.stderr + bad.stdout
    missing = run_cli(tmp_path, base, "serve")
    assert missing.returncode != 0
    assert "journal.shared_secret_key is not set" in missing.stderr
