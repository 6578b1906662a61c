"""`tvbridge halt | resume | queue list | queue cancel ID | flatten --account NAME [--yes]`.

These work beside a running server: the halt file and the journal's queue table are what the server reads
(halt on every alert, the queue at least every 30 s), so no restart or signal is needed. `flatten` opens the
account's broker itself, shows the plan, and acts only with `--yes`, recording each action in the same journal
and order log as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
from typing import TYPE_CHECKING

from tvbridge import alertqueue
from tvbridge.broker import BrokerError
from tvbridge.flatten import execute, make_plan
from tvbridge.halt import clear_halt, halt_path, read_halt, set_halt
from tvbridge.orderlog import OrderLog
from tvbridge.registry import build_brokers, offer_journal
from tvbridge.store import Store, open_store
from tvbridge.strategies import strategy_halt_path

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tvbridge.broker import Broker
    from tvbridge.config import Config

COMMANDS = ("halt", "resume", "queue", "flatten")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the trading-day subcommands on the main `tvbridge` parser."""
    halt = sub.add_parser("halt", help="kill switch: refuse every alert and send nothing until `tvbridge resume`")
    halt.add_argument("--reason", default="", help="shown in /health, /market and every refused alert")
    halt.add_argument("--strategy", help="halt only this [strategies.NAME]; the others keep trading")
    resume = sub.add_parser("resume", help="turn the kill switch off")
    resume.add_argument("--strategy", help="resume only this [strategies.NAME]")
    queue = sub.add_parser("queue", help="alerts waiting for their exchange to open")
    queue_sub = queue.add_subparsers(dest="queue_command", required=True)
    listing = queue_sub.add_parser("list", help="show queued alerts")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--all", action="store_true", help="also entries already sent, cancelled or failed")
    cancel = queue_sub.add_parser("cancel", help="remove a queued alert (its alert id) so it is never sent")
    cancel.add_argument("alert_id")
    cancel.add_argument("--account", help="only this account's entry")
    flatten = sub.add_parser("flatten", help="cancel an account's open orders and close its positions")
    flatten.add_argument("--account", required=True)
    flatten.add_argument("--yes", action="store_true", help="act; without it the plan is only shown")


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry): the halt must still work
        return "unknown user"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvbridge")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def main(config: Config, argv: Sequence[str]) -> int:
    """Run one trading-day command (argv without the program name); returns the exit code."""
    return run(_parser().parse_args(argv), config)


def run(args: argparse.Namespace, config: Config) -> int:
    path = halt_path(config.server.data_dir)
    strategy = getattr(args, "strategy", None)
    if strategy is not None:
        if strategy not in config.strategies:
            print(f"no strategy {strategy!r} (strategies: {', '.join(config.strategies) or 'none configured'})")
            return 2
        path = strategy_halt_path(config.server.data_dir, strategy)
    what = "trading" if strategy is None else f"strategy {strategy}"
    undo = "tvbridge resume" + ("" if strategy is None else f" --strategy {strategy}")
    if args.command == "halt":
        state = set_halt(path, reason=args.reason or "halted with `tvbridge halt`", by=f"cli ({_user()})")
        print(f"{what} halted: {state.reason}. Its alerts get 503 and nothing is sent. Undo: {undo}")
        return 0
    if args.command == "resume":
        was = read_halt(path)
        clear_halt(path)
        print(f"{what} resumed" if was else f"{what} was not halted")
        return 0
    if args.command == "queue":
        return asyncio.run(_queue(config, args))
    return asyncio.run(_flatten(config, args.account, confirm=args.yes))


async def _open_journal(config: Config) -> Store:
    journal = open_store(config)
    await journal.open()
    await journal.ensure_tables(alertqueue.create_schema)
    return journal


async def _queue(config: Config, args: argparse.Namespace) -> int:
    journal = await _open_journal(config)
    try:
        if args.queue_command == "list":
            entries = await alertqueue.list_entries(journal, include_done=args.all)
            if args.json:
                print(json.dumps([e.as_json() for e in entries], indent=2))
            elif not entries:
                print("the queue is empty")
            for e in entries if not args.json else []:
                print(f"{e.alert_id}  {e.account}  {e.state}  at {e.not_before.isoformat()}  {e.reason}")
            return 0
        cancelled = await alertqueue.cancel_entries(journal, args.alert_id, args.account)
        if not cancelled:
            print(f"nothing queued for alert {args.alert_id}")
            return 1
        for e in cancelled:
            print(f"cancelled {e.alert_id} on {e.account} (was due {e.not_before.isoformat()})")
        return 0
    finally:
        await journal.close()


async def _flatten(config: Config, account: str, *, confirm: bool) -> int:
    if account not in config.used_accounts:
        print(f"no routed account {account!r} (accounts: {', '.join(config.used_accounts)})")
        return 2
    broker = build_brokers(config)[account]
    # a broker that may join the journal (paper) keeps its orders and positions in the journal's file: the journal
    # first, offered to it. Any other previews without it, as before (a preview writes nothing)
    journal = await _open_journal(config) if broker.capabilities.joins_journal else None
    try:
        if journal is not None:
            offer_journal(journal, {account: broker})
        await broker.start()
        try:
            return await _flatten_with(config, account, broker, journal, confirm=confirm)
        finally:
            await broker.aclose()
    finally:
        if journal is not None:
            await journal.close()


async def _flatten_with(config: Config, account: str, broker: Broker, journal: Store | None, *, confirm: bool) -> int:
    try:
        plan = await make_plan(account, broker)
    except BrokerError as e:
        print(f"account {account}: cannot list what is open: {e}")
        return 1
    for line in plan.lines():
        print(line)
    if plan.unsupported:
        return 1
    if not confirm:
        print("nothing was done: run again with --yes to do this")
        return 0
    store = journal if journal is not None else await _open_journal(config)
    order_log = OrderLog(config.data_path(config.order_log.file))
    try:
        await order_log.open()
        try:
            report = await execute(
                plan,
                broker,
                broker_name=config.broker_of(account),
                journal=store,
                order_log=order_log,
                source=f"cli ({_user()})",
            )
        finally:
            await order_log.close()
    finally:
        if journal is None:
            await store.close()
    for line in report.lines:
        print(line)
    print(f"recorded as {report.alert_id} ({report.status}): tvbridge's journal and order log")
    return 0 if report.status in {"success", "test_mode"} else 1
