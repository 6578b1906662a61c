"""Files that hold trading data are created readable by tvbridge's user only (0600), whatever the umask.

A umask of 022 (the usual default) would leave the journal, the paper book, the order log and the log file
readable by every local user: orders, positions, alert payloads. The mode is given when a file is created (a
umask only ever removes bits, and 0600 keeps the owner's), so it holds also under umask 0. SQLite gives its
`-wal` and `-shm` files the database file's own mode, so creating the database file first covers them. An
existing file keeps the mode it has: an operator who chose 0640 for a log shipper's group keeps that.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

PRIVATE: Final = 0o600


def create_private(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists; `OSError` if it cannot be (a read-only directory).

    An existing file is never opened (`O_EXCL`): closing any descriptor of a file drops every POSIX lock the
    process holds on it, and SQLite's locks on a live database are such locks. Each new connection to the
    journal (the checkpointer's, a reopen) came through here; its open-and-close released the server's shared
    lock, so an outside reader (`sqlite3 tvbridge.sqlite3 'select ...'`) closing after it believed itself the
    last connection and deleted the `-wal` file: the server's later commits went to a deleted file, lost at the
    next crash."""
    with contextlib.suppress(FileExistsError):  # resolved: O_EXCL refuses a symlink, even to no file yet
        os.close(os.open(path.resolve(), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE))
