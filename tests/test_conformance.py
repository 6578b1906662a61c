"""The conformance kit (`pytest --tvbridge-broker=NAME`): it passes for plugins that keep the rules, it fails
with a clear message for one that does not, and its settings file is checked like any config."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tvbridge.conformance.spec import SpecError, load_spec
from tvbridge.models import OrderType

ROOT = Path(__file__).parent.parent
SAMPLE_SETTINGS = ROOT / "plugins" / "tvbridge-samplebroker" / "conformance.toml"
DHAN_SETTINGS = ROOT / "tests" / "support" / "dhan-conformance.toml"
PAPER_SETTINGS = ROOT / "tests" / "support" / "paper-conformance.toml"
SCRIPTED_SETTINGS = ROOT / "tests" / "support" / "scripted-conformance.toml"

SLOPPY = '''
from tvbridge.broker import API_VERSION, Capabilities, Health, OrderResult, OrderState


class SloppyBroker:
    """Breaks the rules: places twice, raises a bare exception on refusal, forgets its orders."""

    api_version = API_VERSION
    capabilities = Capabilities()

    def __init__(self):
        self.n = 0

    @classmethod
    def from_settings(cls, settings, context):
        return cls()

    async def start(self):
        pass

    async def place(self, request):
        if request.leg.symbol == "REJECTME":
            raise RuntimeError("nope")
        self.n += 1
        return OrderResult(order_id=str(self.n), state=OrderState.FILLED)

    async def cancel(self, request):
        return []

    async def lookup(self, client_order_id):
        return None

    async def health(self):
        return Health(ok=True)

    async def aclose(self):
        pass
'''


WRONG_POSITIONS = '''
import attrs
from tvbridge.broker import (
    API_VERSION, BrokerRejectedError, Capabilities, ContractId, Exchange, Health, Instrument, OrderResult,
    OrderState, Position, Product,
)


class WrongBroker:
    """Declares positions and open orders and answers both wrongly: a buy shows as a short, and open_orders()
    never lists anything. Everything else keeps the rules."""

    api_version = API_VERSION
    capabilities = Capabilities(positions=True, orders=True)

    def __init__(self):
        self.orders = {}
        self.net = 0

    @classmethod
    def from_settings(cls, settings, context):
        if settings:
            raise ValueError(f"unknown key {min(settings)}")
        return cls()

    async def start(self):
        pass

    async def place(self, request):
        if request.client_order_id in self.orders:
            return self.orders[request.client_order_id]
        leg = request.leg
        if leg.symbol == "REJECTME":
            raise BrokerRejectedError("not tradeable")
        resting = leg.order_type.value == "LMT"
        if not resting:
            self.net -= leg.quantity  # the bug under test: a buy counted as a sale
        result = OrderResult(
            order_id=str(len(self.orders) + 1),
            state=OrderState.OPEN if resting else OrderState.FILLED,
            client_order_id=request.client_order_id,
            filled_quantity=0 if resting else leg.quantity,
        )
        self.orders[request.client_order_id] = result
        return result

    async def cancel(self, request):
        done = []
        for cid, order in self.orders.items():
            wanted = order.order_id == request.leg.order_id if request.leg.order_id else order.state is OrderState.OPEN
            if wanted:
                self.orders[cid] = attrs.evolve(order, state=OrderState.CANCELLED)
                done.append(self.orders[cid])
        if request.leg.order_id and not done:
            raise BrokerRejectedError("unknown order")
        return done

    async def lookup(self, client_order_id):
        return self.orders.get(client_order_id)

    async def positions(self, leg=None):
        if not self.net:
            return []
        contract = ContractId(exchange=Exchange.NSE, symbol="RELIANCE", instrument=Instrument.EQUITY)
        return [Position(contract=contract, product=Product.CNC, net_quantity=self.net)]

    async def open_orders(self):
        return []

    async def health(self):
        return Health(ok=True)

    async def aclose(self):
        pass
'''


def install_plugin(tmp_path: Path, name: str, module: str, cls: str, source: str) -> Path:
    site = tmp_path / "site"
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[tvbridge.brokers]\n{name} = {module}:{cls}\n")
    (site / f"{module}.py").write_text(source)
    return site


def run_kit(cwd: Path, *args: str, pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfs", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def outcome(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    tail = result.stdout.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", tail)}


def test_sample_plugin_passes_the_kit(tmp_path: Path) -> None:
    """The installed sample plugin passes every check of the kit against its fake venue; it declares `orders`
    but neither `positions` nor `brackets`, so only the two positions checks and the bracket check are skipped,
    saying why."""
    result = run_kit(tmp_path, "--tvbridge-broker=sample", f"--tvbridge-broker-settings={SAMPLE_SETTINGS}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome(result) == {"passed": 15, "skipped": 3}, result.stdout
    assert "capabilities.positions is false" in result.stdout
    assert "capabilities.brackets is false" in result.stdout


def test_scripted_plugin_passes_the_kit(tmp_path: Path) -> None:
    """The test-only scripted plugin, written before positions and open orders joined the interface, passes;
    the cancel checks (no resting price) and the positions, open-orders and bracket checks (not declared) are
    skipped."""
    result = run_kit(tmp_path, "--tvbridge-broker=scripted", f"--tvbridge-broker-settings={SCRIPTED_SETTINGS}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome(result) == {"passed": 12, "skipped": 6}, result.stdout
    assert "no [prices] resting" in result.stdout


def test_paper_broker_passes_the_kit(tmp_path: Path) -> None:
    """The paper broker passes, positions, open orders and brackets included; it never loses an answer, so only that check
    is skipped, saying why."""
    result = run_kit(tmp_path, "--tvbridge-broker=paper", f"--tvbridge-broker-settings={PAPER_SETTINGS}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome(result) == {"passed": 17, "skipped": 1}, result.stdout
    assert "no [unknown_outcome] table" in result.stdout


def test_dhan_broker_passes_the_kit(tmp_path: Path) -> None:
    """The Dhan broker, live against the fake Dhan API, passes every check: DH-906 is a rejection, an order
    taken without an answer is resolved by correlation id, a traded buy shows in positions, a resting order in
    the order list until it is cancelled, a bracket as a super order with its parts, cancelled whole."""
    result = run_kit(tmp_path, "--tvbridge-broker=dhan", f"--tvbridge-broker-settings={DHAN_SETTINGS}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome(result) == {"passed": 18}, result.stdout


def test_a_plugin_that_breaks_the_rules_fails_the_kit(tmp_path: Path) -> None:
    """A plugin that places twice, raises an untyped error on refusal and cannot look orders up fails the
    matching checks, each with a message that says which rule it broke."""
    dist = tmp_path / "site" / "sloppy-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sloppy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tvbridge.brokers]\nsloppy = sloppy_broker:SloppyBroker\n")
    (tmp_path / "site" / "sloppy_broker.py").write_text(SLOPPY)
    (tmp_path / "kit.toml").write_text('[reject]\nsymbol = "REJECTME"\n')
    result = run_kit(
        tmp_path,
        "--tvbridge-broker=sloppy",
        f"--tvbridge-broker-settings={tmp_path / 'kit.toml'}",
        pythonpath=[tmp_path / "site"],
    )
    assert result.returncode == 1
    failed = set(re.findall(r"FAILED \S*::(test_\w+)", result.stdout))
    assert failed == {
        "test_unknown_setting_is_refused_naming_the_key",
        "test_places_each_declared_order_type",
        "test_place_is_idempotent_on_client_order_id",
        "test_rejection_is_reported_as_a_rejection",
    }, result.stdout
    assert "lookup('kit" in result.stdout
    assert "placed again" in result.stdout


def test_a_plugin_that_answers_positions_and_orders_wrongly_fails_the_kit(tmp_path: Path) -> None:
    """A plugin that declares positions and open orders but reports a filled buy as a short and never lists its
    resting order fails exactly those two checks, each message saying what was wrong."""
    site = install_plugin(tmp_path, "wrongpos", "wrongpos_broker", "WrongBroker", WRONG_POSITIONS)
    (tmp_path / "kit.toml").write_text('[reject]\nsymbol = "REJECTME"\n[prices]\nresting = "1"\n')
    result = run_kit(
        tmp_path, "--tvbridge-broker=wrongpos", f"--tvbridge-broker-settings={tmp_path / 'kit.toml'}", pythonpath=[site]
    )
    assert result.returncode == 1, result.stdout
    failed = set(re.findall(r"FAILED \S*::(test_\w+)", result.stdout))
    assert failed == {
        "test_a_filled_buy_shows_in_positions",
        "test_open_orders_list_a_resting_order_until_it_is_cancelled",
    }, result.stdout
    assert "a filled buy of 1 moved positions(leg) in C from 0 to -1" in result.stdout
    assert "open_orders() does not list the resting order 1" in result.stdout


def test_unknown_broker_name_fails_with_the_installed_list(tmp_path: Path) -> None:
    """A broker name that is not installed fails the entry point check, listing what is installed."""
    result = run_kit(tmp_path, "--tvbridge-broker=nosuch", "-k", "entry_point")
    assert result.returncode == 1
    assert "no broker plugin named 'nosuch' is installed (installed: " in result.stdout


def test_without_the_option_the_kit_is_inert(tmp_path: Path) -> None:
    """Without --tvbridge-broker the plugin adds nothing: a project's own tests run alone."""
    (tmp_path / "test_own.py").write_text("def test_own():\n    pass\n")
    result = run_kit(tmp_path)
    assert result.returncode == 0
    assert outcome(result) == {"passed": 1}


