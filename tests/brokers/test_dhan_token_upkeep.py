"""The unattended day's token: its expiry known, renewed before it runs out, generated from PIN + TOTP when it
has expired or Dhan rejects it, stored atomically (0600), swapped into the running client, and a notification
when none of that is possible. The real dhanhq client against the fake Dhan API; time moved by the clock."""

from __future__ import annotations

import json
import logging
import stat
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from dhan_support import NOW, request
from fake_dhan import PIN, TOKEN, TOTP_SECRET, FakeDhan, Misbehave, jwt
from server_process import run_cli

from tvbridge.broker import BrokerAuthError, BrokerContext
from tvbridge_brokers.dhan import DhanBroker
from tvbridge_brokers.dhan.settings import parse_settings
from tvbridge_brokers.dhan.token import token_expiry, token_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable


class Clock:
    """The broker's exchange clock, moved by the test."""

    def __init__(self, at: datetime = NOW) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def epoch(self) -> float:
        return self.at.timestamp()


Build = "Callable[..., Awaitable[DhanBroker]]"


@pytest.fixture
def clock(fake_dhan: FakeDhan) -> Clock:
    clock = Clock()
    fake_dhan.now = clock.epoch  # the fake's tokens live 24 h from the test's "now"
    return clock


@pytest.fixture
def notes() -> list[tuple[str, str]]:
    return []


@pytest.fixture
async def build(
    tmp_path: Path, clock: Clock, notes: list[tuple[str, str]]
) -> AsyncIterator[Callable[..., Awaitable[DhanBroker]]]:
    built: list[DhanBroker] = []

    async def make(settings: dict[str, Any], *, account: str = "dhan") -> DhanBroker:
        context = BrokerContext(
            account=account, data_dir=tmp_path / "data", notify=lambda kind, text: notes.append((kind, text))
        )
        broker = DhanBroker.from_settings(settings, context, clock=clock)
        built.append(broker)
        await broker.start()
        return broker

    yield make
    for broker in built:
        await broker.aclose()


def expiring_in(clock: Clock, delta: timedelta, fake: FakeDhan) -> str:
    token = jwt((clock.at + delta).timestamp())
    fake.valid_tokens = {token}
    return token


def order_tokens(fake: FakeDhan) -> list[str]:
    return [r.token for r in fake.requests if r.method == "POST" and r.path == "/v2/orders"]


def with_totp(settings: dict[str, object], fake: FakeDhan) -> dict[str, object]:
    return {**settings, "pin": PIN, "totp_secret": TOTP_SECRET, "auth_url": fake.auth_url}


async def test_a_token_30_minutes_from_expiry_is_renewed_at_start_and_the_next_order_carries_the_new_one(
    build: Callable[..., Awaitable[DhanBroker]],
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    clock: Clock,
    tmp_path: Path,
) -> None:
    old = expiring_in(clock, timedelta(minutes=30), fake_dhan)
    with structlog.testing.capture_logs() as events:
        broker = await build({**dhan_settings, "access_token": old})
    [new] = fake_dhan.issued
    assert [r.path for r in fake_dhan.token_calls()] == ["/v2/RenewToken"]
    assert broker.token_expires_at == token_expiry(new)
    assert broker.token_expires_at == clock.at + timedelta(hours=24)
    await broker.place(request())
    assert order_tokens(fake_dhan) == [new]
    renewed = [e for e in events if e["event"] == "dhan.token_renewed"]
    assert renewed
    assert renewed[0]["expires_at"] == "2026-11-26T10:00:00+05:30"
    store = token_path(tmp_path / "data", "dhan")
    assert store.read_text().strip() == new
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    health = await broker.health()
    assert health.ok
    assert "expires 2026-11-26 10:00 IST" in health.detail


