"""The seam a broker plugin uses for work that must run on ONE instance of several (issue 20), and for what that
instance shares with the others.

Several tvbridge instances on one PostgreSQL store serve as one; a plugin's own scheduled work (Dhan's token
renewal and its instrument master refresh) must then run once, not once per instance: a Dhan token renewed on
instance A invalidates the one instance B holds. `BrokerContext.cluster` answers the plugin's two questions
without reaching into the core:

* `await cluster.is_leader()`: whether this instance runs the scheduled work now (`Store.is_leader`: the holder
  of the PostgreSQL advisory lock, taken over by another within `journal.leader_lease_s` when it dies). Ask at
  every round of upkeep, every `poll_s`: leadership changes between two answers, and a plugin learns of a change
  by the next answer differing from the last (Dhan logs `dhan.leadership`).
* `publish(account, name, value, secret=...)` / `load(account, name)`: a small versioned value the leader hands
  to the others (Dhan: the renewed token, the master's refresh moment). A `secret` value is encrypted with
  Fernet (AES-128-CBC + HMAC-SHA256, `cryptography`) under `journal.shared_secret_key`, a key every instance
  holds in its config and the database never does: a copy of the database does not yield the token.

On SQLite (one instance) the plugin is always the leader and nothing is shared (`SOLO`).
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from tvbridge.errors import ConfigError, JournalError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

    from tvbridge.store import Store

SOLO_POLL_S: Final = 60.0
"""One instance: upkeep once a minute is enough (nobody else takes over)."""


class ClusterError(Exception):
    """A shared value could not be read or written (the database, or a key that does not open it)."""


class SharedKeyError(ClusterError):
    """A shared secret this instance's `journal.shared_secret_key` cannot open (another key published it, or this
    instance has none). Not a passing outage: a plugin reports it (unhealthy, refused start) and stops the work that
    depends on the shared value, rather than retrying it every poll."""


@attrs.frozen(kw_only=True)
class Shared:
    """One value as the leader published it: `version` grows by one with every publication."""

    value: str = attrs.field(repr=False)
    version: int
    published_by: str
    published_at: str


class Cluster(Protocol):
    @property
    def shared(self) -> bool:
        """True when other instances may run beside this one (a PostgreSQL store)."""
        ...

    @property
    def poll_s(self) -> float:
        """How often a plugin should look at its scheduled work and at what the leader published."""
        ...

    @property
    def can_share_secrets(self) -> bool:
        """Whether `publish(..., secret=True)` works: always alone; with a key (`journal.shared_secret_key`)."""
        ...

    async def is_leader(self) -> bool: ...

    async def load(self, account: str, name: str) -> Shared | None:
        """The value last published under (account, name), decrypted; None when none was. `ClusterError`."""
        ...

    async def publish(self, account: str, name: str, value: str, *, secret: bool, expected: int | None) -> int | None:
        """Publish `value` if the current version is still `expected` (None: whatever it is); returns the new
        version, or None when another instance published first. `ClusterError` when it cannot be written."""
        ...


@attrs.frozen
class Solo:
    """One instance (SQLite): always the leader, nothing to share."""

    shared: bool = False
    poll_s: float = SOLO_POLL_S
    can_share_secrets: bool = True

    async def is_leader(self) -> bool:
        return True

    async def load(self, account: str, name: str) -> Shared | None:  # noqa: ARG002 - nothing is shared
        return None

    async def publish(self, account: str, name: str, value: str, *, secret: bool, expected: int | None) -> int | None:  # noqa: ARG002
        return 0


SOLO: Final = Solo()


def _instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class StoreCluster:
    """Several instances on one PostgreSQL store: leadership is the store's, shared values its `broker_shared`
    table (a migration in `tvbridge/store/migrations.py`)."""

    def __init__(self, store: Store, *, lease_s: float, key: Fernet | None) -> None:
        self._store = store
        self._fernet = key
        self.poll_s = max(0.5, lease_s / 2)
        self.shared = True
        self._me = _instance_name()

    @property
    def can_share_secrets(self) -> bool:
        return self._fernet is not None

    async def is_leader(self) -> bool:
        return await self._store.is_leader()

    async def load(self, account: str, name: str) -> Shared | None:
        try:
            rows = await self._store.fetch(
                "SELECT value, version, secret, published_by, published_at FROM broker_shared"
                " WHERE account = ? AND name = ?",
                account,
                name,
            )
        except JournalError as e:
            raise ClusterError(f"cannot read the shared {name} of account {account}: {e}") from None
        if not rows:
            return None
        row = rows[0]
        value = str(row["value"])
        if row["secret"]:
            value = self._decrypt(value, what=f"the shared {name} of account {account}")
        return Shared(
            value=value,
            version=int(row["version"]),
            published_by=str(row["published_by"]),
            published_at=str(row["published_at"]),
        )

    async def publish(self, account: str, name: str, value: str, *, secret: bool, expected: int | None) -> int | None:
        stored = self._encrypt(value) if secret else value
        now = datetime.now(UTC).isoformat()
        condition = "" if expected is None else " WHERE broker_shared.version = ?"
        args: list[object] = [account, name, stored, secret, self._me, now]
        if expected is not None:
            args.append(expected)
        try:
            rows = await self._store.fetch(
                "INSERT INTO broker_shared (account, name, version, value, secret, published_by, published_at)"  # noqa: S608 - `condition` is a constant
                " VALUES (?, ?, 1, ?, ?, ?, ?) ON CONFLICT (account, name) DO UPDATE SET"
                " version = broker_shared.version + 1, value = EXCLUDED.value, secret = EXCLUDED.secret,"
                f" published_by = EXCLUDED.published_by, published_at = EXCLUDED.published_at{condition}"
                " RETURNING version",
                *args,
            )
        except JournalError as e:
            raise ClusterError(f"cannot publish the {name} of account {account}: {e}") from None
        return int(rows[0]["version"]) if rows else None

    def _encrypt(self, value: str) -> str:
        if self._fernet is None:
            raise ClusterError("journal.shared_secret_key is not set: a secret is never stored unencrypted")
        return self._fernet.encrypt(value.encode()).decode("ascii")

    def _decrypt(self, value: str, *, what: str) -> str:
        from cryptography.fernet import InvalidToken  # noqa: PLC0415 - an optional extra, PostgreSQL only

        if self._fernet is None:
            raise SharedKeyError(f"{what} is encrypted and journal.shared_secret_key is not set")
        try:
            return self._fernet.decrypt(value.encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise SharedKeyError(
                f"{what} cannot be decrypted: journal.shared_secret_key differs from the key of the instance that"
                " published it (give every instance the same key)"
            ) from None


def fernet_of(key: str) -> Fernet | None:
    """The cipher for `journal.shared_secret_key`; None when it is empty. `ConfigError` (never quoting the key)
    for a key that is not a Fernet key, or when the `cryptography` package is missing."""
    if not key:
        return None
    try:
        from cryptography.fernet import Fernet  # noqa: PLC0415 - an optional extra, PostgreSQL only
    except ImportError:
        raise ConfigError(
            "journal.shared_secret_key needs the cryptography package: pip install 'tvbridge[postgres]'"
        ) from None
    try:
        return Fernet(key.encode("ascii"))
    except (ValueError, UnicodeError):
        raise ConfigError(
            "journal.shared_secret_key: not a Fernet key (32 url-safe base64-encoded bytes); make one with"
            " `tvbridge db new-key`"
        ) from None


def cluster_of(store: Store, *, key: str, lease_s: float) -> Cluster:
    """What the plugins of this instance see: `SOLO` on a store nobody else shares (SQLite)."""
    if not store.shared:
        return SOLO
    return StoreCluster(store, lease_s=lease_s, key=fernet_of(key))
