"""Paper predicts live: a paper account with Dhan's instrument master refuses what a Dhan account refuses, in
Dhan's words, and sizes lots as Dhan does; without one it accepts anything and `check-config` says so."""

from __future__ import annotations

import json
from datetime import date
from typing import TYPE_CHECKING, Any

import pytest
from dhan_support import leg as dhan_leg
from dhan_support import now, request
from helpers import SECRET, alert, leg, with_accounts

from tvbridge.broker import BrokerContext, BrokerError
from tvbridge.cli import main
from tvbridge.keys import BROKERS
from tvbridge.models import Exchange, Instrument, Product, Side
from tvbridge_brokers.paper import PaperBroker

if TYPE_CHECKING:
    from pathlib import Path

    from helpers import ClientFactory

    from tvbridge.config import Config

NIFTY_DEC_FUT: dict[str, Any] = {
    "exchange": "NFO",
    "symbol": "NIFTY",
    "instrument": "FUT",
    "expiry_date": "2026-12-29",
    "productType": "M",
}


def paper_and_dhan(config: Config, master: Path, **keys: Any) -> Config:
    """A paper account on the master and a Dhan dry-run account on the same file, both routed; `keys` go to
    both tables."""
    return with_accounts(
        config,
        {
            "paper": {"broker": "paper", "instruments_path": str(master), **keys},
            "dhan": {"broker": "dhan", "live": False, "instruments_path": str(master), **keys},
        },
    )


async def post(client: Any, *legs: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/webhook", json=alert(*legs))
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "a typo": (
        {"symbol": "RELIANC"},
        "symbol RELIANC is not a known NSE equity in the instrument master; closest matches: RELIANCE",
    ),
    "a part lot": (
        {**NIFTY_DEC_FUT, "quantity": "1"},
        (
            "quantity 1: must be a whole number of lots of 65 units for NIFTY-Dec2026-FUT (quantity is in units: 65 = 1"
            ' lot; an account or leg with quantity_unit = "lots" counts lots)'
        ),
    ),
    "a strike that is not listed": (
        {"symbol": "NIFTY261229C24100", "exchange": "NFO", "instrument": "OPT", "productType": "M", "quantity": "65"},
        "strike_price 24100: no NIFTY CE strike on 2026-12-29 (nearest listed: 24000, 24500)",
    ),
    "a derivative product on equity": (
        {"productType": "M"},
        "productType M (MARGIN) is not valid for equity: use C (CNC), I (INTRADAY), MTF (MTF)",
    ),
    "a bracket on a stop entry": (
        {"orderType": "SL", "price": "2900", "triggerPrice": "2890", "target_price": "3000", "stoploss_price": "2850"},
        "orderType SL cannot carry a bracket on Dhan: a super order's entry is LMT or MKT",
    ),
    "a market bracket without a price": (
        {"target_price": "3000", "stoploss_price": "2850"},
        (
            "price: a MKT entry with a bracket on Dhan needs the alert's price (e.g. {{close}}) as its reference:"
            " dhanhq refuses a super order without a price > 0"
        ),
    ),
}


@pytest.mark.parametrize("fields", REFUSALS.values(), ids=REFUSALS.keys())
async def test_paper_with_a_master_refuses_exactly_as_dhan_dry_run(
    make_client: ClientFactory, config: Config, dhan_master: Path, fields: tuple[dict[str, Any], str]
) -> None:
    """The same alert to both accounts: both legs fail, with the same message, and paper holds no order."""
    changes, message = fields
    client = await make_client(paper_and_dhan(config, dhan_master))

    body = await post(client, leg(**changes))

    by_account = {r["account"]: (r["status"], r["message"]) for r in body["results"]}
    assert by_account == {"paper": ("failed", message), "dhan": ("failed", message)}
    paper: Any = client.app[BROKERS]["paper"]
    assert await paper.orders() == []


