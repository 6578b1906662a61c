"""The `tvbridge` command: argv -> config -> logging -> serve, and the small admin commands.

Exit codes: 0 clean stop (also after SIGTERM / Ctrl-C), 1 runtime failure at start (port taken, journal or
broker cannot start), 2 bad configuration or usage. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import web

from tvbridge import __version__
from tvbridge.app import create_app
from tvbridge.commands import PluginCommand, plugin_commands, trading
from tvbridge.commands import brokers as brokers_command
from tvbridge.commands import db as db_command
from tvbridge.commands import ready as ready_command
from tvbridge.commands import status as status_command
from tvbridge.config import effective_settings, find_config_file, is_secret_key, load_config
from tvbridge.connections import ConnectionGuard, GuardedSite, handler_args
from tvbridge.errors import ConfigError, PluginError, TvBridgeError
from tvbridge.eventloop import loop_factory, loop_name
from tvbridge.keys import METRICS, STATE
from tvbridge.lifecycle import begin_shutdown
from tvbridge.logsetup import configure_logging, reopen_log_files
from tvbridge.lots import instrument_warnings
from tvbridge.notify import apprise_sender, url_secrets
from tvbridge.parsing import ALERT_EXAMPLE, make_converter
from tvbridge.registry import build_brokers
from tvbridge.reload import PID_FILE, reload_brokers, write_pid_file
from tvbridge.secretstore import SECRET_FILE, check_secrets, resolve_credentials, secret_in_use
from tvbridge.testclock import wall_clock
from tvbridge.tls import server_context

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Mapping, Sequence

    import cattrs

    from tvbridge.config import Config
    from tvbridge.secretstore import Credentials

log = structlog.get_logger()

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def _parser(extra: Mapping[str, PluginCommand]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvbridge", description="TradingView alerts to broker orders.")
    parser.add_argument("--version", action="version", version=f"tvbridge {__version__}")
    parser.add_argument("--config", help="config file (default: $TVBRIDGE_CONFIG, else ./config.toml if present)")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in extra.values():
        command.add_parser(sub)
    sub.add_parser("serve", help="run the webhook server")
    sub.add_parser("check-config", help="validate the config and print the effective settings, secrets masked")
    secret = sub.add_parser("secret", help="where the webhook secret is, and how to rotate it")
    secret.add_argument("--rotate", action="store_true", help="replace a generated secret with a new one")
    brokers_command.add_parser(sub)
    status_command.add_parser(sub)
    ready_command.add_parser(sub)
    trading.add_parser(sub)
    db_command.add_parser(sub)
    return parser


def _fail(message: str, code: int) -> int:
    print(f"tvbridge: {message}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace, converter: cattrs.Converter) -> Config:
    cwd = Path.cwd()
    return load_config(find_config_file(args.config, os.environ, cwd), converter, os.environ, cwd)


def _load_optional(args: argparse.Namespace, converter: cattrs.Converter) -> Config | None:
    """The config for commands that are useful without one (`brokers`): a broken config is said, not fatal."""
    try:
        return _load(args, converter)
    except ConfigError as e:
        print(f"tvbridge: config not used ({e})", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one return per subcommand
    extra = plugin_commands()
    args = _parser(extra).parse_args(argv)
    converter = make_converter()
    if args.command == "brokers":
        return brokers_command.run(args, _load_optional(args, converter))
    try:
        config = _load(args, converter)
        if args.command in trading.COMMANDS:
            return trading.run(args, config)
        if args.command == "check-config":
            return _check_config(config, converter)
        if args.command == "secret":
            return _secret(config, rotate=args.rotate)
        commands = {**extra, "status": status_command, "ready": ready_command, "db": db_command}
        if args.command in commands:
            return commands[args.command].run(args, config)
        return _serve(config, converter, lambda: _load(args, converter))
    except (ConfigError, PluginError) as e:
        return _fail(f"config error: {e}", EXIT_CONFIG)
    except TvBridgeError as e:
        return _fail(str(e), EXIT_RUNTIME)


def _check_config(config: Config, converter: cattrs.Converter) -> int:
    """Everything `serve` checks before it opens a file or a port, in the same words and exit codes."""
    check_secrets(config, secret_in_use(config))  # a weak secret or path token with a live account on; a reused one
    brokers = build_brokers(config)  # each account's own settings are validated by its plugin
    server_context(config)  # the TLS certificate, key and client CA files load
    loop_factory(config.server.event_loop)  # server.event_loop = "uvloop" with uvloop missing
    if config.notify.urls:
        apprise_sender(config.notify.urls)  # notification URLs (from the file or the environment) apprise knows
    print(json.dumps(effective_settings(config, converter), indent=2, default=str))
    for warning in instrument_warnings(config, brokers):
        print(f"tvbridge: warning: {warning}", file=sys.stderr)
    print("config ok", file=sys.stderr)
    return EXIT_OK


def _secret(config: Config, *, rotate: bool) -> int:
    if config.auth.secret:
        print("The webhook secret comes from auth.secret / WEBHOOK_SECRET (config, .env or environment).")
        print('To rotate it: set a new value there, restart, and update the "secret" of every TradingView alert.')
        return EXIT_OK
    path = config.data_path(SECRET_FILE).resolve()
    if rotate:
        path.unlink(missing_ok=True)
    credentials = resolve_credentials(config)
    print(f"The webhook secret is in {path} (mode 0600). Show it with: cat {path}")
    if rotate:
        print('A new secret was generated. Restart tvbridge and update the "secret" of every TradingView alert.')
    else:
        print("To rotate it: tvbridge secret --rotate, restart, then update your TradingView alerts.")
    del credentials
    return EXIT_OK


DIGITS_ONLY_SECRETS: Final = frozenset({"pin"})
"""Secret by key (masked by check-config and in any log field named so) but not blanked by value from every log
string: a PIN is a few digits, and blanking it would blank order ids, prices and dates. Nothing logs it."""


def _broker_secrets(config: Config) -> list[str]:
    found: list[str] = []

    def walk(node: object, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, str) and is_secret_key(key) and key not in DIGITS_ONLY_SECRETS:
            found.append(node)

    walk({name: dict(table) for name, table in config.accounts.items()})
    return found


def _first_run_notice(credentials: Credentials, url: str) -> None:
    if "secret" not in credentials.generated or credentials.secret_file is None:
        return
    where = credentials.secret_file.resolve()
    template: dict[str, Any] = {**ALERT_EXAMPLE, "secret": f"<the contents of {where}>"}
    print(
        f"tvbridge: first run: generated a strong webhook secret in {where} (mode 0600).\n"
        f"  Show it with: cat {where}\n"
        '  Paste this as the alert message in TradingView, with "secret" set to that value:\n'
        f"{json.dumps(template, indent=2)}\n"
        f"  Webhook URL: {url} (TradingView needs it reachable on port 80/443: see the README)\n",
        file=sys.stderr,
    )


def _serve(config: Config, converter: cattrs.Converter, reload_config: Callable[[], Config] | None = None) -> int:
    credentials = resolve_credentials(config)
    log_file = config.data_path(config.logging.file) if config.logging.file else None
    try:
        configure_logging(
            level=config.logging.level,
            fmt=config.logging.format,
            file=log_file,
            secrets=[*credentials.all, *_broker_secrets(config), *url_secrets(config.notify.urls)],
        )
    except OSError as e:  # a read-only data directory, a directory where the log file should be
        return _fail(f"cannot start: logging.file {e.filename or log_file}: {e.strerror or e}", EXIT_RUNTIME)
    ssl_context = server_context(config)
    app = create_app(config, converter, credentials, clock=wall_clock(os.environ))
    try:
        with asyncio.Runner(loop_factory=loop_factory(config.server.event_loop)) as runner:
            return runner.run(_run(app, config, credentials, ssl_context, reload_config))
    except (OSError, sqlite3.Error) as e:  # a data file that cannot be opened (the order log, a broker's file)
        log.error("server.start_failed", error=str(e))
        return _fail(f"cannot start: {e}", EXIT_RUNTIME)


GC_YOUNG_THRESHOLD: Final = 50_000
"""Surviving allocations between young-generation collections (CPython's default is 700). Nearly everything a
request allocates is freed by reference counting; what survives is a little cyclic garbage. Measured with
`gc.callbacks` over 10,000 benchmark alerts: at the default ~270 young collections (pauses up to ~1 ms, ~100 ms
in all); with the start-up heap frozen and this threshold, none."""


def settle_heap() -> None:
    """Once started: move everything that lives as long as the process (modules, config, the app) out of the
    collector's sight (`gc.freeze`), and collect the young generation less often. Cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _on_sighup(app: web.Application, reload_config: Callable[[], Config] | None) -> None:
    """SIGHUP: reopen the log file (after logrotate), then re-read the brokers' account tables (a renewed token)."""
    log.info("log.reopened", files=reopen_log_files())
    if reload_config is not None:
        app[STATE].spawn(reload_brokers(app, reload_config), name="reload")


async def _run(
    app: web.Application,
    config: Config,
    credentials: Credentials,
    ssl_context: ssl.SSLContext | None = None,
    reload_config: Callable[[], Config] | None = None,
) -> int:
    handler = handler_args(config)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=config.server.shutdown_grace_s, **handler)
    guard = ConnectionGuard.from_config(config, app[METRICS])
    app[METRICS].connections_open.set_function(lambda: guard.open)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP (logrotate's postrotate; a renewed broker token): asyncio keeps one handler per signal, so this one
    # reopens the log file and reloads the brokers' account tables; the default action would kill us
    loop.add_signal_handler(signal.SIGHUP, _on_sighup, app, reload_config)
    try:
        await runner.setup()
    except (PluginError, ConfigError) as e:
        await runner.cleanup()
        raise ConfigError(str(e)) from None
    except TvBridgeError as e:
        await runner.cleanup()
        log.error("server.start_failed", error=str(e))
        return _fail(f"cannot start: {e}", EXIT_RUNTIME)
    try:
        settle_heap()  # before the first request: the collection pauses nobody, and no request's objects freeze
        site = GuardedSite(
            runner, config.server.host, config.server.port, guard=guard, handler_args=handler, ssl_context=ssl_context
        )
        await site.start()
        host, port = runner.addresses[0][:2]
        url = f"{'https' if ssl_context else 'http'}://{host}:{port}/webhook"
        _first_run_notice(credentials, url)
        log.info(
            "server.started",
            host=host,
            port=port,
            version=__version__,
            tls=ssl_context is not None,
            event_loop=loop_name(loop),
            accounts=list(config.routing.accounts),
            secret_source=str(credentials.secret_file) if credentials.secret_file else "config",
        )
        pid_file = config.data_path(PID_FILE)
        write_pid_file(pid_file)
        await stop.wait()
        pid_file.unlink(missing_ok=True)
        log.info("server.stopping", reason="signal")
        await begin_shutdown(app)  # 503 to new alerts while in-flight ones finish; then stop listening
    finally:
        await runner.cleanup()
        log.info("server.stopped")
    return EXIT_OK
