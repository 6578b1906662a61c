"""Dhan's error codes, broken answers and lost answers: typed errors, and never two orders for one leg."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
from dhan_support import request
from fake_dhan import FakeDhan, Misbehave

from tvbridge.broker import (
    BrokerAuthError,
    BrokerRejectedError,
    BrokerUnavailableError,
    BrokerUnknownOutcomeError,
    OrderState,
)

if TYPE_CHECKING:
    from dhan_support import MakeDhan

    from tvbridge_brokers.dhan import DhanBroker


@pytest.mark.parametrize(
    ("code", "error", "message"),
    [
        (
            "DH-904",
            BrokerUnavailableError,
            (
                "Dhan's rate limit was hit; nothing was placed, a later try may work (DH-904: Too many requests on "
                "server from single user breaching rate limits.)"
            ),
        ),
        (
            "DH-905",
            BrokerRejectedError,
            "Dhan refused the input (DH-905: Missing required fields, bad values for parameters etc.)",
        ),
        (
            "DH-906",
            BrokerRejectedError,
            "Dhan refused the order (DH-906: Incorrect request for order and cannot be processed.)",
        ),
    ],
)
async def test_dhan_error_codes_become_typed_errors(
    dhan_live: DhanBroker, fake_dhan: FakeDhan, code: str, error: type[Exception], message: str
) -> None:
    """DH-904 is transient (a retry may work); DH-905 and DH-906 are refusals with Dhan's reason. Each is one
    request: nothing is retried behind the trader's back."""
    fake_dhan.next_reply("place", Misbehave.error(code))

    with pytest.raises(error) as caught:
        await dhan_live.place(request())

    assert type(caught.value) is error
    assert str(caught.value) == message
    assert len(fake_dhan.placed()) == 1
    assert fake_dhan.orders == {}