async def test_paper_with_a_master_takes_what_dhan_takes_in_the_same_units(
    make_client: ClientFactory, config: Config, dhan_master: Path
) -> None:
    """One lot on a lots account: Dhan dry-run would send 65 and paper fills 65, both reported as 65."""
    config = paper_and_dhan(config, dhan_master, quantity_unit="lots")
    client = await make_client(config)

    body = await post(client, leg(**NIFTY_DEC_FUT, quantity="1", price="24100"))

    assert sorted((r["account"], r["status"], r["quantity"]) for r in body["results"]) == [
        ("dhan", "test_mode", "65"),
        ("paper", "success", "65"),
    ]
    paper: Any = client.app[BROKERS]["paper"]
    assert [(o.contract, o.quantity) for o in await paper.orders()] == [("NIFTY FUT 2026-12-29", 65)]


@pytest.mark.parametrize(("lot", "sent"), [("1.0", "3"), ("65.0", "195")])
async def test_lots_are_the_masters_lot_size_even_of_one(
    make_client: ClientFactory, config: Config, dhan_master: Path, lot: str, sent: str
) -> None:
    """Three lots are three times the master's lot size; a contract listed with a lot of 1 is three units, not
    refused (a lot below 1 would be)."""
    text = dhan_master.read_text()
    dhan_master.write_text(text.replace(",NIFTY-Dec2026-FUT,65.0,", f",NIFTY-Dec2026-FUT,{lot},"))
    config = with_accounts(
        config, {"paper": {"broker": "paper", "instruments_path": str(dhan_master), "quantity_unit": "lots"}}
    )
    client = await make_client(config)

    body = await post(client, leg(**NIFTY_DEC_FUT, quantity="3", price="24100"))

    assert [(r["status"], r["quantity"]) for r in body["results"]] == [("success", sent)]


async def test_without_a_master_paper_accepts_any_symbol(make_client: ClientFactory, config: Config) -> None:
    """The default paper account keeps accepting what no exchange lists (practice, not prediction)."""
    client = await make_client(config)

    body = await post(client, leg(symbol="RELIANC", price="10"))

    assert body["results"][0]["status"] == "success"


async def test_paper_books_a_continuous_future_under_the_contract_dhan_resolves(
    tmp_path: Path, dhan_master: Path
) -> None:
    """With a master, `NIFTY1!` is the nearest unexpired NIFTY future on the exchange day, as on Dhan: a buy of
    NIFTY1! and a sell of NIFTY expiring 2026-12-29 are one position, now flat."""
    context = BrokerContext(account="paper", data_dir=tmp_path)
    broker = PaperBroker.from_settings({"instruments_path": str(dhan_master)}, context, clock=now)
    await broker.start()
    try:
        continuous = dhan_leg(
            exchange=Exchange.NFO,
            symbol="NIFTY1!",
            instrument=Instrument.FUTURE,
            quantity=65,
            product=Product.MARGIN,
            price="24100",
        )
        dated = dhan_leg(**{**attrs_of(continuous), "symbol": "NIFTY", "expiry_date": date(2026, 12, 29)})
        await broker.place(request(continuous, cid="A1-1"))
        await broker.place(request(dhan_leg(**{**attrs_of(dated), "side": Side.SELL}), cid="A2-1"))

        positions = await broker.book_positions(include_flat=True)
        info = await broker.instrument_info(continuous)
    finally:
        await broker.aclose()
    assert [(p.contract, p.net_quantity) for p in positions] == [("NIFTY FUT 2026-12-29", 0)]
    assert (info.trading_symbol, info.lot_size) == ("NIFTY-Dec2026-FUT", 65)


def attrs_of(the_leg: Any) -> dict[str, Any]:
    import attrs  # noqa: PLC0415 - only this helper

    return attrs.asdict(the_leg, recurse=False)


async def test_a_missing_master_stops_the_start(tmp_path: Path) -> None:
    """A paper account pointed at a file that is not there does not start (it would not predict anything)."""
    context = BrokerContext(account="paper", data_dir=tmp_path)
    broker = PaperBroker.from_settings({"instruments_path": str(tmp_path / "nope.csv")}, context)

    with pytest.raises(BrokerError, match=r"^instruments_path .*nope\.csv: no such file"):
        await broker.start()
    await broker.aclose()


