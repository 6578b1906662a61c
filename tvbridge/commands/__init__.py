"""Subcommands of `tvbridge` that are more than a few lines, one module each, so `cli.py` stays the small
argv -> config -> dispatch module. Each module exposes `add_parser(subparsers)` and `run(args, config) -> int`."""