async def test_an_expired_token_halts_orders_until_reconfigured(
    dhan_live: DhanBroker, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """DH-901 raises BrokerAuthError saying what to do; later orders fail fast without reaching Dhan and
    health turns bad, until reconfigure() brings a token Dhan accepts."""
    fake_dhan.valid_tokens = {"tok-NEW-renewed-2"}

    with pytest.raises(BrokerAuthError) as first:
        await dhan_live.place(request())
    with pytest.raises(BrokerAuthError) as second:
        await dhan_live.place(request(cid="A1B2C3-2"))
    health = await dhan_live.health()

    assert "DH-901" in str(first.value)
    assert "SIGHUP" in str(first.value)
    assert "new token" in str(first.value)
    assert str(second.value) == str(first.value)
    assert (health.ok, health.detail) == (False, str(first.value))
    assert len(fake_dhan.placed()) == 1

    await dhan_live.reconfigure({**dhan_settings, "access_token": "tok-NEW-renewed-2"})
    result = await dhan_live.place(request(cid="A1B2C3-2"))

    assert result.state is OrderState.PENDING
    assert (await dhan_live.health()).ok
    assert [r.token for r in fake_dhan.requests if r.method == "POST"] == [
        dhan_settings["access_token"],
        "tok-NEW-renewed-2",
    ]


async def test_empty_body_after_the_order_was_taken_is_reconciled(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """Dhan took the order but the answer was empty: the order is found by correlation id and returned."""
    fake_dhan.next_reply("place", Misbehave.empty_body(take_order=True))

    result = await dhan_live.place(request())

    assert list(fake_dhan.orders) == [result.order_id]
    assert result.state is OrderState.OPEN
    assert result.message.startswith(f"Dhan order {result.order_id}: PENDING; placement answer lost (no usable answer")
    assert result.message.endswith("found by correlation id")


async def test_html_answer_without_an_order_is_an_unknown_outcome(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """A proxy's HTML page is not an answer from Dhan: with no order under our correlation id yet, the outcome
    is unknown (it may still appear), never "rejected", and nothing is re-sent."""
    fake_dhan.next_reply("place", Misbehave.html())

    with pytest.raises(BrokerUnknownOutcomeError) as caught:
        await dhan_live.place(request())

    assert "no order with correlation id A1B2C3-1 is there yet" in str(caught.value)
    assert "Check Dhan's order book before sending it again" in str(caught.value)
    assert len(fake_dhan.placed()) == 1


async def test_server_error_code_is_ambiguous_and_looked_up(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """DH-908 (Dhan's internal error) does not prove the order failed, so it is looked up like a timeout."""
    fake_dhan.next_reply("place", Misbehave.error("DH-908"))

    with pytest.raises(BrokerUnknownOutcomeError, match="placement got Dhan answered DH-908"):
        await dhan_live.place(request())


async def test_connection_dropped_after_the_order_was_taken(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """Dhan took the order and the connection dropped before the answer: the order is found by correlation id
    and returned; Dhan holds exactly one order and got exactly one placement."""
    fake_dhan.next_reply("place", Misbehave.drop_after_taking_order())

    result = await dhan_live.place(request())

    assert list(fake_dhan.orders) == [result.order_id]
    assert len(fake_dhan.placed()) == 1
    assert "found by correlation id" in result.message


async def test_a_hang_past_the_timeout_is_resolved_by_lookup(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """Dhan took the order and never answered: after timeout_s (0.5 s here) the order is looked up by
    correlation id and returned, well inside TradingView's 3 s."""
    fake_dhan.next_reply("place", Misbehave.hang_after_taking_order())

    started = time.monotonic()
    result = await dhan_live.place(request())
    elapsed = time.monotonic() - started

    assert list(fake_dhan.orders) == [result.order_id]
    assert "no answer from Dhan within 0.5 s" in result.message
    assert 0.5 <= elapsed < 2.5  # inside TradingView's 3 s, with room for a loaded CI machine


async def test_unknown_outcome_when_the_lookup_fails_too(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """When the placement and the lookup both fail, the outcome is unknown and says both reasons."""
    fake_dhan.next_reply("place", Misbehave.empty_body(take_order=True))
    fake_dhan.next_reply("lookup", Misbehave.html())

    with pytest.raises(BrokerUnknownOutcomeError) as caught:
        await dhan_live.place(request())

    assert "the lookup by correlation id A1B2C3-1 failed too" in str(caught.value)
    assert len(fake_dhan.orders) == 1


async def test_placing_the_same_client_order_id_twice_sends_once(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """place() is idempotent on client_order_id: the second call returns the first order, Dhan got one."""
    first = await dhan_live.place(request())
    again = await dhan_live.place(request())

    assert again.order_id == first.order_id
    assert again.message.endswith("already placed with this client order id, not sent again")
    assert len(fake_dhan.placed()) == 1


async def test_retry_after_an_unknown_outcome_finds_the_late_order(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """The answer was lost and the order was not visible yet; when the core retries, the order has appeared
    and is returned instead of being placed a second time."""
    fake_dhan.next_reply("place", Misbehave.empty_body(take_order=True))
    fake_dhan.next_reply("lookup", Misbehave.error("DH-907"))
    with pytest.raises(BrokerUnknownOutcomeError):
        await dhan_live.place(request())

    result = await dhan_live.place(request())

    assert list(fake_dhan.orders) == [result.order_id]
    assert len(fake_dhan.placed()) == 1


async def test_retry_after_a_refusal_sends_again(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """After a rate-limit refusal nothing exists at Dhan, so the retry is looked up, not found, and sent."""
    fake_dhan.next_reply("place", Misbehave.error("DH-904"))
    with pytest.raises(BrokerUnavailableError):
        await dhan_live.place(request())

    result = await dhan_live.place(request())

    assert list(fake_dhan.orders) == [result.order_id]
    assert len(fake_dhan.placed()) == 2


async def test_a_restart_does_not_place_twice(
    make_dhan: MakeDhan, dhan_settings: dict[str, object], fake_dhan: FakeDhan
) -> None:
    """The intent is on disk before the order leaves: a new broker instance (after a crash) asked for the same
    client order id finds the order instead of sending it again."""
    first = await (await make_dhan(dhan_settings)).place(request())
    restarted = await make_dhan(dhan_settings)

    again = await restarted.place(request())

    assert again.order_id == first.order_id
    assert len(fake_dhan.placed()) == 1


async def test_dhan_unreachable_is_an_unknown_outcome(make_dhan: MakeDhan, dhan_settings: dict[str, object]) -> None:
    """A refused connection cannot be told apart from a lost answer by dhanhq, so it is an unknown outcome;
    health says Dhan is unreachable."""
    broker = await make_dhan({**dhan_settings, "base_url": "http://127.0.0.1:9/v2"})

    with pytest.raises(BrokerUnknownOutcomeError, match="failed too"):
        await broker.place(request())
    health = await broker.health()

    assert not health.ok
    assert health.detail.startswith("Dhan unreachable: no usable answer from Dhan")


async def test_the_same_client_order_id_at_the_same_moment_sends_once(
    dhan_live: DhanBroker, fake_dhan: FakeDhan
) -> None:
    """Two place() calls for one client order id racing each other still make one order at Dhan."""
    first, second = await asyncio.gather(dhan_live.place(request()), dhan_live.place(request()))

    assert first.order_id == second.order_id
    assert len(fake_dhan.placed()) == 1
