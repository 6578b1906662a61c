"""The instrument master: lookups a leg needs, the help a trader gets on a miss, and the atomic refresh."""

from __future__ import annotations

import shutil
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from tvbridge.broker import BrokerRejectedError
from tvbridge_brokers.dhan import refresh_instruments
from tvbridge_brokers.dhan.instruments import InstrumentMaster, load_master, sample_master_path
from tvbridge_brokers.dhan.refresh import RefreshError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

TODAY = date(2026, 11, 25)


@pytest.fixture
def master() -> InstrumentMaster:
    return load_master(sample_master_path())


def test_equities_by_exchange_and_symbol(master: InstrumentMaster) -> None:
    """The well-known NSE ids, and the same symbol on BSE is a different security."""
    ids = [master.equity("NSE", s).security_id for s in ("RELIANCE", "INFY", "TCS")]

    assert ids == ["2885", "1594", "11536"]
    assert master.equity("BSE", "RELIANCE").security_id == "500325"


def test_futures_nearest_unexpired_or_by_expiry(master: InstrumentMaster) -> None:
    """Without an expiry the nearest contract not yet expired is used (November's expired yesterday); an
    expiry that is not listed names the listed ones."""
    assert master.future("NSE", "NIFTY", today=TODAY, expiry=None).trading_symbol == "NIFTY-Dec2026-FUT"
    assert master.future("NSE", "NIFTY", today=date(2026, 11, 24), expiry=None).security_id == "52168"
    assert master.future("NSE", "NIFTY", today=TODAY, expiry=None, nth=2).security_id == "52181"
    with pytest.raises(BrokerRejectedError) as caught:
        master.future("NSE", "NIFTY", today=TODAY, expiry=date(2026, 12, 31))
    assert str(caught.value) == (
        "expiry_date 2026-12-31: no NIFTY future expires that day (listed: 2026-11-24, 2026-12-29, 2027-01-25)"
    )


def test_options_by_expiry_strike_and_type(master: InstrumentMaster) -> None:
    """Weekly and monthly contracts with the same strike are told apart by expiry; a missing strike lists the
    nearest listed ones."""
    weekly = master.option("NSE", "NIFTY", expiry=date(2026, 12, 1), strike=Decimal(24000), option_type="CE")
    monthly = master.option("NSE", "NIFTY", expiry=date(2026, 12, 29), strike=Decimal("24000.0"), option_type="CE")

    assert (weekly.security_id, monthly.security_id, monthly.lot_size) == ("43101", "43201", 65)
    with pytest.raises(BrokerRejectedError) as caught:
        master.option("NSE", "NIFTY", expiry=date(2026, 12, 29), strike=Decimal(24200), option_type="CE")
    assert str(caught.value) == ("strike_price 24200: no NIFTY CE strike on 2026-12-29 (nearest listed: 24000, 24500)")


def test_an_unknown_symbol_lists_the_closest_matches(master: InstrumentMaster) -> None:
    """A typo gets the symbols it was probably meant to be."""
    with pytest.raises(BrokerRejectedError) as caught:
        master.future("NSE", "BANKNIFT", today=TODAY, expiry=None)

    assert str(caught.value) == (
        "symbol BANKNIFT is not a known NSE futures underlying in the instrument master; closest matches: "
        "BANKNIFTY, NIFTY"
    )


def test_indices_are_not_tradable_rows(master: InstrumentMaster) -> None:
    """The master's INDEX rows are skipped: NIFTY is not an equity."""
    with pytest.raises(BrokerRejectedError, match="symbol NIFTY is not a known NSE equity"):
        master.equity("NSE", "NIFTY")


@pytest.fixture
async def master_server(tmp_path: Path) -> AsyncIterator[Callable[[int, bytes], str]]:
    """A loopback HTTP server that answers GET /master.csv with what the test sets."""
    answer: dict[str, tuple[int, bytes]] = {"reply": (200, b"")}

    async def serve(_: web.Request) -> web.Response:
        status, body = answer["reply"]
        return web.Response(status=status, body=body, content_type="text/csv")

    app = web.Application()
    app.router.add_get("/master.csv", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server  # noqa: SLF001 - the bound port
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]  # an asyncio.Server here

    def set_reply(status: int, body: bytes) -> str:
        answer["reply"] = (status, body)
        return f"http://127.0.0.1:{port}/master.csv"

    yield set_reply
    await runner.cleanup()


async def test_refresh_replaces_the_master(tmp_path: Path, master_server: Callable[[int, bytes], str]) -> None:
    """A good download replaces the file and reports its tradable rows; no temporary file is left."""
    dest = tmp_path / "dhan-api-scrip-master.csv"
    url = master_server(200, sample_master_path().read_bytes())

    rows = await refresh_instruments(url, dest)

    assert rows == 51
    assert dest.read_bytes() == sample_master_path().read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (404, b"not here", "download of http://127.0.0.1:"),
        (200, b"<html>maintenance</html>\n", "is not a usable Dhan instrument master: not a Dhan instrument master"),
        (200, b"", "is not a usable Dhan instrument master:"),
    ],
)
async def test_a_failed_refresh_keeps_the_old_master(
    tmp_path: Path, master_server: Callable[[int, bytes], str], status: int, body: bytes, message: str
) -> None:
    """An HTTP error, an HTML page or an empty file raises RefreshError and leaves the old master as it was."""
    dest = tmp_path / "dhan-api-scrip-master.csv"
    shutil.copyfile(sample_master_path(), dest)
    url = master_server(status, body)

    with pytest.raises(RefreshError) as caught:
        await refresh_instruments(url, dest)

    assert message in str(caught.value)
    assert dest.read_bytes() == sample_master_path().read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]


def test_a_changed_master_is_never_answered_from_a_stale_cache(tmp_path: Path) -> None:
    """The second load of a file comes from the index cache; once the file is replaced (a refresh), the
    new contents are what lookups answer, so a stale cache can never give a wrong security id."""
    path = tmp_path / "master.csv"
    shutil.copyfile(sample_master_path(), path)
    assert load_master(path).equity("NSE", "RELIANCE").security_id == "2885"
    assert load_master(path).equity("NSE", "RELIANCE").security_id == "2885"
    replaced = tmp_path / "new.csv"
    replaced.write_text(sample_master_path().read_text().replace("NSE,E,2885,", "NSE,E,9999,"))
    replaced.replace(path)

    assert load_master(path).equity("NSE", "RELIANCE").security_id == "9999"
