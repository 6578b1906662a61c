"""Shared fixtures (helpers to import live in helpers.py): a config rooted in tmp_path, the app with its real lifecycle, a test broker plugin.

The test plugin (`tests/support/tvbridge_testbrokers.py`) is registered the way any plugin is: a dist-info
with an `entry_points.txt` on `sys.path` (and on `PYTHONPATH` for subprocess servers). tvbridge has no test
switch; it finds the plugin through `importlib.metadata` like the real ones.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from helpers import SECRET, ClientFactory
from pgcluster import SHARED_KEY, own_pg_cluster, pg_cluster, pg_url  # noqa: F401 - fixtures, shared by every test module

from tvbridge.app import create_app
from tvbridge.config import Config, load_config
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials

SUPPORT = Path(__file__).parent / "support"


@pytest.fixture(scope="session", autouse=True)
def test_plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Register `scripted` under `tvbridge.brokers` through a dist-info, like an installed plugin."""
    root = tmp_path_factory.mktemp("plugins")
    dist = root / "tvbridge_testbrokers-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tvbridge-testbrokers\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tvbridge.brokers]\nscripted = tvbridge_testbrokers:ScriptedBroker\n")
    paths = [str(root), str(SUPPORT)]
    sys.path[:0] = paths
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *([old] if old else [])])
    yield root
    for p in paths:
        sys.path.remove(p)
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On a PostgreSQL run (`TVBRIDGE_TEST_STORE=postgresql`), skip the tests marked `sqlite_only`."""
    if os.environ.get("TVBRIDGE_TEST_STORE") != "postgresql":
        return
    skip = pytest.mark.skip(reason="reads the SQLite journal, or a page kept only there (docs/postgresql.md)")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)


@pytest.fixture
def converter() -> Any:
    return make_converter()


@pytest.fixture
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The store under test as config environment: none (the SQLite journal), or a new PostgreSQL database and
    the cluster's shared key when the run has `TVBRIDGE_TEST_STORE=postgresql`. Modules that build their own
    config add it to theirs (`test_strategies`)."""
    if os.environ.get("TVBRIDGE_TEST_STORE") == "postgresql":
        return {
            "TVBRIDGE_JOURNAL__URL": str(request.getfixturevalue("pg_url")),
            "TVBRIDGE_JOURNAL__SHARED_SECRET_KEY": SHARED_KEY,
        }
    return {}


@pytest.fixture
def config(tmp_path: Path, converter: Any, store_env: dict[str, str]) -> Config:
    """Paper broker, files in tmp_path, a known secret, rate limits out of the way; exchange sessions off, so
    tests that do not pin the clock behave the same at any hour (tests/test_tradingday.py turns them on).

    The store is the SQLite journal, or a new PostgreSQL database when the run has
    `TVBRIDGE_TEST_STORE=postgresql` (the suite on PostgreSQL; modules that test both say so: `helpers.on_store`)."""
    env = {
        "WEBHOOK_SECRET": SECRET,
        "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path),
        "TVBRIDGE_SESSIONS__ENABLED": "false",
    }
    env.update(store_env)
    return load_config(None, converter, env, tmp_path)


@pytest.fixture
def make_client(aiohttp_client: Any, converter: Any) -> ClientFactory:
    async def make(config: Config) -> TestClient[web.Request, web.Application]:
        app = create_app(config, converter, resolve_credentials(config))
        client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
        return client

    return make


@pytest.fixture
async def client(make_client: ClientFactory, config: Config) -> TestClient[web.Request, web.Application]:
    return await make_client(config)
