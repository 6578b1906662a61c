"""SIGHUP: re-read the configuration and hand each running broker its account's new table.

This is how a renewed broker token (Dhan's expire within 24 h) is used without a restart: edit `config.toml`
or `.env` (or run `tvbridge dhan token set`), then `kill -HUP <pid>` (the pid is in `tvbridge.pid` in the data
directory). Only brokers that declare `capabilities.reconfigure` take part (through their `reconfigure(settings)`);
everything else in the config (routing, guards, listening address) needs a restart. A config that does not
load is logged and ignored: the server keeps running on what it has. Variables in the server's own environment
are not re-read; a token meant to be renewed this way belongs in `.env` or the config file.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

import structlog

from tvbridge.errors import TvBridgeError
from tvbridge.keys import BROKERS
from tvbridge.registry import plugin_table

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from aiohttp import web

    from tvbridge.config import Config

log = structlog.get_logger()

PID_FILE: Final = "tvbridge.pid"


async def reload_brokers(app: web.Application, load: Callable[[], Config]) -> None:
    try:
        config = load()
    except TvBridgeError as e:
        log.error("config.reload_failed", error=str(e))
        return
    for account, broker in app[BROKERS].items():
        if not broker.capabilities.reconfigure:
            continue
        _, table = plugin_table(config, account)
        try:
            await broker.reconfigure(table)
        except Exception as e:  # noqa: BLE001 - the running configuration stays; the operator reads why
            log.error("broker.reconfigure_failed", account=account, error=f"{type(e).__name__}: {e}")
        else:
            log.info("broker.reconfigured", account=account)


def write_pid_file(path: Path) -> None:
    path.write_text(f"{os.getpid()}\n", encoding="utf-8")


def signal_running_server(path: Path, sig: int) -> bool:
    """Send `sig` to the server whose pid is in `path`; False when none is running."""
    try:
        pid = int(path.read_text(encoding="utf-8").strip())
        os.kill(pid, sig)
    except (OSError, ValueError):
        return False
    return True