async def test_a_token_far_from_expiry_is_left_alone_until_the_clock_reaches_the_renewal_window(
    build: Callable[..., Awaitable[DhanBroker]],
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    clock: Clock,
) -> None:
    old = expiring_in(clock, timedelta(hours=5), fake_dhan)
    broker = await build({**dhan_settings, "access_token": old, "renew_before_s": 3600})
    assert fake_dhan.token_calls() == []
    clock.at += timedelta(hours=3, minutes=59)
    await broker.maintain()
    assert fake_dhan.token_calls() == []  # 61 minutes left
    clock.at += timedelta(minutes=2)
    await broker.maintain()
    [new] = fake_dhan.issued
    await broker.place(request())
    assert order_tokens(fake_dhan) == [new]


async def test_an_order_in_flight_during_a_renewal_is_sent_again_with_the_new_token(
    build: Callable[..., Awaitable[DhanBroker]],
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    clock: Clock,
) -> None:
    """Dhan retires the old token on RenewToken: an order that reaches Dhan just after with the old one gets a
    DH-901, which must lead to one resend with the new token, not a failed leg and not two orders."""
    old = expiring_in(clock, timedelta(hours=5), fake_dhan)
    broker = await build({**dhan_settings, "access_token": old})
    # the renewal lands while the first placement is on its way: simulate by renewing on the keeper directly
    clock.at += timedelta(hours=4, minutes=30)
    keeper = broker._tokens  # noqa: SLF001 - the in-flight moment: renewed, client not swapped yet
    assert keeper is not None
    assert await keeper.maintain()
    result = await broker.place(request())
    [new] = fake_dhan.issued
    assert result.order_id
    assert order_tokens(fake_dhan) == [old, new]
    assert len(fake_dhan.orders) == 1


async def test_an_expired_token_with_totp_is_generated_at_start(
    build: Callable[..., Awaitable[DhanBroker]],
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    clock: Clock,
) -> None:
    old = expiring_in(clock, -timedelta(hours=1), fake_dhan)
    fake_dhan.valid_tokens = set()
    broker = await build(with_totp({**dhan_settings, "access_token": old}, fake_dhan))
    [call] = fake_dhan.token_calls()
    assert call.path == "/app/generateAccessToken"
    assert call.body is not None
    assert call.body["pin"] == PIN
    [new] = fake_dhan.issued
    assert (await broker.health()).ok
    await broker.place(request())
    assert order_tokens(fake_dhan) == [new]


async def test_without_any_token_pin_and_totp_are_enough_for_a_live_account(
    build: Callable[..., Awaitable[DhanBroker]], dhan_settings: dict[str, object], fake_dhan: FakeDhan
) -> None:
    settings = with_totp({k: v for k, v in dhan_settings.items() if k != "access_token"}, fake_dhan)
    broker = await build(settings)
    [new] = fake_dhan.issued
    await broker.place(request())
    assert order_tokens(fake_dhan) == [new]


async def test_a_dh901_with_totp_generates_a_token_once_and_the_leg_succeeds(
    build: Callable[..., Awaitable[DhanBroker]], dhan_settings: dict[str, object], fake_dhan: FakeDhan
) -> None:
    broker = await build(with_totp(dhan_settings, fake_dhan))  # TOKEN has no known expiry: nothing at start
    assert fake_dhan.token_calls() == []
    fake_dhan.valid_tokens = set()  # Dhan revoked it
    result = await broker.place(request())
    [new] = fake_dhan.issued
    assert result.order_id
    assert order_tokens(fake_dhan) == [TOKEN, new]
    assert len(fake_dhan.orders) == 1


async def test_a_dh901_seen_by_a_health_check_first_still_gets_the_next_leg_a_generated_token(
    build: Callable[..., Awaitable[DhanBroker]], dhan_settings: dict[str, object], fake_dhan: FakeDhan
) -> None:
    broker = await build(with_totp(dhan_settings, fake_dhan))
    fake_dhan.valid_tokens = set()
    with pytest.raises(BrokerAuthError):  # a lookup meets the DH-901 first: Dhan orders are halted...
        await broker.lookup("A1B2C3-9")
    # ...until the next leg generates a token with PIN + TOTP, once, and goes through
    result = await broker.place(request())
    [new] = fake_dhan.issued
    assert result.order_id
    assert order_tokens(fake_dhan) == [new]


