"""The `[accounts.NAME]` table of a dhan account: what starts, and what stops the start with a named key."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from fake_dhan import TOKEN, FakeDhan

from tvbridge.broker import API_VERSION, BrokerContext, BrokerError
from tvbridge_brokers.dhan import DhanBroker
from tvbridge_brokers.dhan.instruments import sample_master_path
from tvbridge_brokers.dhan.settings import DEFAULT_BASE_URL, DhanSettings, parse_settings

if TYPE_CHECKING:
    from pathlib import Path

    from dhan_support import MakeDhan


def test_defaults_are_dry_run_on_dhans_real_api() -> None:
    """An empty table is a dry-run account with Dhan's base URL, a 2 s timeout and Dhan's 10 orders/s."""
    assert parse_settings({}) == DhanSettings(
        live=False, base_url=DEFAULT_BASE_URL, timeout_s=2.0, max_orders_per_s=10.0, instruments_path=None
    )


def test_the_plugin_declares_the_interface_version() -> None:
    """tvbridge refuses a plugin written for another interface version."""
    assert DhanBroker.api_version == API_VERSION


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"acess_token": "x"},
            "unknown key(s) for a dhan account: acess_token (known: access_token, auth_url, base_url, ",
        ),
        ({"live": "maybe"}, "live: expected true or false"),
        ({"timeout_s": 0}, "timeout_s: must be > 0 and <= 30, got 0"),
        ({"timeout_s": "soon"}, "timeout_s: expected a number, got 'soon'"),
        ({"max_orders_per_s": True}, "max_orders_per_s: expected a number"),
        ({"client_id": 1000000001}, "client_id: expected a string, got int"),
        ({"base_url": "ftp://api.dhan.co"}, "base_url: expected an http(s) URL, got 'ftp://api.dhan.co'"),
        ({"base_url": "http://api.dhan.co/v2"}, "base_url: plain http is only allowed to a loopback host"),
        (
            {"live": True, "client_id": "1"},
            "access_token: required when live = true (set it or DHAN_ACCESS_TOKEN or pin + totp_secret)",
        ),
    ],
)
def test_a_bad_table_names_the_key(table: dict[str, object], message: str) -> None:
    """A typo or a wrong type stops the start with a message that names the key."""
    with pytest.raises(ValueError) as caught:  # noqa: PT011 - the message is checked below
        parse_settings(table)

    assert str(caught.value).startswith(message)


def test_environment_style_strings_are_accepted() -> None:
    """ENABLE_DHAN=true and numbers from environment variables arrive as strings and are understood."""
    settings = parse_settings(
        {"live": "TRUE", "client_id": "1", "access_token": TOKEN, "timeout_s": "1.5", "max_orders_per_s": "5"}
    )

    assert (settings.live, settings.timeout_s, settings.max_orders_per_s) == (True, 1.5, 5.0)


def test_the_token_is_not_in_the_settings_repr() -> None:
    """Settings end up in tracebacks and debug logs; the token must not."""
    assert TOKEN not in repr(parse_settings({"access_token": TOKEN}))


def test_live_refuses_the_shipped_sample_master(tmp_path: Path) -> None:
    """The sample master is for tests and dry-run; real orders need the real, current master."""
    table = {"live": True, "client_id": "1", "access_token": TOKEN, "instruments_path": str(sample_master_path())}

    with pytest.raises(ValueError, match=r"^instruments_path: the shipped sample master cannot be used for live"):
        DhanBroker.from_settings(table, BrokerContext(account="dhan", data_dir=tmp_path))


async def test_live_without_a_master_does_not_start(
    make_dhan: MakeDhan, dhan_settings: dict[str, object], fake_dhan: FakeDhan
) -> None:
    """A live account whose master was never downloaded, and cannot be now, stops the start and says which
    command fixes it."""
    fake_dhan.master = b"<html>not a master</html>"
    table = {key: value for key, value in dhan_settings.items() if key != "instruments_path"}
    table["instruments_url"] = fake_dhan.master_url

    with pytest.raises(
        BrokerError, match=r"instrument master not found at .*: run `tvbridge dhan instruments refresh`"
    ):
        await make_dhan(table)