def test_bad_settings_file_is_a_usage_error(tmp_path: Path) -> None:
    """A typo in the kit's settings file stops pytest with the file and the key, before any test runs."""
    bad = tmp_path / "kit.toml"
    bad.write_text('[rejct]\nsymbol = "X"\n')
    result = run_kit(tmp_path, "--tvbridge-broker=sample", f"--tvbridge-broker-settings={bad}")
    assert result.returncode == 4
    assert "unknown key 'rejct'" in result.stderr


def test_spec_defaults_and_legs(tmp_path: Path) -> None:
    """Without a settings file the kit uses a plain NSE equity leg; limit and stop legs get their prices."""
    spec = load_spec("x", None)
    assert spec.order_leg().symbol == "RELIANCE"
    path = tmp_path / "kit.toml"
    path.write_text('[leg]\nsymbol = "INFY"\n[prices]\nlimit = "10"\ntrigger = "9"\n')
    spec = load_spec("x", path)
    sl = spec.order_leg(OrderType.STOP_LOSS)
    assert (sl.symbol, sl.price, sl.trigger_price) == ("INFY", Decimal(10), Decimal(9))


def test_spec_leg_that_is_not_a_valid_alert_leg(tmp_path: Path) -> None:
    """A [leg] that an alert could not carry is refused with the alert's own field name."""
    path = tmp_path / "kit.toml"
    path.write_text('[leg]\nexchange = "LSE"\n')
    with pytest.raises(SpecError, match="exchange"):
        load_spec("x", path).order_leg()
