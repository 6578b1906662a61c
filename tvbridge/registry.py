"""Finding broker plugins through the `tvbridge.brokers` entry point group, and building the accounts.

The core imports no broker: `paper` and `dhan` are found the same way as a third-party plugin. Only the
brokers that configured accounts use are loaded, and every problem (not installed, import error, wrong API
version, missing methods, bad settings) is a `PluginError` naming the account, the entry point and the
distribution, raised at start so the CLI exits before the first alert, not on it.
"""

from __future__ import annotations

import asyncio
import re
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, cast

import attrs
import structlog

from tvbridge.broker import (
    API_VERSION,
    CAPABILITY_METHODS,
    ENTRY_POINT_GROUP,
    Broker,
    BrokerContext,
    Capabilities,
    SettingsError,
    SharedDatabase,
)
from tvbridge.cluster import SOLO, Cluster, cluster_of
from tvbridge.config import ACCOUNT_KEYS
from tvbridge.errors import PluginError, PluginStartError
from tvbridge.fileid import FileIdentity
from tvbridge.pluginguard import GuardedBroker, LoopWatchdog, PluginTimeoutError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from datetime import datetime

    from aiohttp import web

    from tvbridge.broker import JournalJoiner
    from tvbridge.config import Config

log = structlog.get_logger()

REQUIRED_METHODS = ("from_settings", "start", "place", "cancel", "lookup", "health", "aclose")
"""Every plugin has these. The methods of an optional capability (`CAPABILITY_METHODS`) are checked per
account, once `from_settings()` has built the instance and its `capabilities` can be read."""


@attrs.frozen(kw_only=True)
class PluginInfo:
    name: str
    value: str
    distribution: str
    version: str


def installed_plugins() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def describe(ep: EntryPoint) -> PluginInfo:
    dist = ep.dist
    return PluginInfo(
        name=ep.name,
        value=ep.value,
        distribution=dist.name if dist is not None else "?",
        version=dist.version if dist is not None else "?",
    )


def load_plugin_class(name: str, *, account: str = "") -> type[Any]:
    """The plugin class registered as `name`; `PluginError` says why it cannot be used."""
    where = f"account {account!r}: " if account else ""
    available = installed_plugins()
    ep = available.get(name)
    if ep is None:
        known = ", ".join(sorted(available)) or "none"
        raise PluginError(f"{where}no broker plugin named {name!r} is installed (installed: {known})")
    info = describe(ep)
    origin = f"entry point {name!r} ({info.value}) from {info.distribution} {info.version}"
    try:
        cls: type[Any] = ep.load()
    except Exception as e:
        raise PluginError(f"{where}{origin} failed to import: {type(e).__name__}: {e}") from e
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise PluginError(f"{where}{origin} does not implement the broker interface: missing {', '.join(missing)}")
    version = getattr(cls, "api_version", None)
    if version is None:
        raise PluginError(
            f"{where}{origin} does not declare api_version: set `api_version = tvbridge.broker.API_VERSION` "
            f"on the class (this tvbridge speaks broker API version {API_VERSION})"
        )
    if version != API_VERSION:
        older = isinstance(version, int) and version < API_VERSION
        fix = f"upgrade {info.distribution}" if older else f"upgrade tvbridge or install an older {info.distribution}"
        raise PluginError(
            f"{where}{origin} was written for broker API version {version!r}, but this tvbridge "
            f"{_tvbridge_version()} speaks version {API_VERSION}: {fix}"
        )
    return cls


def _tvbridge_version() -> str:
    from tvbridge import __version__  # noqa: PLC0415 - only error messages need it

    return __version__


@attrs.frozen(kw_only=True)
class PluginReport:
    """One installed plugin as `tvbridge brokers` shows it: loaded (`error` empty) or not, and why."""

    info: PluginInfo
    api_version: object = None
    error: str = ""
    cls: type[Any] | None = None


