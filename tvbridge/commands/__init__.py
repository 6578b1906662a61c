"""Subcommands of the `tvbridge` command, one module per area; `cli.py` wires them in."""
