"""The server refreshes Dhan's instrument master itself: at start when the file is older than the last trading
day's `instruments_refresh_at`, then each trading day; a bad download never replaces a good file. The master is
served over HTTP by the fake Dhan; time is moved by the broker's clock."""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from dhan_support import NOW, leg, request
from fake_dhan import FakeDhan, Misbehave

from tvbridge.broker import BrokerContext, BrokerRejectedError
from tvbridge.models import Exchange, Instrument, OptionType, OrderType, Product
from tvbridge_brokers.dhan import DhanBroker
from tvbridge_brokers.dhan.instruments import sample_master_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

NEW_OPTION = (
    "NSE,D,43999,OPTIDX,1,NIFTY-Dec2026-24500-CE,65.0,NIFTY 02 DEC 24500 CALL,2026-12-02 14:30:00,24500.00000,CE,"
    "5.0000,W,OPTIDX,NA,NIFTY\n"
)
"""A weekly option Dhan lists on the morning of 2026-11-26: not in the sample master."""
NEW_OPTION_LEG: Any = leg(
    exchange=Exchange.NFO,
    symbol="NIFTY",
    instrument=Instrument.OPTION,
    option_type=OptionType.CALL,
    strike_price=Decimal(24500),
    expiry_date=date(2026, 12, 2),
    quantity=65,
    product=Product.INTRADAY,
    order_type=OrderType.MARKET,
)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def notes() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def stale_master(dhan_master: Path) -> Path:
    """The sample master, written the day before NOW's 08:30 refresh."""
    old = (NOW - timedelta(days=1)).timestamp()
    os.utime(dhan_master, (old, old))
    return dhan_master


@pytest.fixture
def fresh_master(dhan_master: Path) -> Path:
    """The sample master, written at 09:00 on NOW's day (after its 08:30 refresh)."""
    at = (NOW - timedelta(hours=1)).timestamp()
    os.utime(dhan_master, (at, at))
    return dhan_master


@pytest.fixture
def served(fake_dhan: FakeDhan) -> bytes:
    fake_dhan.master = sample_master_path().read_bytes() + NEW_OPTION.encode()
    return fake_dhan.master


@pytest.fixture
async def build(
    tmp_path: Path, clock: Clock, notes: list[tuple[str, str]], dhan_settings: dict[str, object], fake_dhan: FakeDhan
) -> AsyncIterator[Callable[..., Awaitable[DhanBroker]]]:
    built: list[DhanBroker] = []

    async def make(**changes: object) -> DhanBroker:
        context = BrokerContext(
            account="dhan", data_dir=tmp_path / "data", notify=lambda kind, text: notes.append((kind, text))
        )
        settings = {**dhan_settings, "instruments_url": fake_dhan.master_url, **changes}
        broker = DhanBroker.from_settings(settings, context, clock=clock)
        built.append(broker)
        await broker.start()
        return broker

    yield make
    for broker in built:
        await broker.aclose()


def downloads(fake: FakeDhan) -> int:
    return sum(1 for r in fake.requests if r.path == "/api-data/api-scrip-master.csv")


async def test_a_stale_master_is_refreshed_at_start_and_a_contract_listed_today_resolves_without_a_restart(
    build: Callable[..., Awaitable[DhanBroker]], stale_master: Path, served: bytes, fake_dhan: FakeDhan
) -> None:
    with structlog.testing.capture_logs() as events:
        broker = await build()
        await broker.maintain()  # waits for the refresh the start began
    assert downloads(fake_dhan) == 1
    assert stale_master.read_bytes() == served
    assert oct(stale_master.stat().st_mode & 0o777) == "0o644"
    [loaded] = [e["rows"] for e in events if e["event"] == "dhan.instruments.loaded"]
    assert any(e["event"] == "dhan.instruments.refreshed" and e["rows"] == loaded + 1 for e in events)  # NEW_OPTION
    result = await broker.place(request(NEW_OPTION_LEG))
    assert result.order_id
    assert fake_dhan.placed()[-1]["securityId"] == "43999"
    await broker.maintain()
    assert downloads(fake_dhan) == 1  # fresh now: not downloaded again the same day


