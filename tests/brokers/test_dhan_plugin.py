"""The dhan plugin as tvbridge sees it: found through its entry point, shaped like the Protocol, reconfigurable."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import pytest
from dhan_support import request
from fake_dhan import FakeDhan, Misbehave

from tvbridge.broker import ENTRY_POINT_GROUP, Broker, BrokerUnknownOutcomeError, CancelRequest, OrderState
from tvbridge.models import CancelLeg
from tvbridge_brokers.dhan import DhanBroker

if TYPE_CHECKING:
    from pathlib import Path

    from tvbridge_brokers.dhan import DhanBroker as DhanBrokerType


def cancel_order(order_id: str | None) -> CancelRequest:
    return CancelRequest(alert_id="C", leg_number=1, leg=CancelLeg(order_id=order_id))


def test_found_through_the_entry_point() -> None:
    """`broker = "dhan"` in config.toml resolves to this class through the `tvbridge.brokers` group."""
    (entry_point,) = entry_points(group=ENTRY_POINT_GROUP, name="dhan")

    assert entry_point.load() is DhanBroker


async def test_satisfies_the_broker_protocol(dhan_dry: DhanBrokerType) -> None:
    """Every method of tvbridge's Broker Protocol is there."""
    assert isinstance(dhan_dry, Broker)


async def test_reconfigure_picks_up_a_refreshed_master(
    dhan_live: DhanBrokerType, dhan_settings: dict[str, object], dhan_master: Path, fake_dhan: FakeDhan
) -> None:
    """After `tvbridge dhan instruments refresh` replaced the file, a SIGHUP makes the next order use it."""
    await dhan_live.place(request())
    refreshed = dhan_master.with_name("refreshed.csv")
    text = dhan_master.read_text()
    refreshed.write_text(text.replace("NSE,E,2885,", "NSE,E,2886,"))
    refreshed.replace(dhan_master)

    await dhan_live.reconfigure(dhan_settings)
    await dhan_live.place(request(cid="A1B2C3-2"))

    assert [body["securityId"] for body in fake_dhan.placed()] == ["2885", "2886"]


async def test_a_bad_reconfigure_keeps_the_running_configuration(
    dhan_live: DhanBrokerType, dhan_settings: dict[str, object], fake_dhan: FakeDhan
) -> None:
    """An edited table with a mistake is refused by name and the account keeps trading as before."""
    with pytest.raises(ValueError, match="timeout_s: must be > 0"):
        await dhan_live.reconfigure({**dhan_settings, "access_token": "tok-OTHER", "timeout_s": -1})

    result = await dhan_live.place(request())

    assert result.state is OrderState.PENDING
    assert [r.token for r in fake_dhan.requests if r.method == "POST"] == [dhan_settings["access_token"]]


async def test_a_lost_cancel_answer_is_resolved_by_reading_the_order(
    dhan_live: DhanBrokerType, fake_dhan: FakeDhan
) -> None:
    """The cancel went through but its answer was lost: the order is read back and reported cancelled. When
    it did not go through, the outcome is unknown and says the order's current state."""
    first = await dhan_live.place(request())
    second = await dhan_live.place(request(cid="A1B2C3-2"))
    fake_dhan.next_reply("cancel", Misbehave.drop_after_taking_order(), Misbehave.html())

    (cancelled,) = await dhan_live.cancel(cancel_order(first.order_id))
    with pytest.raises(BrokerUnknownOutcomeError, match=r"it is now PENDING$"):
        await dhan_live.cancel(cancel_order(second.order_id))

    assert (cancelled.order_id, cancelled.state) == (first.order_id, OrderState.CANCELLED)
