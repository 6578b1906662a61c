"""Real external tools (promtool, prometheus, nginx, ...) for the operations tests.

A developer without a tool gets a skip that names the Debian package; in CI (`CI` set) a missing tool fails the
test instead, because `.ci/run` installs them and a silent skip would hide a broken install step.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )
    if path is None:
        message = f"{name} is not installed (Debian package {package}; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
