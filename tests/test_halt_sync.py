"""The kill switch across instances (tvbridge/halt_sync.py): two servers on one PostgreSQL store, each with its
own data directory and halt file; a halt or a resume on one is in force on the other within a bounded time."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from helpers import ClientFactory, alert, with_accounts
from pgcluster import PgCluster
from structlog.testing import capture_logs

from tvbridge import halt_sync
from tvbridge.config import Config
from tvbridge.halt import Halt, clear_halt, halt_path, read_halt, set_halt
from tvbridge.halt_sync import HaltSync
from tvbridge.keys import CREDENTIALS
from tvbridge.store.migrations import MIGRATIONS
from tvbridge.store.postgres import PostgresStore
from tvbridge.strategies import strategy_halt_path

Client = TestClient[web.Request, web.Application]
WITHIN_S = 15.0


def admin(client: Client) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}


async def until(condition: Callable[[], bool]) -> None:
    """Poll a file another task writes on its own schedule, within `WITHIN_S`."""
    async with asyncio.timeout(WITHIN_S):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


def instance(config: Config, data_dir: Path, url: str) -> Config:
    config = with_accounts(config, {"s": {"broker": "scripted"}})
    return attrs.evolve(
        config,
        server=attrs.evolve(config.server, data_dir=data_dir),
        journal=attrs.evolve(config.journal, url=url),
    )


async def test_a_halt_on_one_instance_halts_the_other(
    make_client: ClientFactory, config: Config, tmp_path: Path, pg_url: str
) -> None:
    """POST /admin/halt on A: B's /webhook answers 503 "trading halted" with A's reason and sends nothing;
    POST /admin/resume on B: A places again."""
    a = await make_client(instance(config, tmp_path / "a", pg_url))
    b = await make_client(instance(config, tmp_path / "b", pg_url))
    assert (await b.post("/webhook", json=alert(id="before"))).status == 200
    response = await a.post("/admin/halt", json={"reason": "fat finger on A"}, headers=admin(a))
    assert (await response.json())["halted"] is True
    await until(halt_path(tmp_path / "b").exists)
    refused = await b.post("/webhook", json=alert(id="during"))
    assert (refused.status, (await refused.json())["message"]) == (503, "trading halted: fat finger on A")
    assert (await b.get("/health")).status == 503
    assert (await b.post("/admin/resume", headers=admin(b))).status == 200
    await until(lambda: not halt_path(tmp_path / "a").exists())
    assert (await a.post("/webhook", json=alert(id="after"))).status == 200
    placed = [
        p for d in ("a", "b") if (f := tmp_path / d / "scripted-s.jsonl").exists() for p in f.read_text().splitlines()
    ]
    assert len(placed) == 2


async def test_a_server_starting_halted_or_into_a_halt_is_halted(
    make_client: ClientFactory, config: Config, tmp_path: Path, pg_url: str
) -> None:
    """A halt file left on one machine (`tvbridge halt` while it was stopped) halts every instance once it
    starts; an instance starting while the others are halted is halted before its first request."""
    set_halt(halt_path(tmp_path / "a"), reason="halted while stopped", by="cli")
    a = await make_client(instance(config, tmp_path / "a", pg_url))
    b = await make_client(instance(config, tmp_path / "b", pg_url))
    refused = await b.post("/webhook", json=alert())
    assert (refused.status, (await refused.json())["message"]) == (503, "trading halted: halted while stopped")
    assert (await a.post("/webhook", json=alert())).status == 503


async def test_a_strategys_switch_is_shared_on_its_own_and_compared_and_set(pg_url: str, tmp_path: Path) -> None:
    """Two instances' syncs on one database: alpha halted on A halts alpha on B and nothing else; a change
    shared from a stale version is refused (compare-and-set); alpha resumed on B resumes it on A and wakes A's
    queue once (`on_resume`), while beta and all trading stay as they were."""
    stores = [PostgresStore(pg_url), PostgresStore(pg_url)]
    for store in stores:
        await store.open()
    woken: list[str] = []
    dirs = [tmp_path / "a", tmp_path / "b"]
    paths = [
        {"": halt_path(d), "alpha": strategy_halt_path(d, "alpha"), "beta": strategy_halt_path(d, "beta")} for d in dirs
    ]
    a, b = (
        HaltSync(p, s, on_resume=functools.partial(woken.append, n))
        for p, s, n in zip(paths, stores, "ab", strict=True)
    )
    try:
        await a.once()
        await b.once()
        halted = set_halt(paths[0]["alpha"], reason="alpha misfires", by="cli")
        await a.once()
        await b.once()
        assert read_halt(paths[1]["alpha"]) == halted
        assert [read_halt(paths[1][s]) for s in ("", "beta")] == [None, None]
        version, shared = (await stores[1].shared_halts())["alpha"]
        assert shared == halted
        assert await stores[1].share_halt(None, expected=version - 1, switch="alpha") is None
        assert (await stores[0].shared_halts())["alpha"] == (version, halted)
        clear_halt(paths[1]["alpha"])
        await b.once()
        await a.once()
        assert read_halt(paths[0]["alpha"]) is None
        assert woken == ["a"]
        assert set(await stores[0].shared_halts()) <= {"", "alpha"}
    finally:
        for store in stores:
            await store.close()


async def test_a_halt_made_while_a_resume_from_another_instance_is_read_is_kept_and_shared(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All trading halted and synced; B resumes; while A's round reads the database, an operator halts A again.
    A's new halt stays in its file (it is not taken for the old one and cleared by B's resume), is shared the
    next round, and halts B: a halt wins."""
    stores = [PostgresStore(pg_url), PostgresStore(pg_url)]
    for store in stores:
        await store.open()
    paths = [halt_path(tmp_path / "a"), halt_path(tmp_path / "b")]
    woken: list[str] = []
    a, b = (
        HaltSync({"": p}, s, on_resume=functools.partial(woken.append, n))
        for p, s, n in zip(paths, stores, "ab", strict=True)
    )
    try:
        set_halt(paths[0], reason="first", by="cli")
        await a.once()
        await b.once()
        assert read_halt(paths[1]) is not None
        clear_halt(paths[1])
        await b.once()  # B's resume is shared
        read_database = stores[0].shared_halts
        again: list[Halt] = []

        async def halted_during_the_read() -> dict[str, tuple[int, Halt | None]]:
            again.append(set_halt(paths[0], reason="second", by="cli"))
            return await read_database()

        monkeypatch.setattr(stores[0], "shared_halts", halted_during_the_read)
        await a.once()
        monkeypatch.undo()
        assert read_halt(paths[0]) == again[0]
        await a.once()
        await b.once()
        assert read_halt(paths[1]) == again[0]
        assert woken == []
    finally:
        for store in stores:
            await store.close()


