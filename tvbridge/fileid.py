"""Noticing that a file we hold open was deleted or replaced under the running server.

A process that keeps a file open keeps writing to the inode it opened: after `rm` or a `mv` over the path, the
writes go to a file nobody will read again, and the next start opens an empty one (an empty journal forgets
what was accepted and what dedupe has seen). The log file's rotation is noticed the same way
(`logsetup.py`): compare the path's `st_dev`/`st_ino` with those of the open file.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs


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
