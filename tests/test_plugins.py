"""Broker plugins from the outside: the sample plugin (installed from plugins/) receives orders from a webhook,
alone and beside another account; accounts are independent and every record says which account; plugins are
refused at start with messages that name the account, the key, the plugin and its distribution."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import attrs
import helpers
import pytest
from helpers import SECRET, ClientFactory
from structlog.testing import capture_logs

try:
    from tvbridge_samplebroker.fake_api import FakeVenue, serve
except ImportError as e:  # fail loudly, never skip: issue 7 requires the sample plugin installed in CI
    msg = (
        "tvbridge-samplebroker is not installed: pip install -e plugins/tvbridge-samplebroker (scripts/install-dev.sh)"
    )
    raise ImportError(msg) from e

from tvbridge.config import Config, RoutingConfig
from tvbridge.errors import PluginError
from tvbridge.registry import build_brokers, installed_plugins, load_plugin_class

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


Venue = tuple[FakeVenue, str]


def leg(**overrides: str) -> dict[str, Any]:
    """One leg as the guide's alert template sends it (strings), without `meta` (no age check)."""
    without_meta = helpers.leg(**overrides)
    del without_meta["meta"]
    return without_meta


def alert(*legs: dict[str, Any]) -> dict[str, Any]:
    return {"secret": SECRET, "alertType": "multi_leg_order", "order_legs": list(legs)}


def with_accounts(config: Config, accounts: dict[str, dict[str, Any]], routes: list[str] | None = None) -> Config:
    return attrs.evolve(config, accounts=accounts, routing=RoutingConfig(accounts=tuple(routes or accounts)))


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    async with serve() as running:
        yield running


def sample_account(venue: Venue, **extra: Any) -> dict[str, Any]:
    return {"broker": "sample", "base_url": venue[1], "api_key": venue[0].api_key, "timeout_s": 0.5, **extra}


def order_log_rows(config: Config) -> list[dict[str, str]]:
    with config.data_path(config.order_log.file).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def by_account(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for result in body["results"]:
        out.setdefault(result["account"], []).append(result)
    return out


def test_sample_plugin_is_installed_as_its_own_distribution() -> None:
    """The sample plugin is found through its entry point, from its own distribution. Missing means the dev
    setup was skipped: run scripts/install-dev.sh (this test fails rather than skips, as issue 7 requires)."""
    plugins = installed_plugins()
    assert "sample" in plugins, "tvbridge-samplebroker is not installed: run scripts/install-dev.sh"
    dist = plugins["sample"].dist
    assert dist is not None
    assert dist.name == "tvbridge-samplebroker"
    assert load_plugin_class("sample").__name__ == "SampleBroker"


async def test_webhook_places_through_the_sample_plugin_alone(
    make_client: ClientFactory, config: Config, venue: Venue
) -> None:
    """An alert routed to one sample account reaches the SampleX API with our client order id; the answer,
    the order log and the logs name the account and the broker."""
    config = with_accounts(config, {"samplex": sample_account(venue)})
    client = await make_client(config)
    with capture_logs() as logs:
        response = await client.post("/webhook", json=alert(leg(symbol="INFY")))
    body = await response.json()
    assert response.status == 200, body
    assert body["status"] == "success"
    [result] = body["results"]
    assert (result["account"], result["broker"], result["order_id"]) == ("samplex", "sample", "SX000001")
    [sent] = venue[0].orders.values()
    assert (sent["symbol"], sent["client_order_id"]) == ("INFY", result["client_order_id"])
    [row] = order_log_rows(config)
    assert (row["account"], row["broker"], row["status"], row["order_id"]) == (
        "samplex",
        "sample",
        "success",
        "SX000001",
    )
    done = [leg for e in logs if e["event"] == "alert.done" for leg in e["legs"] if leg["status"] == "success"]
    assert [(e["account"], e["broker"]) for e in done] == [("samplex", "sample")]


async def test_one_alert_goes_to_every_routed_account(make_client: ClientFactory, config: Config, venue: Venue) -> None:
    """With routing.accounts = [samplex, shadow], each leg runs on both accounts; every result, order log row
    and log line says which account it belongs to."""
    accounts = {"samplex": sample_account(venue), "shadow": {"broker": "scripted"}}
    config = with_accounts(config, accounts, ["samplex", "shadow"])
    client = await make_client(config)
    with capture_logs() as logs:
        response = await client.post("/webhook", json=alert(leg(), leg(sort_order="2", symbol="TCS")))
    body = await response.json()
    assert response.status == 200, body
    assert body["status"] == "success"
    assert body["message"] == "Processed 4 order leg(s)"
    results = by_account(body)
    assert [r["symbol"] for r in results["samplex"]] == ["RELIANCE", "TCS"]
    assert [r["symbol"] for r in results["shadow"]] == ["RELIANCE", "TCS"]
    assert {r["broker"] for r in results["shadow"]} == {"scripted"}
    assert len(venue[0].orders) == 2
    rows = order_log_rows(config)
    assert sorted((r["account"], r["leg_number"]) for r in rows) == [
        ("samplex", "1"),
        ("samplex", "2"),
        ("shadow", "1"),
        ("shadow", "2"),
    ]
    done = [leg for e in logs if e["event"] == "alert.done" for leg in e["legs"] if leg["status"] == "success"]
    assert sorted((e["account"], e["leg"]) for e in done) == [
        ("samplex", 1),
        ("samplex", 2),
        ("shadow", 1),
        ("shadow", 2),
    ]


async def test_a_failing_account_does_not_block_the_others(
    make_client: ClientFactory, config: Config, venue: Venue
) -> None:
    """When the venue refuses leg 1 on samplex, samplex skips its leg 2 (a half-placed bracket is worse than
    none) but the shadow account places both legs; the top-level status is `partial`."""
    accounts = {"samplex": sample_account(venue), "shadow": {"broker": "scripted"}}
    config = with_accounts(config, accounts, ["samplex", "shadow"])
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="REJECTME"), leg(sort_order="2")))
    body = await response.json()
    assert response.status == 200, body
    assert body["status"] == "partial"
    results = by_account(body)
    assert [r["status"] for r in results["samplex"]] == ["failed", "skipped"]
    assert "REJECTME is not tradeable" in results["samplex"][0]["message"]
    assert [r["status"] for r in results["shadow"]] == ["success", "success"]
    assert venue[0].orders == {}


