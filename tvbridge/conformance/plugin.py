"""The pytest side of the conformance kit: its options, and adding its tests when `--tvbridge-broker` is given.

Registered through the `pytest11` entry point, so it is loaded in every pytest run where tvbridge is installed;
without `--tvbridge-broker` it only adds the two options and changes nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tvbridge.conformance.spec import SpecError, load_spec

if TYPE_CHECKING:
    from tvbridge.conformance.spec import KitSpec

KIT: Path = Path(__file__).with_name("kit.py")
SPEC_KEY = pytest.StashKey["KitSpec"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tvbridge", "tvbridge broker plugin conformance kit")
    group.addoption(
        "--tvbridge-broker",
        metavar="NAME",
        help="run tvbridge's conformance kit against the broker plugin installed under entry point NAME",
    )
    group.addoption(
        "--tvbridge-broker-settings",
        metavar="FILE",
        help="TOML file: the account settings, how the test venue rejects or loses orders (see tvbridge.conformance)",
    )


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--tvbridge-broker")
    if not name:
        return
    settings = config.getoption("--tvbridge-broker-settings")
    try:
        config.stash[SPEC_KEY] = load_spec(name, Path(settings) if settings else None)
    except SpecError as e:
        raise pytest.UsageError(f"--tvbridge-broker-settings: {e}") from None
    if config.args_source is pytest.Config.ArgsSource.ARGS:
        config.args.append(str(KIT))
    else:  # no paths named: run the kit alone, not the project's own suite
        config.args[:] = [str(KIT)]


@pytest.fixture(scope="session")
def tvbridge_kit_spec(request: pytest.FixtureRequest) -> KitSpec:
    """What the kit was told about the plugin under test."""
    config = request.config
    if SPEC_KEY not in config.stash:
        pytest.skip("the conformance kit runs only with --tvbridge-broker=NAME")
    return config.stash[SPEC_KEY]
