"""The Dhan account's pre-open readiness: each thing that would fail at the first alert is reported with its fix.

The real dhanhq client against the fake Dhan API. The clock is the machine's here (the clock check compares it
with the fake's `Date` header), except where a test moves it."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from fake_dhan import PIN, TOTP_SECRET, FakeDhan, Misbehave, jwt

from tvbridge.broker import BrokerContext, ReadinessCheck
from tvbridge_brokers.dhan import DhanBroker
from tvbridge_brokers.dhan.broker import IST

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(IST) + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def build(
    tmp_path: Path, clock: Clock, dhan_settings: dict[str, object], fake_dhan: FakeDhan
) -> AsyncIterator[Callable[..., Awaitable[DhanBroker]]]:
    built: list[DhanBroker] = []

    async def make(**changes: Any) -> DhanBroker:
        context = BrokerContext(account="dhan", data_dir=tmp_path / "data")
        settings = {**dhan_settings, "instruments_url": fake_dhan.master_url, "timeout_s": 2.0, **changes}
        broker = DhanBroker.from_settings(settings, context, clock=clock)
        built.append(broker)
        await broker.start()
        return broker

    yield make
    for broker in built:
        await broker.aclose()


def by_name(checks: list[ReadinessCheck]) -> dict[str, ReadinessCheck]:
    return {check.name: check for check in checks}


def token_for(fake: FakeDhan, hours: float) -> str:
    token = jwt((datetime.now(IST) + timedelta(hours=hours)).timestamp())
    fake.valid_tokens = {token}
    return token


async def test_a_healthy_account_is_ready(build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan) -> None:
    broker = await build(access_token=token_for(fake_dhan, 20))
    assert broker.capabilities.readiness
    checks = by_name(await broker.readiness(close_at=datetime.now(IST) + timedelta(hours=8)))
    assert list(checks) == ["token", "instruments", "reachable", "clock"]
    assert all(check.ok for check in checks.values()), checks
    assert "past today's close" in checks["token"].detail


async def test_a_token_that_dies_before_the_close_and_cannot_be_renewed_is_not_ready(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan
) -> None:
    fake_dhan.next_reply("renew", Misbehave.error("DH-905"), Misbehave.error("DH-905"))
    broker = await build(access_token=token_for(fake_dhan, 0.5))  # renewal at start refused
    check = by_name(await broker.readiness(close_at=datetime.now(IST) + timedelta(hours=8)))["token"]
    assert not check.ok
    assert "cannot be renewed" in check.detail
    assert "tvbridge dhan token set --account dhan" in check.detail


async def test_a_token_that_dies_before_the_close_is_ready_when_renewable(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan
) -> None:
    broker = await build(access_token=token_for(fake_dhan, 5))
    check = by_name(await broker.readiness(close_at=datetime.now(IST) + timedelta(hours=8)))["token"]
    assert check.ok
    assert "it will be renewed first" in check.detail


async def test_a_master_not_refreshed_today_is_not_ready(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan, dhan_master: Path
) -> None:
    old = (datetime.now(IST) - timedelta(days=3)).timestamp()
    os.utime(dhan_master, (old, old))
    fake_dhan.master = b"<html>maintenance</html>"  # every download fails
    broker = await build(access_token=token_for(fake_dhan, 20))
    check = by_name(await broker.readiness(close_at=datetime.now(IST) + timedelta(hours=8)))["instruments"]
    assert not check.ok
    assert "not refreshed today" in check.detail
    assert "not a usable Dhan instrument master" in check.detail
    assert "tvbridge dhan instruments refresh --account dhan" in check.detail


async def test_dhan_unreachable_or_refusing_is_not_ready(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan
) -> None:
    broker = await build(access_token=token_for(fake_dhan, 20))
    fake_dhan.next_reply("funds", Misbehave.html())
    check = by_name(await broker.readiness(close_at=datetime.now(IST) + timedelta(hours=8)))["reachable"]
    assert not check.ok
    assert "Dhan unreachable" in check.detail


async def test_a_clock_off_dhans_by_more_than_a_second_is_not_ready(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan
) -> None:
    broker = await build(access_token=token_for(fake_dhan, 20))
    fake_dhan.date_skew_s = -5.0  # Dhan's clock 5 s behind ours: ours is 5 s fast
    check = by_name(await broker.readiness(close_at=datetime.now(IST) + timedelta(hours=8)))["clock"]
    assert not check.ok
    assert re.search(r"clock is \+[45]\.\d s off Dhan's", check.detail), check.detail
    fake_dhan.date_skew_s = 0.0
    check = by_name(await broker.readiness(close_at=datetime.now(IST) + timedelta(hours=8)))["clock"]
    assert check.ok


async def test_a_rejected_token_that_cannot_be_generated_again_is_not_ready(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan
) -> None:
    broker = await build(
        access_token=token_for(fake_dhan, 20), pin=PIN, totp_secret=TOTP_SECRET, auth_url=fake_dhan.auth_url
    )
    fake_dhan.valid_tokens = set()  # revoked at Dhan
    fake_dhan.pin = "000000"  # and the configured PIN no longer works
    checks = by_name(await broker.readiness(close_at=datetime.now(IST) + timedelta(hours=8)))
    assert not checks["token"].ok
    assert "Dhan rejects the token (DH-901) and generating one failed" in checks["token"].detail
    assert PIN not in checks["token"].detail
    assert not checks["reachable"].ok


async def test_a_rejected_token_is_generated_again_during_the_check_when_it_can_be(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan
) -> None:
    broker = await build(
        access_token=token_for(fake_dhan, 20), pin=PIN, totp_secret=TOTP_SECRET, auth_url=fake_dhan.auth_url
    )
    fake_dhan.valid_tokens = set()  # revoked at Dhan; the PIN still works
    checks = by_name(await broker.readiness(close_at=datetime.now(IST) + timedelta(hours=8)))
    assert all(check.ok for check in checks.values()), checks
    assert len(fake_dhan.issued) == 1