async def test_a_dh901_is_retried_only_once(
    build: Callable[..., Awaitable[DhanBroker]], dhan_settings: dict[str, object], fake_dhan: FakeDhan
) -> None:
    broker = await build(with_totp(dhan_settings, fake_dhan))
    fake_dhan.valid_tokens = set()
    fake_dhan.next_reply("place", Misbehave.error("DH-901"), Misbehave.error("DH-901"))
    with pytest.raises(BrokerAuthError):
        await broker.place(request())
    assert len(fake_dhan.token_calls()) == 1
    assert len(order_tokens(fake_dhan)) == 2
    assert fake_dhan.orders == {}


async def test_without_totp_a_refused_renewal_notifies_with_the_expiry_and_the_fix(
    build: Callable[..., Awaitable[DhanBroker]],
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    clock: Clock,
    notes: list[tuple[str, str]],
) -> None:
    old = expiring_in(clock, timedelta(minutes=20), fake_dhan)
    fake_dhan.next_reply("renew", Misbehave.error("DH-905"), Misbehave.error("DH-905"))
    broker = await build({**dhan_settings, "access_token": old})
    assert [kind for kind, _ in notes] == ["token_expiring"]
    text = notes[0][1]
    assert "expires at 2026-11-25 10:20 IST" in text
    assert "tvbridge dhan token set --account dhan" in text
    await broker.maintain()  # still refused: the same warning is not repeated every minute
    assert len(notes) == 1
    await broker.place(request())  # the token still works until it expires
    assert order_tokens(fake_dhan) == [old]


async def test_without_totp_an_expired_token_notifies(
    build: Callable[..., Awaitable[DhanBroker]],
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    clock: Clock,
    notes: list[tuple[str, str]],
) -> None:
    old = expiring_in(clock, timedelta(hours=3), fake_dhan)
    broker = await build({**dhan_settings, "access_token": old, "renew_before_s": 600})
    assert notes == []
    clock.at += timedelta(hours=3, minutes=1)
    fake_dhan.valid_tokens = set()
    await broker.maintain()
    assert [kind for kind, _ in notes] == ["token_expiring"]
    assert "expired at 2026-11-25 13:00 IST" in notes[0][1]
    assert fake_dhan.token_calls() == []


async def test_a_renewed_token_survives_a_restart_and_a_reload_of_the_stale_configured_one(
    build: Callable[..., Awaitable[DhanBroker]],
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    clock: Clock,
) -> None:
    old = expiring_in(clock, timedelta(minutes=30), fake_dhan)
    settings = {**dhan_settings, "access_token": old}
    first = await build(settings)
    [new] = fake_dhan.issued
    await first.reconfigure(settings)  # SIGHUP with the configured (now retired) token: keep the renewed one
    await first.place(request())
    await first.aclose()
    second = await build(settings)  # a restart: the store outlives the configuration's old token
    await second.place(request(cid="A1B2C3-2"))
    assert order_tokens(fake_dhan) == [new, new]
    assert len(fake_dhan.issued) == 1


