"""The access token: checked cheaply for /health, replaced without a restart, and never shown anywhere."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import structlog
from dhan_support import leg, request
from fake_dhan import TOKEN, FakeDhan, Misbehave

from tvbridge.broker import BrokerError
from tvbridge_brokers.dhan.settings import parse_settings

if TYPE_CHECKING:
    from dhan_support import MakeDhan

    from tvbridge_brokers.dhan import DhanBroker


def _fund_checks(fake: FakeDhan) -> int:
    return sum(1 for r in fake.requests if r.path == "/v2/fundlimit")


async def test_health_checks_the_token_once_and_caches_it(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """start() checks the token with one fund-limits call; health() reuses that answer for a few seconds so a
    polled /health does not spend Dhan's rate limit."""
    first = await dhan_live.health()
    second = await dhan_live.health()

    assert (first.ok, first.detail) == (True, "Dhan token valid")
    assert second == first
    assert _fund_checks(fake_dhan) == 1


async def test_an_expired_token_at_start_does_not_stop_the_server(
    make_dhan: MakeDhan, dhan_settings: dict[str, object], fake_dhan: FakeDhan
) -> None:
    """A token that expired overnight: start() succeeds (so a SIGHUP can fix it), health says what to do, and
    health does not keep calling Dhan with the dead token."""
    fake_dhan.valid_tokens = set()
    broker = await make_dhan(dhan_settings)

    health = await broker.health()
    await broker.health()

    assert not health.ok
    assert "DH-901" in health.detail
    assert "SIGHUP" in health.detail
    assert _fund_checks(fake_dhan) == 1


async def test_reconfigure_swaps_the_token_while_running(
    dhan_live: DhanBroker, dhan_settings: dict[str, object], fake_dhan: FakeDhan
) -> None:
    """A renewed token given through reconfigure() is used for the very next request; the old one is not."""
    fake_dhan.valid_tokens = {TOKEN, "tok-RENEWED-7"}
    await dhan_live.place(request())

    await dhan_live.reconfigure({**dhan_settings, "access_token": "tok-RENEWED-7"})
    await dhan_live.place(request(cid="A1B2C3-2"))

    assert [r.token for r in fake_dhan.requests if r.method == "POST"] == [TOKEN, "tok-RENEWED-7"]


async def test_reconfigure_refuses_switching_live_off(dhan_live: DhanBroker, dhan_settings: dict[str, object]) -> None:
    """Turning live trading on or off is a restart decision (the core checks secrets and routing at start)."""
    with pytest.raises(ValueError, match="live: switching between dry-run and live needs a restart"):
        await dhan_live.reconfigure({**dhan_settings, "live": False})


async def test_the_token_never_appears_in_results_errors_reprs_or_logs(
    make_dhan: MakeDhan,
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through every path (dry-run, placement, lost answers, refusals, an expired token, a bad leg, a
    reconfigure) the token is in no result, exception message, repr, structlog event or stdlib log line."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with structlog.testing.capture_logs() as events:
        dry = await make_dhan({**dhan_settings, "live": False}, account="dry")
        live = await make_dhan(dhan_settings)
        seen += [repr(dry), repr(live), repr(parse_settings(dhan_settings)), repr(live.settings)]
        seen.append(repr(await dry.place(request())))
        seen.append(repr(await live.place(request())))
        fake_dhan.next_reply("place", Misbehave.drop_after_taking_order())
        seen.append(repr(await live.place(request(cid="A1B2C3-2"))))
        for how in (Misbehave.error("DH-906"), Misbehave.html(), Misbehave.error("DH-901")):
            fake_dhan.next_reply("place", how)
            try:
                await live.place(request(cid="A1B2C3-3"))
            except BrokerError as e:
                seen += [str(e), repr(e)]
        try:
            await dry.place(request(leg(symbol="NOPE")))
        except BrokerError as e:
            seen.append(str(e))
        seen.append(repr(await live.health()))
        await live.reconfigure(dhan_settings)
        seen.append(repr(await live.health()))
        seen.append(repr(await live.lookup("A1B2C3-1")))

    assert {"dhan.order.placed", "dhan.order.reconciled", "dhan.token.rejected"} <= {e["event"] for e in events}
    seen += [repr(e) for e in events]
    seen += [r.getMessage() for r in caplog.records]
    assert len(seen) > 15
    assert not [text for text in seen if TOKEN in text]
