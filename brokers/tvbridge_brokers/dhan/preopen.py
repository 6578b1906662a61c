"""The Dhan account's answers to the pre-open readiness check (`Broker.readiness()`).

Before the open the trader wants to hear what would fail at the first alert: a token that dies before the close
and cannot be renewed, a master that was not refreshed today, Dhan unreachable or refusing the token, or a clock
so far off Dhan's that order times and the trading day are wrong. Each is one `ReadinessCheck` with the fix.
"""

from __future__ import annotations

import email.utils
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Final

import aiohttp

from tvbridge.broker import Health, ReadinessCheck
from tvbridge_brokers.dhan.token import fix_command

if TYPE_CHECKING:
    from tvbridge_brokers.dhan.master_refresh import MasterRefresher
    from tvbridge_brokers.dhan.token import TokenKeeper

IST: Final = timezone(timedelta(hours=5, minutes=30), "IST")
MAX_SKEW_S: Final = 1.0
DATE_RESOLUTION_S: Final = 1.0
"""An HTTP `Date` has whole seconds: it trails the true time by up to one second."""


def _at(moment: datetime) -> str:
    return f"{moment.astimezone(IST):%Y-%m-%d %H:%M} IST"


def token_check(
    keeper: TokenKeeper, *, now: datetime, close_at: datetime, rejected: bool, account: str
) -> ReadinessCheck:
    expires = keeper.expires_at
    if rejected:
        why = f" and generating one failed ({keeper.last_error})" if keeper.last_error else ""
        detail = f"Dhan rejects the token (DH-901){why}: `{fix_command(account)}`"
        return ReadinessCheck(name="token", ok=False, detail=detail)
    if expires is None:
        return ReadinessCheck(name="token", ok=True, detail="expiry unknown (not a JWT); Dhan's answer decides")
    if expires > close_at:
        return ReadinessCheck(name="token", ok=True, detail=f"valid until {_at(expires)}, past today's close")
    if keeper.can_generate:
        return ReadinessCheck(
            name="token", ok=True, detail=f"expires {_at(expires)}, before the close: PIN + TOTP will generate one"
        )
    if expires > now and not keeper.last_error:
        return ReadinessCheck(
            name="token", ok=True, detail=f"expires {_at(expires)}, before the close: it will be renewed first"
        )
    why = f" ({keeper.last_error})" if keeper.last_error else ""
    return ReadinessCheck(
        name="token",
        ok=False,
        detail=f"expires {_at(expires)}, before today's close, and cannot be renewed{why}: `{fix_command(account)}`",
    )


def master_check(refresher: MasterRefresher, *, now: datetime, account: str) -> ReadinessCheck:
    if refresher.fresh_today(now):
        assert refresher.refreshed_at is not None  # noqa: S101 - fresh_today needs it
        return ReadinessCheck(name="instruments", ok=True, detail=f"refreshed {_at(refresher.refreshed_at)}")
    last = _at(refresher.refreshed_at) if refresher.refreshed_at else "never"
    why = f"; the last try failed: {refresher.last_error}" if refresher.last_error else ""
    return ReadinessCheck(
        name="instruments",
        ok=False,
        detail=f"not refreshed today (last {last}){why}: `tvbridge dhan instruments refresh --account {account}`",
    )


def health_check(health: Health) -> ReadinessCheck:
    return ReadinessCheck(name="reachable", ok=health.ok, detail=health.detail)


async def clock_check(base_url: str, *, now: datetime, timeout_s: float) -> ReadinessCheck:
    """Our clock against the `Date` header of Dhan's API (any answer has one; no token is sent)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(base_url + "/") as response,
        ):
            date = response.headers.get("Date", "")
    except (aiohttp.ClientError, TimeoutError) as e:
        return ReadinessCheck(name="clock", ok=False, detail=f"cannot reach {base_url}: {type(e).__name__}")
    try:
        theirs = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return ReadinessCheck(name="clock", ok=False, detail=f"Dhan's answer has no usable Date header ({date!r})")
    skew = (now - theirs).total_seconds() - DATE_RESOLUTION_S / 2
    if abs(skew) > MAX_SKEW_S + DATE_RESOLUTION_S / 2:
        return ReadinessCheck(
            name="clock",
            ok=False,
            detail=f"this machine's clock is {skew:+.1f} s off Dhan's: fix the time sync (chrony, systemd-timesyncd)",
        )
    return ReadinessCheck(name="clock", ok=True, detail="within a second of Dhan's")
