"""Fixtures for the Dhan broker tests: a running fake Dhan API and brokers wired to it (live or dry-run).

Only Dhan fixtures live here; each is prefixed `dhan_`/`fake_dhan` so the paper broker's fixtures can join this
file without clashing.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from dhan_support import MakeDhan, now
from fake_dhan import CLIENT_ID, TOKEN, FakeDhan

from tvbridge.broker import BrokerContext
from tvbridge_brokers.dhan import DhanBroker
from tvbridge_brokers.dhan.instruments import sample_master_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture
async def fake_dhan() -> AsyncIterator[FakeDhan]:
    fake = FakeDhan()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def dhan_master(tmp_path: Path) -> Path:
    """A copy of the shipped sample master (a live account refuses the shipped file itself)."""
    path = tmp_path / "master.csv"
    shutil.copyfile(sample_master_path(), path)
    return path


@pytest.fixture
def dhan_settings(fake_dhan: FakeDhan, dhan_master: Path) -> dict[str, object]:
    """A live account on the fake: short timeout so the hang tests stay fast."""
    return {
        "client_id": CLIENT_ID,
        "access_token": TOKEN,
        "live": True,
        "base_url": fake_dhan.base_url,
        "instruments_path": str(dhan_master),
        "timeout_s": 0.5,
        "max_orders_per_s": 1000,
    }


@pytest.fixture
async def make_dhan(tmp_path: Path) -> AsyncIterator[MakeDhan]:
    """Build and start a DhanBroker from a settings table; every one built is closed at teardown."""
    built: list[DhanBroker] = []

    async def make(settings: dict[str, Any], *, account: str = "dhan") -> DhanBroker:
        context = BrokerContext(account=account, data_dir=tmp_path / "data")
        broker = DhanBroker.from_settings(settings, context, clock=now)
        built.append(broker)
        await broker.start()
        return broker

    yield make
    for broker in built:
        await broker.aclose()


@pytest.fixture
async def dhan_live(make_dhan: MakeDhan, dhan_settings: dict[str, object]) -> DhanBroker:
    return await make_dhan(dhan_settings)


@pytest.fixture
async def dhan_dry(make_dhan: MakeDhan, dhan_settings: dict[str, object]) -> DhanBroker:
    return await make_dhan({**dhan_settings, "live": False})