def discover() -> list[PluginReport]:
    """Every installed plugin, each loaded on its own: one that fails to import or does not fit the interface
    is reported with its error and does not hide the others."""
    reports: list[PluginReport] = []
    for name, ep in sorted(installed_plugins().items()):
        info = describe(ep)
        try:
            cls = load_plugin_class(name)
        except PluginError as e:
            reports.append(PluginReport(info=info, error=str(e)))
            continue
        reports.append(PluginReport(info=info, api_version=cls.api_version, cls=cls))
    return reports


_KEY_PREFIX = re.compile(r"^([A-Za-z_][\w\-]*(?:[.\[][\w\-.\[\]]*)?): ")


def settings_problem(account: str, error: ValueError) -> str:
    """`accounts.NAME.key: message` for every problem the plugin reported (a `SettingsError`, or a plain
    `ValueError("key: message")`); `accounts.NAME: message` when the plugin named no key."""
    if isinstance(error, SettingsError):
        return "; ".join(
            f"accounts.{account}.{key}: {message}" if key else f"accounts.{account}: {message}"
            for key, message in error.problems
        )
    text = str(error)
    if _KEY_PREFIX.match(text):
        return f"accounts.{account}.{text}"
    return f"accounts.{account}: {text}"


def plugin_table(config: Config, account: str) -> tuple[str, dict[str, Any]]:
    """The account's broker name and the table its plugin sees (without `broker` and tvbridge's own keys)."""
    table = {k: v for k, v in config.accounts.get(account, {}).items() if k not in ACCOUNT_KEYS}
    return str(table.pop("broker", account)), table


def interface_problem(broker: object) -> str:
    """Why `broker` (what `from_settings()` returned) cannot be used, or "". Not `isinstance(broker, Broker)`:
    the protocol also lists the optional capabilities' methods, which a plugin that does not declare them may
    lack (a plugin written before they existed keeps loading)."""
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(broker, m, None))]
    if missing or not hasattr(broker, "capabilities"):
        return f"from_settings did not return a broker (missing: {', '.join(missing) or 'capabilities'})"
    capabilities = broker.capabilities
    if not isinstance(capabilities, Capabilities):
        return f"capabilities is a {type(capabilities).__name__}, not a tvbridge.broker.Capabilities"
    for flag, methods in CAPABILITY_METHODS.items():
        lacking = [m for m in methods if getattr(capabilities, flag) and not callable(getattr(broker, m, None))]
        if lacking:
            return (
                f"declares capabilities.{flag} = True but has no {', '.join(f'{m}()' for m in lacking)} method:"
                f" implement it or leave {flag} false"
            )
    return ""


def build_brokers(
    config: Config,
    *,
    notify: Callable[[str, str], None] | None = None,
    cluster: Cluster = SOLO,
    clock: Callable[[], datetime] | None = None,
) -> dict[str, Broker]:
    """One plugin instance per routed account, each from its own config table; `cluster` and `clock` (the
    server's: its store, its wall clock) reach each plugin in its `BrokerContext`.

    The table reaches the plugin without `broker` and without the keys tvbridge reads itself (`ACCOUNT_KEYS`:
    the risk limits and `when_closed`), so plugins that refuse unknown keys need not know them.
    """
    brokers: dict[str, Broker] = {}
    for account in config.used_accounts:
        name, table = plugin_table(config, account)
        cls = load_plugin_class(name, account=account)
        context = BrokerContext(
            account=account,
            data_dir=config.server.data_dir,
            cluster=cluster,
            database=SharedDatabase(config.journal.url) if config.journal.url else None,
            sqlite_journal=config.data_path(config.journal.path) if config.journal.url else None,
        )
        if notify is not None:
            context = attrs.evolve(context, notify=notify)
        if clock is not None:
            context = attrs.evolve(context, clock=clock)
        try:
            broker = cls.from_settings(table, context)
        except ValueError as e:
            raise PluginError(settings_problem(account, e)) from None
        except (TypeError, KeyError) as e:
            raise PluginError(f"accounts.{account}: {type(e).__name__}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a plugin bug in its settings parser: one line naming it, no traceback
            raise PluginError(
                f"accounts.{account}: the {name!r} broker plugin's from_settings() failed:"
                f" {type(e).__name__}: {_one_line(e)}"
            ) from None
        problem = interface_problem(broker)
        if problem:
            raise PluginError(f"accounts.{account}: {name}: {problem}")
        brokers[account] = broker
    return brokers


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:500] or "(no message)"