async def test_a_fresh_master_is_not_downloaded_and_the_next_trading_day_refreshes_it(
    build: Callable[..., Awaitable[DhanBroker]], fresh_master: Path, served: bytes, fake_dhan: FakeDhan, clock: Clock
) -> None:
    broker = await build()  # the file was written after NOW's 08:30: fresh
    await broker.maintain()
    assert downloads(fake_dhan) == 0
    with pytest.raises(BrokerRejectedError, match="expiry_date 2026-12-02"):
        await broker.place(request(NEW_OPTION_LEG))
    clock.at = NOW.replace(day=26, hour=8, minute=29)
    await broker.maintain()
    assert downloads(fake_dhan) == 0
    clock.at = NOW.replace(day=26, hour=8, minute=31)
    await broker.maintain()
    assert downloads(fake_dhan) == 1
    assert (await broker.place(request(NEW_OPTION_LEG))).order_id


async def test_no_refresh_on_a_weekend(
    build: Callable[..., Awaitable[DhanBroker]], fresh_master: Path, served: bytes, fake_dhan: FakeDhan, clock: Clock
) -> None:
    broker = await build()
    clock.at = datetime(2026, 11, 28, 9, 0, tzinfo=NOW.tzinfo)  # Saturday
    await broker.maintain()
    assert downloads(fake_dhan) == 1  # Friday 27th 08:30 was missed: refreshed once
    clock.at = datetime(2026, 11, 29, 12, 0, tzinfo=NOW.tzinfo)  # Sunday
    await broker.maintain()
    assert downloads(fake_dhan) == 1


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        (Misbehave.truncated(), "download of"),
        (Misbehave.html(), "HTTP 502"),
        (Misbehave.error("500"), "HTTP 500"),
        (Misbehave.html_page_ok(), "not a usable Dhan instrument master"),
    ],
    ids=["truncated", "html-502", "http-500", "html-200"],
)
async def test_a_broken_download_keeps_the_old_file_logs_and_notifies(
    *,
    build: Callable[..., Awaitable[DhanBroker]],
    stale_master: Path,
    served: bytes,
    fake_dhan: FakeDhan,
    notes: list[tuple[str, str]],
    how: Misbehave,
    reason: str,
) -> None:
    before = stale_master.read_bytes()
    fake_dhan.next_reply("master", how)
    with structlog.testing.capture_logs() as events:
        broker = await build()
        await broker.maintain()
    assert stale_master.read_bytes() == before
    assert [p.name for p in stale_master.parent.iterdir() if p.name.endswith(".part")] == []
    [failed] = [e for e in events if e["event"] == "dhan.instruments.refresh_failed"]
    assert reason in failed["error"]
    assert [kind for kind, _ in notes] == ["instruments_refresh_failed"]
    assert "tvbridge dhan instruments refresh --account dhan" in notes[0][1]
    assert (await broker.place(request())).order_id  # the old master still works


async def test_a_cut_down_master_is_refused(
    build: Callable[..., Awaitable[DhanBroker]], stale_master: Path, fake_dhan: FakeDhan, clock: Clock
) -> None:
    lines = sample_master_path().read_bytes().splitlines(keepends=True)
    fake_dhan.master = b"".join(lines[:1] + lines[len(lines) // 2 :])  # the header and half the rows
    before = stale_master.read_bytes()
    broker = await build()
    await broker.maintain()
    assert stale_master.read_bytes() == before
    assert downloads(fake_dhan) == 1
    clock.at += timedelta(minutes=5)
    await broker.maintain()
    assert downloads(fake_dhan) == 1  # retried after 10 minutes, not every minute
    fake_dhan.master = sample_master_path().read_bytes()
    clock.at += timedelta(minutes=6)
    await broker.maintain()
    assert downloads(fake_dhan) == 2
    assert stale_master.read_bytes() == fake_dhan.master


async def test_a_live_account_without_a_master_file_downloads_it_at_start(
    build: Callable[..., Awaitable[DhanBroker]], served: bytes, fake_dhan: FakeDhan, tmp_path: Path
) -> None:
    broker = await build(instruments_path="")  # the default: <data_dir>/dhan-api-scrip-master.csv, not there yet
    assert (tmp_path / "data" / "dhan-api-scrip-master.csv").read_bytes() == served
    assert downloads(fake_dhan) == 1
    assert (await broker.place(request(NEW_OPTION_LEG))).order_id
