"""Noticing that a file we hold open was deleted or replaced under the running server.

A process that keeps a file open keeps writing to the inode it opened: after `rm` or a `mv` over the path, the
writes go to a file nobody will read again, and the next start opens an empty one (an empty journal forgets
what was accepted and what dedupe has seen). The log file's rotation is noticed the same way
(`logsetup.py`): compare the path's `st_dev`/`st_ino` with those of the open file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable


@attrs.frozen(kw_only=True)
class FileIdentity:
    """Which file a path named when it was opened."""

    path: Path
    device: int
    inode: int

    @classmethod
    def of(cls, path: Path, fd: int | None = None) -> FileIdentity:
        """The identity of `fd` (or of the file at `path` now); `OSError` if there is none."""
        st = os.fstat(fd) if fd is not None else path.stat()
        return cls(path=path, device=st.st_dev, inode=st.st_ino)

    def problem(self) -> str:
        """Empty while `path` still names the file that was opened; otherwise what happened to it."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return f"{self.path} was deleted while tvbridge had it open"
        except OSError as e:
            return f"{self.path} cannot be checked: {e.strerror or e}"
        if (st.st_dev, st.st_ino) != (self.device, self.inode):
            return f"{self.path} was replaced by another file while tvbridge had it open"
        return ""


RACY_NS: Final = 2_000_000_000
"""A directory changed this recently may change again within the same timestamp tick (file systems stamp with a
coarse clock, some only to the second or two): it is not trusted to say "unchanged" (git's "racy" rule)."""


class Unchanged:
    """One `stat()` per directory instead of one per file, on the common path of `check_records`.

    Deleting a file or moving another over it changes its directory's mtime. When every directory still has the
    (device, inode, mtime) it had at the last check that found all files in order, and that mtime was already
    older than `RACY_NS` then, no file in them was deleted or replaced since: the files' own checks are skipped.
    Any other answer (a directory changed, unreadable, or too recent) means checking every file, as before."""

    def __init__(self) -> None:
        self.directories: tuple[str, ...] | None = None
        self._clean: tuple[tuple[int, int, int], ...] | None = None

    @staticmethod
    def stamp(directories: Iterable[str]) -> tuple[tuple[int, int, int], ...] | None:
        """The directories as they are now; None if one cannot be read. Take it BEFORE checking the files."""
        try:
            return tuple((st.st_dev, st.st_ino, st.st_mtime_ns) for st in map(os.stat, directories))
        except OSError:
            return None

    def unchanged(self, stamp: tuple[tuple[int, int, int], ...] | None) -> bool:
        return stamp is not None and stamp == self._clean

    def checked(self, stamp: tuple[tuple[int, int, int], ...] | None, *, clean: bool) -> None:
        """Every file was checked after `stamp` was taken; `clean`: all of them were in order."""
        now = time.time_ns()
        trusted = clean and stamp is not None and all(now - mtime > RACY_NS for _, _, mtime in stamp)
        self._clean = stamp if trusted else None