async def test_unknown_outcome_on_one_account_is_resolved_and_others_proceed(
    make_client: ClientFactory, config: Config, venue: Venue
) -> None:
    """A dropped answer from SampleX is resolved by lookup (the order exists, so the leg succeeds, placed
    once), while the shadow account places its leg as usual."""
    accounts = {"samplex": sample_account(venue), "shadow": {"broker": "scripted"}}
    config = with_accounts(config, accounts, ["samplex", "shadow"])
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="DROPME")))
    body = await response.json()
    assert body["status"] == "success", body
    results = by_account(body)
    assert results["samplex"][0]["order_id"] == "SX000001"
    assert results["shadow"][0]["status"] == "success"
    assert len(venue[0].orders) == 1


async def test_all_accounts_failing_is_failed(make_client: ClientFactory, config: Config, venue: Venue) -> None:
    """When every account fails the leg, the top-level status is `failed`."""
    accounts = {"samplex": sample_account(venue), "shadow": {"broker": "scripted", "reject_symbols": ["REJECTME"]}}
    config = with_accounts(config, accounts, ["samplex", "shadow"])
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(symbol="REJECTME")))).json()
    assert body["status"] == "failed"
    assert {r["status"] for r in body["results"]} == {"failed"}


async def test_unsupported_leg_fails_on_that_account_before_sending(
    make_client: ClientFactory, config: Config, venue: Venue
) -> None:
    """SampleX has no margin product: the leg fails on samplex naming the field, nothing reaches its API, and
    the shadow account (which supports it) places it."""
    accounts = {"samplex": sample_account(venue), "shadow": {"broker": "scripted"}}
    config = with_accounts(config, accounts, ["samplex", "shadow"])
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(productType="M")))).json()
    assert body["status"] == "partial"
    results = by_account(body)
    assert results["samplex"][0]["message"].startswith("not sent: productType M is not supported by this broker")
    assert results["shadow"][0]["status"] == "success"
    assert venue[0].orders == {}


async def test_exit_all_on_a_plugin_without_positions_fails_before_sending_naming_the_capability(
    make_client: ClientFactory, config: Config, venue: Venue
) -> None:
    """SampleX does not declare `positions`: an EXIT_ALL leg fails before sending with a message naming the
    capability, and its API receives nothing (it is never sent as a plain buy)."""
    config = with_accounts(config, {"samplex": sample_account(venue)})
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(manage_position="EXIT_ALL")))).json()
    [result] = body["results"]
    assert result["status"] == "failed"
    assert result["message"] == (
        "not sent: manage_position EXIT_ALL needs the broker capability `positions` (reading the open position to"
        " close), which this broker does not declare: nothing was sent"
    )
    assert venue[0].orders == {}
    assert [r["status"] for r in order_log_rows(config)] == ["failed"]


