"""`tvbridge dhan ...`: the Dhan plugin's own commands, found through the `tvbridge.commands` entry point.

* `tvbridge dhan instruments refresh [--account NAME]` downloads Dhan's instrument master (about 200k rows) to
  the account's `instruments_path`, atomically (a failed download keeps the old file), then asks a running
  server to load it (SIGHUP).
* `tvbridge dhan token set [--account NAME]` reads a new access token from standard input (never from the
  command line, where `ps` and the shell history would keep it), stores it as `DHAN_ACCESS_TOKEN` in `.env`
  and in the account's token store in the data directory (both mode 0600) and asks a running server to use it
  (SIGHUP): no restart, no alert lost. With `pin` and `totp_secret` configured the server renews and generates
  tokens itself (`token.py`); this command is the fix when it cannot.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dotenv import set_key

from tvbridge.registry import plugin_table
from tvbridge.reload import PID_FILE, signal_running_server
from tvbridge_brokers.dhan.refresh import RefreshError, refresh_instruments
from tvbridge_brokers.dhan.settings import default_instruments_path, parse_settings
from tvbridge_brokers.dhan.token import token_path, write_secret_file

if TYPE_CHECKING:
    import argparse

    from tvbridge.config import Config


def _dhan_account(config: Config, wanted: str | None) -> str:
    accounts = [name for name in config.accounts if config.broker_of(name) == "dhan"]
    if wanted:
        if wanted not in accounts:
            raise SystemExit(f"tvbridge: no dhan account named {wanted!r} (dhan accounts: {accounts or 'none'})")
        return wanted
    if not accounts:
        raise SystemExit("tvbridge: no dhan account is configured (set DHAN_CLIENT_ID or add [accounts.NAME])")
    return accounts[0]


def _tell_server(config: Config) -> None:
    if signal_running_server(config.data_path(PID_FILE), signal.SIGHUP):
        print("The running server was told to reload (SIGHUP); its log says broker.reconfigured.")
    else:
        print("No running server found; the next start uses it.")


class DhanCommand:
    def add_parser(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        dhan = sub.add_parser("dhan", help="Dhan: refresh the instrument master, set a new access token")
        actions = dhan.add_subparsers(dest="dhan_command", required=True)
        instruments = actions.add_parser("instruments", help="the instrument master")
        what = instruments.add_subparsers(dest="instruments_command", required=True)
        refresh = what.add_parser("refresh", help="download Dhan's instrument master (atomic)")
        refresh.add_argument("--account", help="the dhan account (default: the first one)")
        token = actions.add_parser("token", help="the access token")
        token_what = token.add_subparsers(dest="token_command", required=True)
        token_set = token_what.add_parser("set", help="store a new access token (read from standard input)")
        token_set.add_argument("--account", help="the dhan account (default: the first one)")

    def run(self, args: argparse.Namespace, config: Config) -> int:
        account = _dhan_account(config, args.account)
        if args.dhan_command == "instruments":
            return self._refresh(config, account)
        return self._set_token(config, account)

    def _refresh(self, config: Config, account: str) -> int:
        _, table = plugin_table(config, account)
        settings = parse_settings(table)
        dest = (
            Path(settings.instruments_path)
            if settings.instruments_path
            else default_instruments_path(config.server.data_dir)
        )
        print(f"Downloading Dhan's instrument master from {settings.instruments_url} to {dest} ...", flush=True)
        try:
            rows = asyncio.run(refresh_instruments(settings.instruments_url, dest))
        except RefreshError as e:
            print(f"tvbridge: {e}; the old file is kept", file=sys.stderr)
            return 1
        print(f"Done: {rows} instruments.")
        _tell_server(config)
        return 0

    def _set_token(self, config: Config, account: str) -> int:
        token = getpass.getpass("New Dhan access token: ") if sys.stdin.isatty() else sys.stdin.readline()
        token = token.strip()
        if not token:
            print("tvbridge: no token given (paste it, or pipe it in)", file=sys.stderr)
            return 2
        env_file = Path.cwd() / ".env"
        env_file.touch(mode=0o600, exist_ok=True)
        os.chmod(env_file, 0o600)  # noqa: PTH101 - also when it existed with wider permissions
        set_key(env_file, "DHAN_ACCESS_TOKEN", token, quote_mode="never")
        print(f"The new token is stored as DHAN_ACCESS_TOKEN in {env_file} (mode 0600).")
        # the account's own store wins over a stale configured token at start and on SIGHUP (dhan/token.py)
        write_secret_file(token_path(config.server.data_dir, account), token + "\n")
        if os.environ.get("DHAN_ACCESS_TOKEN"):
            print("Note: DHAN_ACCESS_TOKEN is also set in the environment, which wins over .env: update it there.")
        _tell_server(config)
        return 0


command = DhanCommand()
