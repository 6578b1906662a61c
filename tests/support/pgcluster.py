"""A throwaway PostgreSQL cluster for the tests: Debian's `postgresql` binaries, `initdb` in a temporary directory.

PostgreSQL refuses to run as root, and the tests (like CI) run as root: the cluster then belongs to an
unprivileged system user, `tvbtest`, created once (`useradd --system`), and every server binary runs as that user
through `runuser`. As any other user the binaries run as that user directly. The server listens on 127.0.0.1 on a
free port, with its socket in its own directory; `trust` authentication, since nothing but this machine's tests
can reach it. `fsync = off`: the tests kill tvbridge, never the machine, so PostgreSQL's own crash safety is not
what they measure, and the shared 2-core machine is spared the flushes.

A developer without the package gets a skip naming it; in CI (`CI` set) the test fails instead, because
`.ci/run` installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from ops_tools import free_port

USER: Final = "tvbtest"
SHARED_KEY: Final = "rJ0v8Jd1h0b0xZ3k9yQm2Wc4Tn6Ue8Ga1Ls3Pq5Rr7A="
"""`journal.shared_secret_key` of the test servers on PostgreSQL (a Fernet key: 32 bytes, url-safe base64)."""
SUPERUSER: Final = "tvbridge"
START_TIMEOUT_S: Final = 60


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's binaries; skip (fail in CI) when there are none."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        message = "PostgreSQL is not installed (Debian package postgresql; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found[-1].parent


def _as_user() -> list[str]:
    """The prefix that runs a command as the cluster's owner."""
    if os.geteuid() != 0:
        return []
    tool = {name: shutil.which(name) or f"/usr/sbin/{name}" for name in ("id", "useradd", "runuser")}
    if subprocess.run([tool["id"], "-u", USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(
            [tool["useradd"], "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=False,  # another test run may have created it meanwhile: `id` below decides
            capture_output=True,
        )
        subprocess.run([tool["id"], "-u", USER], check=True, capture_output=True)
    return [tool["runuser"], "-u", USER, "--"]


class PgCluster:
    """One PostgreSQL server: `start()`, `stop()` (as an outage), `url(database)`, `create_database()`."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.prefix = _as_user()
        self.root = Path(tempfile.mkdtemp(prefix="tvbridge-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._databases = 0
        if self.prefix:
            shutil.chown(self.root, USER)
        self._run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"]
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "log_min_messages": "warning",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, check=False, timeout=START_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> None:
        log = self.root / "server.log"
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-w", "-t", "60", "start"])

    def stop(self) -> None:
        """Stop at once, as an outage would (`-m immediate`: sessions are cut, nothing waits for them)."""
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` with `psql` (the tests' view of the database, independent of tvbridge's driver)."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.url(database), "-c", sql],
            capture_output=True,
            text=True,
            check=True,
            timeout=START_TIMEOUT_S,
        )
        return done.stdout.strip()

    def dump(self, url: str) -> str:
        """Everything the database at `url` holds, as `pg_dump --data-only` writes it: what a stolen backup gives."""
        done = subprocess.run(
            [str(self.bin / "pg_dump"), "--data-only", "-d", url],
            capture_output=True,
            text=True,
            check=True,
            timeout=START_TIMEOUT_S,
        )
        return done.stdout

    def create_database(self) -> str:
        """A new empty database; returns its URL.

        On PostgreSQL 15 and later it is copied file by file (`STRATEGY = FILE_COPY`) rather than page by page
        through the WAL, the default: the same empty database, half the bytes written (no 7 MB of WAL each)."""
        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}"
        strategy = " STRATEGY = FILE_COPY" if int(self.bin.parent.name) >= 15 else ""
        self.psql(f"CREATE DATABASE {name}{strategy}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database at `url` (one `create_database` made), whoever is still connected (`FORCE`).

        The suite on PostgreSQL makes hundreds of databases, 7 MB each: kept to the end, a worker's cluster grew
        to gigabytes that the machine wrote out and removed at the session's end (rmtree: 86 and 105 s on two
        workers of a loaded machine). A drop that fails leaves a database behind, which the cluster's removal
        takes with it: nothing a test checks."""
        name = url.rsplit("/", 1)[1]
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server for the whole session (each test takes its own database: `pg_url`)."""
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """The URL of a new, empty database on the session's server, dropped after the test."""
    url = pg_cluster.create_database()
    yield url
    pg_cluster.drop_database(url)


@pytest.fixture
def own_pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL server of the test's own, for tests that stop and start it (an outage)."""
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