async def test_a_halt_file_that_cannot_be_written_is_retried_next_round(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refuses B's halt file once (ENOSPC): the sync logs the reason and goes on, and A's halt reaches
    B's file once the disk takes it again, instead of B trading on while A is halted."""
    stores = [PostgresStore(pg_url), PostgresStore(pg_url)]
    for store in stores:
        await store.open()
    paths = [halt_path(tmp_path / "a"), halt_path(tmp_path / "b")]
    a, b = (HaltSync({"": p}, s) for p, s in zip(paths, stores, strict=True))
    refusals: list[str] = []

    def full_once(path: Path, halt: Halt) -> None:
        monkeypatch.undo()
        refusals.append(str(path))
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        await a.once()
        await b.once()
        halted = set_halt(paths[0], reason="stop", by="cli")
        await a.once()
        monkeypatch.setattr(halt_sync, "write_halt", full_once)
        with capture_logs() as events:
            syncing = asyncio.create_task(b.loop())
            try:
                await until(lambda: read_halt(paths[1]) == halted)
            finally:
                syncing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await syncing
        assert refusals == [str(paths[1])]
        [failed] = [e for e in events if e["event"] == "halt.sync_failed"]
        assert failed["log_level"] == "error"
        assert "No space left on device" in failed["error"]
    finally:
        for store in stores:
            await store.close()


async def test_a_database_halted_by_the_previous_release_stays_halted(pg_cluster: PgCluster) -> None:
    """A database at schema 7 (the release before the strategies' switches) with all trading halted: migrated, it is still
    halted, and an instance still on the previous release during a rolling upgrade reads and resumes the global
    switch with its own statements (`WHERE id = 1`), beside a strategy's row."""
    url = pg_cluster.create_database()
    database = url.rsplit("/", 1)[1]
    old = "".join(MIGRATIONS[:7])
    pg_cluster.psql(
        f"CREATE TABLE schema_version (version INTEGER NOT NULL); {old};"  # noqa: S608 - constants
        " INSERT INTO schema_version SELECT generate_series(1, 7);"
        " UPDATE halt SET version = 3, halted = true, reason = 'old release', since = 's', by_whom = 'cli'",
        database,
    )
    store = PostgresStore(url)
    await store.open()
    try:
        assert (await store.shared_halts())[""] == (3, Halt(reason="old release", since="s", by="cli"))
        assert await store.share_halt(Halt(reason="r", since="s", by="b"), expected=0, switch="alpha") == 1
        previous_release = pg_cluster.psql(
            "UPDATE halt SET version = version + 1, halted = false WHERE id = 1 AND version = 3 RETURNING version",
            database,
        )
        assert previous_release.splitlines()[0] == "4"
        assert (await store.shared_halts())[""] == (4, None)
        assert pg_cluster.psql("SELECT count(*) FROM halt WHERE id = 1", database) == "1"
    finally:
        await store.close()