async def test_flatten_on_a_plugin_with_orders_but_no_positions_cancels_and_says_what_is_left(
    make_client: ClientFactory, config: Config, venue: Venue
) -> None:
    """SampleX declares `orders` only: flatten's plan lists its resting order and a note that positions must be
    closed in SampleX's terminal; with confirm the order is cancelled at the venue and nothing is placed."""
    from tvbridge.keys import CREDENTIALS  # noqa: PLC0415 - only this test needs the admin token

    config = with_accounts(config, {"samplex": sample_account(venue)})
    client = await make_client(config)
    placed = await (await client.post("/webhook", json=alert(leg(orderType="LMT", price="1")))).json()
    order_id = placed["results"][0]["order_id"]
    headers = {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}

    plan = await (await client.post("/admin/flatten", json={"account": "samplex"}, headers=headers)).json()
    assert [c["order_id"] for c in plan["plan"]["cancel"]] == [order_id]
    assert plan["plan"]["close"] == []
    assert plan["plan"]["notes"] == [
        "positions are not listed (the broker does not declare `positions`): close them by hand"
    ]
    done = await (
        await client.post("/admin/flatten", json={"account": "samplex", "confirm": True}, headers=headers)
    ).json()
    assert [r["status"] for r in done["results"]] == ["success"]
    assert venue[0].orders[order_id]["status"] == "cancelled"
    assert len(venue[0].orders) == 1


DECLARES_WITHOUT_METHOD = """\
import attrs
from tvbridge_testbrokers import ScriptedBroker

class Plugin(ScriptedBroker):
    def __init__(self, settings, context):
        super().__init__(settings, context)
        self.capabilities = attrs.evolve(self.capabilities, positions=True)
"""