def check_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], toml: str) -> str:
    (tmp_path / "config.toml").write_text(toml)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TVBRIDGE_SERVER__DATA_DIR", str(tmp_path))
    for name in ("TVBRIDGE_CONFIG", "DHAN_CLIENT_ID", "DHAN_ACCESS_TOKEN", "ENABLE_DHAN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["check-config"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)
    return captured.err


@pytest.mark.parametrize("master_first", [False, True], ids=["master last", "master first"])
def test_check_config_says_paper_without_a_master_accepts_anything(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    dhan_master: Path,
    master_first: bool,
) -> None:
    """`tvbridge check-config` warns, per account, that paper without instruments_path accepts any symbol, and
    that lots cannot be converted there; with a master, no warning (and the accounts after it are still checked)."""
    tables = [
        '[accounts.paper]\nbroker = "paper"\nquantity_unit = "lots"\n',
        f'[accounts.master]\nbroker = "paper"\ninstruments_path = "{dhan_master}"\n',
    ]
    names = ["paper", "master"]
    if master_first:
        tables.reverse()
        names.reverse()
    routing = ", ".join(f'"{name}"' for name in names)
    err = check_config(tmp_path, monkeypatch, capsys, f"[routing]\naccounts = [{routing}]\n" + "".join(tables))

    assert err.splitlines() == [
        (
            "tvbridge: warning: accounts.paper: no instruments_path: this paper account accepts any symbol and any"
            " quantity, where Dhan refuses a symbol its instrument master does not list and a part lot; set"
            " instruments_path to the master your dhan account reads so paper refuses what Dhan would"
        ),
        (
            'tvbridge: warning: accounts.paper: quantity_unit = "lots", but broker paper declares no instrument_info'
            " (lot sizes): futures and options legs in lots will fail; equity works (1 lot = 1 share)"
        ),
        "config ok",
    ]


def test_check_config_refuses_an_unknown_quantity_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in quantity_unit stops the start by name: guessing would trade 65 times the size, or a 65th."""
    (tmp_path / "config.toml").write_text('[accounts.paper]\nbroker = "paper"\nquantity_unit = "lot"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TVBRIDGE_SERVER__DATA_DIR", str(tmp_path))

    assert main(["check-config"]) == 2
    assert capsys.readouterr().err == (
        "tvbridge: config error: accounts.paper.quantity_unit: must be one of units, lots, got 'lot'\n"
    )


async def test_a_leg_with_an_unknown_quantity_unit_is_a_422(make_client: ClientFactory, config: Config) -> None:
    """The per-leg key is checked like every other: 422 naming it and the values it takes."""
    client = await make_client(config)

    response = await client.post("/webhook", json=alert(leg(quantity_unit="contracts")))

    assert response.status == 422
    assert (await response.json())["errors"] == [
        "order_legs[0].quantity_unit: must be one of units, lots, got 'contracts'"
    ]


def test_brokers_command_shows_which_plugins_know_lot_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tvbridge brokers --json` lists `instrument_info` per plugin: dhan knows lot sizes, paper without a
    master does not."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TVBRIDGE_SERVER__DATA_DIR", str(tmp_path))
    for name in ("TVBRIDGE_CONFIG", "DHAN_CLIENT_ID", "DHAN_ACCESS_TOKEN", "ENABLE_DHAN"):
        monkeypatch.delenv(name, raising=False)

    main(["brokers", "--json"])

    plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert plugins["dhan"]["capabilities"]["instrument_info"] is True
    assert plugins["paper"]["capabilities"]["instrument_info"] is False


async def test_cancel_by_the_alerts_symbol_finds_orders_booked_under_the_contract(
    make_client: ClientFactory, config: Config, dhan_master: Path
) -> None:
    """A resting limit placed as `NSE:NIFTY1!` (booked under NIFTY's contract) is cancelled by a cancel_order
    naming `NIFTY1!`, as the dhan broker cancels the orders it placed for that symbol."""
    config = with_accounts(config, {"paper": {"broker": "paper", "instruments_path": str(dhan_master)}})
    client = await make_client(config)
    placed = await post(
        client, leg(symbol="NSE:NIFTY1!", instrument="FUT", productType="M", quantity="65", orderType="LMT", price="1")
    )
    order_id = placed["results"][0]["order_id"]

    response = await client.post("/webhook", json=alert({"symbol": "NIFTY1!"}, alert_type="cancel_order"))

    assert response.status == 200
    assert placed["results"][0]["order_state"] == "open"
    assert (await response.json())["results"][0]["message"] == f"cancelled 1 order(s): {order_id}"
