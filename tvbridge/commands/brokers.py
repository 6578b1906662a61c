"""`tvbridge brokers`: which broker plugins are installed, from which distribution, and what they can do.

It is the first thing to run after `pip install`-ing a plugin: it loads every plugin of the `tvbridge.brokers`
group on its own, so one that fails to import (or was built for another API version) is listed with its error
and does not hide the others; the exit code is 1 when any plugin is broken. Capabilities belong to an instance
(they may depend on settings, e.g. `live`), so they are read from an instance built with `from_settings()`
(which does no I/O) from the first configured account of that broker, or from an empty table; when that fails
the reason is shown instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvbridge.broker import API_VERSION, BrokerContext, Capabilities
from tvbridge.registry import PluginReport, discover, settings_problem

if TYPE_CHECKING:
    import argparse

    from tvbridge.config import Config

CAPABILITY_SETS = ("order_types", "products", "exchanges", "instruments")
HELP = "list the installed broker plugins: version, distribution, capabilities, load errors"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("brokers", help=HELP, description=HELP)
    parser.add_argument("--json", action="store_true", help="one JSON document instead of text")


def run(args: argparse.Namespace, config: Config | None) -> int:
    rows = [describe(report, config) for report in discover()]
    if args.json:
        print(json.dumps({"api_version": API_VERSION, "plugins": rows}, indent=2))
    else:
        print(render(rows))
    broken = [row["name"] for row in rows if row["error"]]
    if broken:
        print(f"tvbridge: {len(broken)} broker plugin(s) cannot be used: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


def describe(report: PluginReport, config: Config | None) -> dict[str, Any]:
    """One plugin as plain data (the `--json` shape; the text output shows the same fields)."""
    info = report.info
    row: dict[str, Any] = {
        "name": info.name,
        "entry_point": info.value,
        "distribution": info.distribution,
        "version": info.version,
        "api_version": report.api_version,
        "error": report.error,
        "capabilities": None,
        "capabilities_error": "",
        "accounts": [],
    }
    if config is not None:
        row["accounts"] = [name for name in config.accounts if config.broker_of(name) == info.name]
    if report.cls is None:
        return row
    account = row["accounts"][0] if row["accounts"] else info.name
    table: dict[str, object] = {}
    if config is not None and row["accounts"]:
        table = {k: v for k, v in config.accounts[account].items() if k != "broker"}
    data_dir = config.server.data_dir if config is not None else Path()
    try:
        context = BrokerContext(account=account, data_dir=data_dir)
        instance = report.cls.from_settings(table, context)
        capabilities = instance.capabilities
    except ValueError as e:
        where = "its account's settings" if row["accounts"] else "an empty settings table"
        row["capabilities_error"] = f"not built from {where}: {settings_problem(account, e)}"
        return row
    except Exception as e:  # noqa: BLE001 - a plugin bug is reported, never a traceback
        row["capabilities_error"] = f"from_settings failed: {type(e).__name__}: {e}"
        return row
    if isinstance(capabilities, Capabilities):
        row["capabilities"] = capabilities_dict(capabilities)
    else:
        row["capabilities_error"] = f"capabilities is a {type(capabilities).__name__}, not a Capabilities"
    return row


def capabilities_dict(capabilities: Capabilities) -> dict[str, Any]:
    return {
        "order_types": sorted(capabilities.order_types),
        "products": sorted(capabilities.products),
        "exchanges": sorted(capabilities.exchanges),
        "instruments": sorted(capabilities.instruments),
        "cancel": capabilities.cancel,
        "positions": capabilities.positions,
        "orders": capabilities.orders,
        "reconfigure": capabilities.reconfigure,
        "live": capabilities.live,
        "instrument_info": capabilities.instrument_info,
        "listings": capabilities.listings,
        "funds": capabilities.funds,
    }


def render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no broker plugins installed (entry point group tvbridge.brokers)"
    lines: list[str] = []
    for row in rows:
        status = "BROKEN" if row["error"] else "ok"
        lines.append(f"{row['name']}  [{status}]")
        lines.append(f"  distribution: {row['distribution']} {row['version']}")
        lines.append(f"  entry point:  {row['entry_point']}")
        if row["error"]:
            lines.append(f"  error:        {row['error']}")
            continue
        lines.append(f"  api version:  {row['api_version']}")
        if row["accounts"]:
            lines.append(f"  accounts:     {', '.join(row['accounts'])}")
        caps = row["capabilities"]
        if caps is None:
            lines.append(f"  capabilities: unknown ({row['capabilities_error']})")
        else:
            lines.extend(f"  {key + ':':<14}{', '.join(caps[key])}" for key in CAPABILITY_SETS)
            lines.append(f"  {'cancel:':<14}{'yes' if caps['cancel'] else 'no'}")
            lines.append(f"  {'positions:':<14}{'yes' if caps['positions'] else 'no (no EXIT_ALL, no flatten closes)'}")
            lines.append(f"  {'orders:':<14}{'yes' if caps['orders'] else 'no (flatten cannot list open orders)'}")
            lines.append(f"  {'reconfigure:':<14}{'yes (SIGHUP)' if caps['reconfigure'] else 'no (restart to apply)'}")
            lines.append(f"  {'live:':<14}{'yes' if caps['live'] else 'no (simulated or dry-run)'}")
            lot_sizes = "yes (quantity_unit lots works on F&O)" if caps["instrument_info"] else "no (lots: equity only)"
            lines.append(f"  {'lot sizes:':<14}{lot_sizes}")
            listings = "yes (ATM strikes, current_week)" if caps["listings"] else "no (strikes, expiries by value)"
            lines.append(f"  {'listings:':<14}{listings}")
            funds = "yes (percent_of_funds sizing)" if caps["funds"] else "no (no percent_of_funds)"
            lines.append(f"  {'funds:':<14}{funds}")
    return "\n".join(lines)
