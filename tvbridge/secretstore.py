"""Where the webhook secret and the admin token come from, and the first-run generation of strong ones.

There is no default secret. A configured one (`auth.secret` / `WEBHOOK_SECRET`) wins; otherwise the secret is
read from `webhook_secret.txt` in the data directory, and generated there (mode 0600) on the first run. The same
holds for the admin token (`server.admin_token`, `admin_token.txt`). Secrets are never logged: the console
names the file, not its contents.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from tvbridge.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from tvbridge.config import Config

SECRET_FILE: Final = "webhook_secret.txt"  # noqa: S105 - a file name
ADMIN_TOKEN_FILE: Final = "admin_token.txt"  # noqa: S105 - a file name
WEAK_SECRETS: Final = frozenset({"GTcl4", "changeme", "secret", "password"})
MIN_LIVE_SECRET_LENGTH: Final = 16


@attrs.frozen(kw_only=True)
class Credentials:
    secret: str = attrs.field(repr=False)
    path_token: str = attrs.field(repr=False)
    admin_token: str = attrs.field(repr=False)
    secret_file: Path | None = None
    """Where the secret lives when it was not configured (None: from config or environment)."""
    admin_token_file: Path | None = None
    generated: tuple[str, ...] = ()
    """Names of what this run generated (`secret`, `admin_token`), for the first-run message."""
    secrets: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    """(strategy, secret): the global secret as `default`, then each `[strategies.NAME]` one (`strategies.pick`)."""
    path_tokens: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    """(strategy, path token), likewise."""

    @property
    def all(self) -> tuple[str, ...]:
        """Every credential this run knows, the strategies' too: what logs, messages and answers must never hold."""
        own = (self.secret, self.path_token, self.admin_token)
        strategies = tuple(value for _name, value in (*self.secrets, *self.path_tokens))
        return tuple(dict.fromkeys(s for s in (*own, *strategies) if s))


def _read_or_create(path: Path) -> tuple[str, bool]:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        value = ""
    if value:
        return value, False
    value = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)  # noqa: PTH101 - also when the file existed with wider permissions
    return value, True


def weak_secret_problem(secret: str) -> str | None:
    if secret in WEAK_SECRETS:
        return "is a well-known default"
    if len(secret) < MIN_LIVE_SECRET_LENGTH:
        return f"is shorter than {MIN_LIVE_SECRET_LENGTH} characters"
    return None


def resolve_credentials(config: Config) -> Credentials:
    """The secrets this run uses; `ConfigError` when a live account would run behind a weak secret."""
    generated: list[str] = []
    secret_file = admin_file = None
    secret = config.auth.secret
    try:
        if not secret:
            secret_file = config.data_path(SECRET_FILE)
            secret, created = _read_or_create(secret_file)
            if created:
                generated.append("secret")
        admin_token = config.server.admin_token
        if not admin_token:
            admin_file = config.data_path(ADMIN_TOKEN_FILE)
            admin_token, created = _read_or_create(admin_file)
            if created:
                generated.append("admin_token")
    except OSError as e:
        where = e.filename or config.server.data_dir
        raise StorageError(f"server.data_dir: cannot keep the generated secret in {where}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise StorageError(f"{secret_file or admin_file}: not a secret file (not UTF-8 text)") from None
    check_secrets(config, secret)
    from tvbridge.strategies import path_tokens_table, secrets_table  # noqa: PLC0415 - strategies imports config

    return Credentials(
        secret=secret,
        path_token=config.auth.path_token,
        admin_token=admin_token,
        secret_file=secret_file,
        admin_token_file=admin_file,
        generated=tuple(generated),
        secrets=secrets_table(config, secret),
        path_tokens=path_tokens_table(config),
    )


def secret_in_use(config: Config) -> str | None:
    """The webhook secret a server would use, without creating one: `auth.secret`, else the generated file's
    (None when there is none yet: the one generated at start is random). For `check-config`."""
    if config.auth.secret:
        return config.auth.secret
    try:
        return config.data_path(SECRET_FILE).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def check_secrets(config: Config, secret: str | None = None) -> None:
    """`ConfigError` when a live account would run behind a weak secret or path token (`secret`: the one in
    use; by default the configured one, since a generated one is strong). Reads and writes no file, so
    `check-config` runs it too."""
    secret = config.auth.secret if secret is None else secret
    problem = weak_secret_problem(secret) if secret else None
    if problem and config.live_accounts:
        raise ConfigError(
            f"auth.secret {problem}; live trading ({', '.join(config.live_accounts)}) needs a strong secret:"
            " remove it to have one generated, or set 16+ random characters"
        )
    for name, strategy in config.strategies.items():
        for key, value in (("secret", strategy.secret), ("path_token", strategy.path_token)):
            # the generated webhook_secret.txt is not in the config: `_check_strategies` cannot see it
            if value and secret and hmac.compare_digest(value.encode(), secret.encode()):
                raise ConfigError(
                    f"strategies.{name}.{key}: is the webhook secret in use (auth.secret or {SECRET_FILE}), so its"
                    " alerts would run as `default`: use its own"
                )
        live = [a for a in config.accounts_of(name) if a in config.live_accounts]
        for key, value in (("secret", strategy.secret), ("path_token", strategy.path_token)):
            strategy_problem = weak_secret_problem(value) if value else None
            if strategy_problem and live:
                raise ConfigError(
                    f"strategies.{name}.{key} {strategy_problem}; it authenticates live orders ({', '.join(live)}):"
                    " use 16+ random characters"
                )
    if config.auth.path_token and config.live_accounts:
        token_problem = weak_secret_problem(config.auth.path_token)
        if token_problem:
            raise ConfigError(
                f"auth.path_token {token_problem}; a path token alone authenticates live orders"
                f" ({', '.join(config.live_accounts)}): use 16+ random characters"
            )