def test_a_plugin_declaring_positions_without_the_method_is_refused_at_start(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin that declares `positions` but has no positions() is refused when the account is built, naming
    the account, the capability and the method; one that declares nothing new (scripted) loads."""
    write_plugin(tmp_path, "claims", "claims_mod", DECLARES_WITHOUT_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as info:
        build_brokers(with_accounts(config, {"claimer": {"broker": "claims"}}))
    assert str(info.value) == (
        "accounts.claimer: claims: declares capabilities.positions = True but has no positions() method:"
        " implement it or leave positions false"
    )
    assert list(build_brokers(with_accounts(config, {"old": {"broker": "scripted"}}))) == ["old"]


def test_bad_plugin_settings_name_the_account_and_the_key(config: Config) -> None:
    """A typo and a bad value in an account's table stop the start, each as accounts.NAME.key."""
    typo = {"broker": "sample", "base_url": "http://x", "api_kye": "k", "timeout_s": "soon"}
    with pytest.raises(PluginError) as info:
        build_brokers(with_accounts(config, {"samplex": typo}))
    assert str(info.value) == (
        "accounts.samplex.api_kye: unknown key (known keys: base_url, api_key, timeout_s, live); "
        "accounts.samplex.timeout_s: must be a number, got 'soon'"
    )
    with pytest.raises(PluginError, match=r"^accounts\.samplex\.base_url: must be an http\(s\) URL, got 'ftp://x'$"):
        build_brokers(with_accounts(config, {"samplex": {"broker": "sample", "base_url": "ftp://x"}}))


def test_plain_value_error_with_a_key_is_shown_with_the_account(config: Config) -> None:
    """A plugin that raises ValueError("unknown key X") without the helper still gets the account named."""
    with pytest.raises(PluginError, match=r"^accounts\.shadow: unknown key typo$"):
        build_brokers(with_accounts(config, {"shadow": {"broker": "scripted", "typo": 1}}))


def write_plugin(root: Path, name: str, module: str, source: str) -> None:
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[tvbridge.brokers]\n{name} = {module}:Plugin\n")
    (root / f"{module}.py").write_text(source)


OLD_PLUGIN = "from tvbridge_testbrokers import ScriptedBroker\n\nclass Plugin(ScriptedBroker):\n    api_version = 0\n"


def test_plugin_for_another_api_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin built for another broker API version is refused, naming it, its distribution, both versions and
    what to do."""
    write_plugin(tmp_path, "oldplugin", "oldplugin_mod", OLD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as info:
        load_plugin_class("oldplugin", account="legacy")
    assert str(info.value) == (
        "account 'legacy': entry point 'oldplugin' (oldplugin_mod:Plugin) from oldplugin 0.1 was written for "
        "broker API version 0, but this tvbridge 0.1.0 speaks version 1: upgrade oldplugin"
    )


SAMPLE_CONFIG = """\
[auth]
secret = "a-strong-secret-of-32-characters!"
[routing]
accounts = ["samplex"]
[accounts.samplex]
broker = "sample"
base_url = "http://127.0.0.1:9"
"""


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ["PYTHONPATH"]])}
    env.pop("TVBRIDGE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "tvbridge", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_brokers_command_lists_plugins_and_reports_a_broken_one(tmp_path: Path) -> None:
    """`tvbridge brokers` lists each installed plugin with its distribution, version and capabilities; one that
    fails to import is listed by name with its error, the others still show, and the exit code is 1."""
    write_plugin(tmp_path / "site", "brokenplugin", "brokenplugin_mod", "import does_not_exist\n")
    (tmp_path / "config.toml").write_text(SAMPLE_CONFIG)
    result = run_cli(tmp_path, "brokers")
    assert result.returncode == 1
    out = result.stdout
    assert "sample  [ok]\n  distribution: tvbridge-samplebroker 0.1.0\n" in out
    assert "  order_types:  LMT, MKT, SL, SL-M\n  products:     C, I\n  exchanges:    BSE, NSE\n" in out
    assert "brokenplugin  [BROKEN]" in out
    assert "failed to import: ModuleNotFoundError: No module named 'does_not_exist'" in out
    assert "scripted  [ok]" in out
    assert "  accounts:     samplex\n" in out
    assert "broker plugin(s) cannot be used: brokenplugin" in result.stderr


def test_brokers_command_json_uses_configured_account_settings(tmp_path: Path) -> None:
    """With --json, each plugin is one object; capabilities come from the configured account's settings (a
    sample account with live = true shows live), and a plugin whose empty settings are invalid says why."""
    (tmp_path / "config.toml").write_text(SAMPLE_CONFIG + "live = true\n")
    result = run_cli(tmp_path, "brokers", "--json")
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    sample = plugins["sample"]
    assert sample["distribution"] == "tvbridge-samplebroker"
    assert sample["accounts"] == ["samplex"]
    assert sample["capabilities"]["live"] is True
    assert sample["api_version"] == 1
    (tmp_path / "config.toml").unlink()
    result = run_cli(tmp_path, "brokers", "--json")
    sample = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}["sample"]
    assert sample["capabilities"] is None
    assert "accounts.sample.base_url: required key missing" in sample["capabilities_error"]


async def test_sample_account_beside_the_paper_account(
    make_client: ClientFactory, config: Config, venue: Venue
) -> None:
    """The issue's own example: a live-style account and `paper-shadow` beside it receive the same alert; each
    result and order log row names its account and broker, so live fills can be compared with paper."""
    accounts = {
        "samplex": sample_account(venue),
        "paper-shadow": {"broker": "paper", "prices": {"RELIANCE": "100"}},
    }
    config = with_accounts(config, accounts, ["samplex", "paper-shadow"])
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg()))
    body = await response.json()
    assert response.status == 200, body
    assert body["status"] == "success"
    results = by_account(body)
    assert results["samplex"][0]["order_id"] == "SX000001"
    assert results["paper-shadow"][0]["broker"] == "paper"
    assert results["paper-shadow"][0]["order_state"] == "filled"
    rows = order_log_rows(config)
    assert sorted((r["account"], r["broker"]) for r in rows) == [("paper-shadow", "paper"), ("samplex", "sample")]


def test_load_time_check_covers_every_protocol_method() -> None:
    """The methods tvbridge checks when it loads a plugin (always, or when their capability is declared) are
    exactly the Broker protocol's methods, so a plugin missing one is refused at start, by name, not on the first
    alert."""
    from tvbridge.broker import CAPABILITY_METHODS, Broker, JournalJoiner  # noqa: PLC0415 - compared with the registry's list
    from tvbridge.registry import REQUIRED_METHODS  # noqa: PLC0415 - the list under test

    methods: set[str] = set()
    for protocol in (Broker, JournalJoiner):  # the optional `joins_journal` methods have a protocol of their own
        methods |= {name for name, value in vars(protocol).items() if not name.startswith("_") and callable(value)}
        methods |= {name for name, value in vars(protocol).items() if isinstance(value, classmethod)}
    optional = {name for names in CAPABILITY_METHODS.values() for name in names}
    assert set(REQUIRED_METHODS) | optional == methods
    assert not set(REQUIRED_METHODS) & optional


def test_check_config_exits_2_naming_the_account_and_key(tmp_path: Path) -> None:
    """`tvbridge check-config` with a typo in a plugin's table exits 2 with one stderr line naming
    accounts.NAME.key, and no traceback."""
    (tmp_path / "config.toml").write_text(SAMPLE_CONFIG + 'api_kye = "k"\n')
    result = run_cli(tmp_path, "check-config")
    assert result.returncode == 2
    assert result.stderr == (
        "tvbridge: config error: accounts.samplex.api_kye: unknown key (known keys: base_url, api_key, timeout_s, "
        "live)\n"
    )
