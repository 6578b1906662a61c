"""`tvbridge db migrate`: create or bring up to date the PostgreSQL store's schema (`[journal] url`); `tvbridge db
new-key`: print a new `journal.shared_secret_key` (the key that encrypts a broker token shared through the store).

The server does the same at every start, so running it is optional; it is there for a deploy that migrates
once before starting the instances, or to see what a new release changes. Exit codes: 0 done (or nothing to do),
1 the database could not be reached or is newer than this tvbridge, 2 no `journal.url` configured.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from tvbridge.errors import ConfigError, JournalError
from tvbridge.store import connect_failure

if TYPE_CHECKING:
    import argparse

    from tvbridge.config import Config

HELP: Final = "the PostgreSQL store ([journal] url): `db migrate` creates or updates its schema"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("db", help=HELP, description=HELP)
    db_sub = parser.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("migrate", help="create or update the schema of the database at journal.url")
    db_sub.add_parser("new-key", help="print a new journal.shared_secret_key (give every instance the same one)")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.db_command == "new-key":
        return new_key()
    if not config.journal.url:
        raise ConfigError("journal.url is not set: `db migrate` is for the PostgreSQL store (SQLite needs none)")
    try:
        from tvbridge.store.postgres import migrate_url  # noqa: PLC0415 - asyncpg is an optional extra
    except ImportError:
        raise ConfigError(missing_driver()) from None
    try:
        before, after = asyncio.run(migrate_url(config.journal.url))
    except JournalError:
        raise
    except Exception as e:
        # never a parse error's text: it may quote the password (`connect_failure`)
        raise JournalError(f"the PostgreSQL journal cannot be migrated: {connect_failure(e)}") from e
    print(f"schema version {after}" + (f" (was {before})" if before != after else ": up to date"))
    return 0


def new_key() -> int:
    """A Fernet key from the OS's random source, printed for the operator to put in every instance's config."""
    try:
        from cryptography.fernet import Fernet  # noqa: PLC0415 - an optional extra, PostgreSQL only
    except ImportError:
        raise ConfigError("db new-key needs the cryptography package: pip install 'tvbridge[postgres]'") from None
    print(Fernet.generate_key().decode("ascii"))
    return 0


def missing_driver() -> str:
    return "journal.url needs the PostgreSQL driver: pip install 'tvbridge[postgres]'"