async def test_the_env_file_the_token_came_from_is_updated(
    *,
    build: Callable[..., Awaitable[DhanBroker]],
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = expiring_in(clock, timedelta(minutes=30), fake_dhan)
    env = tmp_path / ".env"
    env.write_text(f"WEBHOOK_SECRET=x\nDHAN_ACCESS_TOKEN={old}\nENABLE_DHAN=true\n")
    env.chmod(0o600)
    monkeypatch.chdir(tmp_path)
    await build({**dhan_settings, "access_token": old})
    [new] = fake_dhan.issued
    assert env.read_text() == f"WEBHOOK_SECRET=x\nDHAN_ACCESS_TOKEN={new}\nENABLE_DHAN=true\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600


def test_pin_and_totp_secret_go_together_and_stay_out_of_reprs(dhan_settings: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="totp_secret: pin and totp_secret go together"):
        parse_settings({**dhan_settings, "pin": PIN})
    with pytest.raises(ValueError, match="not a base32 TOTP key") as bad:
        parse_settings({**dhan_settings, "pin": PIN, "totp_secret": "not-base32!!"})
    assert "not-base32" not in str(bad.value)
    settings = parse_settings({**dhan_settings, "pin": PIN, "totp_secret": TOTP_SECRET})
    assert PIN not in repr(settings)
    assert TOTP_SECRET not in repr(settings)
    with pytest.raises(ValueError, match="instruments_refresh_at: expected HH:MM"):
        parse_settings({**dhan_settings, "instruments_refresh_at": "8.30"})


async def test_no_token_pin_or_totp_appears_in_any_log_or_message(
    *,
    build: Callable[..., Awaitable[DhanBroker]],
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    clock: Clock,
    notes: list[tuple[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    old = expiring_in(clock, timedelta(minutes=30), fake_dhan)
    seen: list[str] = []
    with structlog.testing.capture_logs() as events:
        broker = await build(with_totp({**dhan_settings, "access_token": old}, fake_dhan))  # renewed
        fake_dhan.valid_tokens = set()
        fake_dhan.next_reply("generate", Misbehave.error("DH-905"))
        with pytest.raises(BrokerAuthError) as failed:  # generation refused: the leg fails, a notification
            await broker.place(request())
        seen += [str(failed.value), repr(broker), repr(broker.settings), repr(await broker.health())]
        await broker.maintain()  # generated now
        seen.append(repr(await broker.place(request(cid="A1B2C3-2"))))
    assert len(fake_dhan.issued) == 2
    seen += (
        [repr(e) for e in events]
        + [r.getMessage() for r in caplog.records if r.name != "aiohttp.access"]
        + [t for _, t in notes]
    )
    # (the fake's own access log is left out: it is the fake Dhan's log, not tvbridge's)
    secrets = [old, *fake_dhan.issued, PIN, TOTP_SECRET]
    assert notes
    assert not [text for text in seen for secret in secrets if secret in text]


def test_check_config_masks_pin_and_totp_secret_from_the_environment(tmp_path: Path) -> None:
    env = {
        "WEBHOOK_SECRET": "check-config-secret-0123456789",
        "DHAN_CLIENT_ID": "1000000001",
        "DHAN_PIN": PIN,
        "DHAN_TOTP_SECRET": TOTP_SECRET,
        "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path),
    }
    result = run_cli(tmp_path, env, "check-config")
    assert result.returncode == 0, result.stderr
    dhan = json.loads(result.stdout)["accounts"]["dhan"]
    assert set(dhan) >= {"pin", "totp_secret"}
    assert PIN not in result.stdout + result.stderr
    assert TOTP_SECRET not in result.stdout + result.stderr


async def test_a_token_the_operator_configures_on_sighup_wins_over_the_stored_one(
    build: Callable[..., Awaitable[DhanBroker]],
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    clock: Clock,
) -> None:
    old = expiring_in(clock, timedelta(minutes=30), fake_dhan)
    broker = await build({**dhan_settings, "access_token": old})
    [renewed] = fake_dhan.issued  # now in the store
    pasted = "pasted-by-the-operator-0123456789"  # not a JWT: its expiry is unknown
    fake_dhan.valid_tokens.add(pasted)
    await broker.reconfigure({**dhan_settings, "access_token": pasted})
    await broker.place(request())
    assert order_tokens(fake_dhan) == [pasted]
    assert renewed != pasted
