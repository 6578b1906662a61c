"""The kill switch across instances (tvbridge/halt_sync.py): two servers on one PostgreSQL store, each with its
own data directory and halt file; a halt or a resume on one is in force on the other within a bounded time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import attrs
from aiohttp import web
from aiohttp.test_utils import TestClient
from helpers import ClientFactory, alert, with_accounts

from tvbridge.config import Config
from tvbridge.halt import halt_path, set_halt
from tvbridge.keys import CREDENTIALS

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
