"""Subcommands of `tvbridge` that are more than a few lines, one module each, so `cli.py` stays the small
argv -> config -> dispatch module. Each module exposes `add_parser(subparsers)` and `run(args, config) -> int`."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    import argparse

    from tvbridge.config import Config

COMMANDS_GROUP: Final = "tvbridge.commands"
"""Entry point group for subcommands that a broker plugin brings (`tvbridge dhan ...`): the core imports no
broker, so a broker's own commands are found the same way the broker is."""


class PluginCommand(Protocol):
    def add_parser(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...

    def run(self, args: argparse.Namespace, config: Config) -> int: ...


def plugin_commands() -> dict[str, PluginCommand]:
    """Installed plugin subcommands by name; one that fails to import is left out, never stops the CLI."""
    found: dict[str, PluginCommand] = {}
    for ep in entry_points(group=COMMANDS_GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception:  # noqa: BLE001, S112 - a broken plugin's command must not break `tvbridge` itself
            continue
    return found