def guard_brokers(
    config: Config, brokers: Mapping[str, Broker], watchdog: LoopWatchdog | None = None
) -> dict[str, Broker]:
    """Each plugin behind the host's timeout (`broker_timeout_s`) and loop-blocking detector."""
    return {
        account: cast(
            "Broker",
            GuardedBroker(
                broker,
                account=account,
                plugin=config.broker_of(account),
                timeout_s=config.broker_timeout_of(account),
                watchdog=watchdog,
                from_the_call=bool(config.journal.url),
            ),
        )
        for account, broker in brokers.items()
    }


async def start_broker(account: str, plugin: str, broker: Broker) -> None:
    """`broker.start()`; `PluginStartError` in one line naming the account and the plugin if it raises or
    does not return (a plugin's bug must not end in a traceback, nor a hang at start)."""
    try:
        await broker.start()
    except PluginTimeoutError as e:
        raise PluginStartError(f"accounts.{account}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any failure of a plugin's start() stops the start the same way
        raise PluginStartError(
            f"accounts.{account}: the {plugin!r} broker plugin failed to start: {type(e).__name__}: {_one_line(e)}"
        ) from None


async def brokers_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: start every account's broker; close the ones that started, in reverse."""
    from tvbridge.keys import (  # noqa: PLC0415 - keys imports this module's types
        BROKERS,
        CONFIG,
        JOINED,
        JOURNAL,
        NOTIFIER,
        NOW,
        PLUGIN_FILES,
    )

    config = app[CONFIG]
    watchdog = LoopWatchdog(asyncio.get_running_loop())
    notifier = app.get(NOTIFIER)
    journal = app.get(JOURNAL)
    cluster = (
        SOLO
        if journal is None
        else cluster_of(journal, key=config.journal.shared_secret_key, lease_s=config.journal.leader_lease_s)
    )
    built = build_brokers(
        config, notify=notifier.event if notifier is not None else None, cluster=cluster, clock=app.get(NOW)
    )
    app[JOINED] = offer_journal(journal, built)
    brokers = guard_brokers(config, built, watchdog)
    started: list[tuple[str, Broker]] = []
    watchdog.start()
    try:
        for account, broker in brokers.items():
            await start_broker(account, config.broker_of(account), broker)
            started.append((account, broker))
            log.info("broker.started", account=account, broker=config.broker_of(account))
        app[BROKERS] = brokers
        app[PLUGIN_FILES] = tuple(
            FileIdentity.of(path)
            for broker in brokers.values()
            if broker.capabilities.state_files
            for path in broker.state_files()
        )
        yield
    finally:
        for account, broker in reversed(started):
            try:
                await broker.aclose()
            except Exception:
                log.exception("broker.close_failed", account=account)
        await asyncio.to_thread(watchdog.stop)


def offer_journal(journal: object, plugins: Mapping[str, Broker]) -> dict[str, JournalJoiner]:
    """Before `start()`: offer the SQLite journal to each plugin that declares `capabilities.joins_journal`
    (`JournalJoiner.join_journal`, issue 22); returns the plugins that joined, by account. None with PostgreSQL (a
    plugin keeps its own transactions there) or without a journal (the CLI's checks)."""
    from tvbridge.journal import Journal  # noqa: PLC0415 - the journal imports the registry's neighbours

    if not isinstance(journal, Journal):
        return {}
    joined: dict[str, JournalJoiner] = {}
    for account, plugin in plugins.items():
        joiner = cast("JournalJoiner", plugin)
        if plugin.capabilities.joins_journal and joiner.join_journal(journal.database):
            joined[account] = joiner
            log.info("broker.joined_journal", account=account, journal=str(journal.path))
    return joined


def brokers_of(config: Config) -> Mapping[str, str]:
    return {account: config.broker_of(account) for account in config.used_accounts}
