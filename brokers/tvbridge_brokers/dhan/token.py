"""The Dhan access token of one account: when it expires, renewing it, generating a new one, storing it.

A Dhan token lives 24 hours. `TokenKeeper` keeps a live account trading for weeks without a person:

* The expiry is read from the token itself (a JWT's `exp` claim, decoded without checking the signature: it is
  used for scheduling and display only, never to decide whether Dhan will accept the token).
* `maintain()` (at start, then every minute) renews a valid token through Dhan's RenewToken call when less than
  `renew_before_s` remain, and generates a new one from PIN + TOTP (`pyotp`) when the token has expired or is
  missing and the account has `pin` and `totp_secret`.
* `recover()` is the one retry after a DH-901: generate once (or just use a token renewed meanwhile).
* A new token is written atomically (temporary file, fsync, rename; mode 0600) to the account's store in the data
  directory, and also into `.env` when that is where the running token came from (`DHAN_ACCESS_TOKEN`), so a
  restart or a SIGHUP keeps it. At start the stored token is used when it outlives the configured one.
* When it cannot renew, `notify` says when the token expires and the one command that fixes it.
* Several instances on one PostgreSQL store (`BrokerContext.cluster`, issue 20): only the leader renews or
  generates, and publishes the new token (encrypted) through the store; the others adopt it at their next look
  (every `cluster.poll_s`), and after a DH-901 a follower first looks for the token the leader published, and
  never generates one itself: Dhan invalidates the old token on every renewal, so two instances renewing would
  break each other's token in turn.

The token is never logged, returned in a message or written anywhere but its stores. dhanhq's `DhanLogin` logs
its failures (with the URL, which carries the PIN for generation) on the root logger; those records are dropped
and our own scrubbed line is logged instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import pyotp
import structlog
from dhanhq import DhanLogin

from tvbridge.cluster import SOLO, ClusterError, SharedKeyError

if TYPE_CHECKING:
    from collections.abc import Callable

    from tvbridge.broker import Cluster
    from tvbridge_brokers.dhan.settings import DhanSettings

log = structlog.get_logger()

IST: Final = timezone(timedelta(hours=5, minutes=30), "IST")
AUTH_TIMEOUT_S: Final = 10.0
"""RenewToken and token generation are not on an order's clock, except the one retry after a DH-901."""
LEADER_WAIT_S: Final = 2.0
"""A follower's first DH-901 on a token waits this long for the leader's new one: Dhan drops the old token while
the leader's RenewToken call runs, a moment before the leader publishes the new one; an order rejected in
that window goes through with it rather than failing. Once per rejected token: the next orders fail fast."""
LEADER_WAIT_STEP_S: Final = 0.2
ENV_FILE: Final = ".env"
ENV_KEY: Final = "DHAN_ACCESS_TOKEN"
DEFAULT_ACCOUNT: Final = "dhan"
"""The account `DHAN_ACCESS_TOKEN` configures (see `tvbridge.config`)."""
SHARED_NAME: Final = "access_token"
"""The name the leader publishes the account's token under (`tvbridge.cluster`, encrypted)."""


def token_path(data_dir: Path, account: str) -> Path:
    return data_dir / f"dhan-{account}.token"


def fix_command(account: str) -> str:
    return f"tvbridge dhan token set --account {account}"


def token_expiry(token: str) -> datetime | None:
    """The `exp` claim of a JWT access token as an aware UTC datetime; None when the token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
        return datetime.fromtimestamp(float(claims["exp"]), UTC)
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError, OSError):
        return None


class TokenError(Exception):
    """Dhan did not give a new token; the message names why, never a secret."""


class _DropDhanLoginLogs(logging.Filter):
    """dhanhq's DhanLogin logs failures with the request URL, and urllib3 logs every URL at debug level: the
    PIN and the TOTP code are query parameters of the generation call."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.pathname.replace("\\", "/").endswith("dhanhq/auth.py"):
            return False
        return GENERATE_PATH not in record.getMessage()


GENERATE_PATH: Final = "/app/generateAccessToken"
_FILTER: Final = _DropDhanLoginLogs()


def _install_log_filter() -> None:
    for logger in (logging.getLogger(), logging.getLogger("urllib3.connectionpool")):
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


@attrs.frozen(kw_only=True)
class NewToken:
    token: str = attrs.field(repr=False)
    expires_at: datetime | None


class DhanAuth:
    """Dhan's two token calls through dhanhq's `DhanLogin`, off the event loop, with a timeout.

    `DhanLogin` calls `requests` without a timeout of its own: we stop waiting after `AUTH_TIMEOUT_S`, and a
    hung call's worker thread ends when Dhan (or the OS) closes the connection. It never holds a lock we need."""

    def __init__(self, settings: DhanSettings, *, timeout_s: float = AUTH_TIMEOUT_S) -> None:
        _install_log_filter()
        self._login = DhanLogin(settings.client_id)
        self._login.API_BASE_URL = settings.base_url  # RenewToken is on the trading API
        self._login.AUTH_BASE_URL = settings.auth_url
        self._pin = settings.pin
        self._totp = pyotp.TOTP(settings.totp_secret) if settings.totp_secret else None
        self._timeout = timeout_s

    async def renew(self, token: str) -> NewToken:
        return await self._call("RenewToken", self._login.renew_token, token, secrets=(token,))

    async def generate(self) -> NewToken:
        if self._totp is None:
            raise TokenError("no pin and totp_secret configured")
        code = self._totp.now()
        return await self._call(
            "token generation", self._login.generate_token, self._pin, code, secrets=(self._pin, code)
        )

    async def _call(self, what: str, function: Callable[..., Any], *args: str, secrets: tuple[str, ...]) -> NewToken:
        try:
            async with asyncio.timeout(self._timeout):
                answer = await asyncio.to_thread(function, *args)
        except TimeoutError:
            raise TokenError(f"{what}: no answer from Dhan within {self._timeout:g} s") from None
        except Exception as e:  # noqa: BLE001 - DhanLogin raises bare Exception with Dhan's answer in it
            raise TokenError(f"{what} refused: {_scrub(str(e), secrets)[:300]}") from None
        token = _token_in(answer)
        if not token:
            raise TokenError(f"{what}: Dhan's answer has no accessToken")
        return NewToken(token=token, expires_at=token_expiry(token) or _expiry_time(answer))


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def _token_in(answer: object) -> str:
    if not isinstance(answer, dict):
        return ""
    data = answer.get("data") if isinstance(answer.get("data"), dict) else answer
    assert isinstance(data, dict)  # noqa: S101 - narrowed just above
    token = data.get("accessToken") or data.get("access_token") or data.get("token") or ""
    return token.strip() if isinstance(token, str) else ""


def _expiry_time(answer: object) -> datetime | None:
    """Dhan's `expiryTime` (exchange time, ISO) when the token itself does not say."""
    raw = answer.get("expiryTime") if isinstance(answer, dict) else None
    if not isinstance(raw, str):
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=IST)


def write_secret_file(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, mode 0600 from the first byte (mkstemp), fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        Path(name).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(name).unlink()
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash once the directory is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _env_with_token(text: str, old: str, new: str) -> str | None:
    """`.env` text with DHAN_ACCESS_TOKEN changed from `old` to `new`; None when it does not hold `old`."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and key.strip() == ENV_KEY and value.strip().strip("'\"") == old:
            lines[i] = f"{ENV_KEY}={new}\n"
            return "".join(lines)
    return None


class TokenKeeper:
    """The running token of one account and the rules that keep it valid (see the module docstring)."""

    def __init__(
        self,
        settings: DhanSettings,
        *,
        account: str,
        data_dir: Path,
        clock: Callable[[], datetime],
        notify: Callable[[str, str], None],
        cluster: Cluster = SOLO,
    ) -> None:
        self._settings = settings
        self._account = account
        self._cluster = cluster
        self._shared: tuple[int, str] | None = None
        """The version and token last read from (or published to) the cluster."""
        self._leading: bool | None = None
        self._hand_set: str | None = None
        """A token an operator gave this instance (SIGHUP), until it is published: from any instance, so a token
        set by hand on a follower reaches the leader (which takes a newer token) and every other instance."""
        self._waiting_for: str | None = None
        self._share_error = ""
        self.key_error = ""
        """Why the shared token cannot be read with this instance's `journal.shared_secret_key` ("" when it can):
        the broker reports it (refused start, unhealthy, not ready) and the leader renews nothing meanwhile: a
        token it cannot publish would strand every other instance on the one Dhan just invalidated."""
        self._store = token_path(data_dir, account)
        self._clock = clock
        self._notify = notify
        self._auth = DhanAuth(settings)
        self._token = settings.access_token
        self._configured = settings.access_token
        self._lock = asyncio.Lock()
        self._warned: tuple[str, str] | None = None
        self._tried_after_rejection: str | None = None
        self.last_error = ""
        self._log = log.bind(broker="dhan", account=account)

    @property
    def token(self) -> str:
        return self._token

    @property
    def expires_at(self) -> datetime | None:
        return token_expiry(self._token) if self._token else None

    @property
    def can_generate(self) -> bool:
        return self._settings.can_generate

    @property
    def leading(self) -> bool | None:
        """Whether this instance renews the token (the last answer; None before the first look)."""
        return self._leading

    def load(self, *, prefer_current: bool = False, reload: bool = False) -> None:
        """Use the stored token (a renewal's, or `tvbridge dhan token set`'s) unless the one in use is known to
        outlive it; with `prefer_current` (an operator just configured a new token) only when the stored one is
        known to outlive it. Blocking (a small file): at start and on SIGHUP (`reload`: a token taken from the file
        then was set by an operator, `tvbridge dhan token set`, and is published)."""
        try:
            stored = self._store.read_text(encoding="utf-8").strip()
        except OSError:
            stored = ""
        if prefer_current:
            use = _later(stored, self._token, known_only=True)
        else:
            use = not _later(self._token, stored, known_only=True)
        if stored and stored != self._token and use:
            self._token = stored
            if reload:
                self._hand_set = stored
            self._log.info("dhan.token.loaded", source=str(self._store), expires_at=_iso(self.expires_at))

    def reconfigure(self, settings: DhanSettings) -> bool:
        """A SIGHUP's table; True when the token in use changed (a new configured token outliving ours)."""
        self._settings = settings
        self._auth = DhanAuth(settings)
        self._tried_after_rejection = None
        new = settings.access_token
        # an operator's new token is used unless it is known to expire before the one renewed meanwhile
        changed = bool(new) and new != self._configured and not _later(self._token, new, known_only=True)
        self._configured = new
        if changed:
            self._token = new
            self._hand_set = new
        return changed

    def remaining(self) -> timedelta | None:
        expires = self.expires_at
        return None if expires is None else expires - self._clock()

    async def maintain(self) -> bool:
        """Adopt the token the leader published; on the leader, renew or generate when due (and publish). True
        when the token changed. Never raises for Dhan's refusals."""
        async with self._lock:
            adopted = await self._adopt_shared()
            leading = await self._leads()
            if self._hand_set is not None and self._hand_set != self._token:
                self._hand_set = None  # a newer token was adopted instead
            if not leading and self._hand_set is not None and not self.key_error:
                await self._publish()  # compare-and-set: a conflict is looked at again next round
            if not leading or self.key_error:
                return adopted
            if self._cluster.shared and self._token and (self._shared is None or self._shared[1] != self._token):
                await self._publish()  # a new leader's, or an operator's new token (SIGHUP) on the leader
            return await self._renew_if_due() or adopted

    async def _renew_if_due(self) -> bool:
        """The leader's part of `maintain` (under its lock): renew, or generate, when due."""
        remaining = self.remaining()
        if not self._token or (remaining is not None and remaining <= timedelta(0)):
            if self.can_generate:
                return await self._generate("expired" if self._token else "missing")
            self._cannot_renew("the token has expired" if self._token else "there is no token")
            return False
        if remaining is None or remaining.total_seconds() >= self._settings.renew_before_s:
            return False
        try:
            new = await self._auth.renew(self._token)
        except TokenError as e:
            self._log.warning("dhan.token.renew_failed", error=str(e), expires_at=_iso(self.expires_at))
            if self.can_generate:
                return await self._generate("renewal refused")
            self._cannot_renew(str(e))
            return False
        return await self._use(new, how="renewed")

    async def recover(self, rejected: str, *, again: bool = False) -> bool:
        """After Dhan answered DH-901 for `rejected`: True when a different token is now in use (one renewed
        meanwhile, one the leader published, or one generated now). Orders try one generation per rejected
        token; the minute's maintenance (`again`) tries once a minute until one works. Only the leader
        generates: a follower waits for the leader's token (its next look finds it)."""
        async with self._lock:
            if self._token != rejected:
                return True
            leading = await self._leads()
            if await self._adopt_shared(rejected=rejected, leading=leading):
                return True
            if self.key_error:  # neither the leader's token nor (on the leader) a generation others could read
                self.last_error = self.key_error
                return False
            if not leading:
                return await self._await_leader(rejected)
            if not self.can_generate or (self._tried_after_rejection == rejected and not again):
                return False
            self._tried_after_rejection = rejected
            return await self._generate("rejected by Dhan (DH-901)")

    async def _await_leader(self, rejected: str) -> bool:
        """A follower's part of `recover`: at the first rejection of a token, look for the leader's new one for up
        to `LEADER_WAIT_S` (see there); True when one was adopted. Never generates."""
        if self._waiting_for != rejected:
            self._waiting_for = rejected
            self._log.warning("dhan.token.awaiting_leader", reason="DH-901")
            loop = asyncio.get_running_loop()
            until = loop.time() + LEADER_WAIT_S
            while loop.time() < until:
                await asyncio.sleep(LEADER_WAIT_STEP_S)
                if await self._adopt_shared(rejected=rejected):
                    return True
        self.last_error = "Dhan rejects the token; the leader instance renews it"
        return False

    async def _generate(self, why: str) -> bool:
        try:
            new = await self._auth.generate()
        except TokenError as e:
            self._log.error("dhan.token.generate_failed", reason=why, error=str(e))
            self._cannot_renew(f"token generation failed: {e}")
            return False
        return await self._use(new, how="generated")

    async def _use(self, new: NewToken, *, how: str) -> bool:
        old = self._token
        try:
            await asyncio.to_thread(self._save, old, new.token)
        except OSError as e:  # still use it: the running server works, only a restart would lose it
            self._log.error("dhan.token.store_failed", error=f"{type(e).__name__}: {e.strerror or e}")
        self._token = new.token
        self._warned = None
        self.last_error = ""
        self._log.info("dhan.token_renewed", how=how, expires_at=_iso(new.expires_at), stored=str(self._store))
        await self._publish()
        return True

    def _share_failed(self, error: str) -> None:
        """Logged once per distinct error: a database outage must not write a line every few seconds."""
        if error != self._share_error:
            self._share_error = error
            self._log.error("dhan.token.share_failed", error=error)

    async def _leads(self) -> bool:
        """Whether this instance renews (always alone); a change of leadership is logged."""
        try:
            leading = await self._cluster.is_leader()
        except Exception as e:  # noqa: BLE001 - the store's trouble: renew nothing now, ask again next round
            if self._leading is not False:
                self._log.warning("dhan.token.leadership_unknown", error=type(e).__name__)
            leading = False
        if self._cluster.shared and leading != self._leading:
            self._log.info("dhan.leadership", leader=leading, renews_token=leading)
        self._leading = leading
        return leading

    async def _adopt_shared(self, *, rejected: str | None = None, leading: bool = False) -> bool:
        """Use the token the leader published when it is new to this instance and known to outlive ours (a
        renewal's, a generation's: both JWTs), or when this instance has none, or (after Dhan `rejected` ours)
        whenever it is another; stored as a renewal's is (a restart of this instance starts with it). A token of
        unknown expiry is not taken over one that works: it may be an older one.

        After a rejection the LEADER takes only a publication it has not seen yet, of a token known to outlive
        the rejected one (another instance's hand-set token): the row may still hold the token it replaced (an
        operator's SIGHUP, a publish that failed), and going back to that one would fail the order again and
        skip the generation that fixes it."""
        if not self._cluster.shared:
            return False
        try:
            shared = await self._cluster.load(self._account, SHARED_NAME)
        except ClusterError as e:
            if isinstance(e, SharedKeyError):
                self.key_error = str(e)
            self._share_failed(str(e))
            return False
        self._share_error = ""
        self.key_error = ""
        if shared is None:
            return False
        seen = self._shared is not None and shared.version == self._shared[0]
        self._shared = (shared.version, shared.value)
        if rejected is not None:
            stale = seen or not _later(shared.value, rejected, known_only=True)
            if shared.value == rejected or (leading and stale):
                return False
        elif seen or (self._token and not _later(shared.value, self._token, known_only=True)):
            return False
        old, self._token = self._token, shared.value
        try:
            await asyncio.to_thread(self._save, old, shared.value)
        except OSError as e:
            self._log.error("dhan.token.store_failed", error=f"{type(e).__name__}: {e.strerror or e}")
        self._warned = None
        self.last_error = ""
        self._waiting_for = None
        self._log.info(
            "dhan.token.adopted", version=shared.version, by=shared.published_by, expires_at=_iso(self.expires_at)
        )
        return True

    async def _publish(self) -> None:
        """Hand the token in use to the other instances (the leader's, encrypted; see `tvbridge.cluster`)."""
        if not self._cluster.shared or not self._token:
            return
        expected = self._shared[0] if self._shared is not None else 0
        try:
            version = await self._cluster.publish(
                self._account, SHARED_NAME, self._token, secret=True, expected=expected
            )
        except ClusterError as e:
            self._share_failed(str(e))
            return
        self._share_error = ""
        if version is None:  # another instance published first: its token is read at the next look
            self._log.warning("dhan.token.share_conflict", expected=expected)
            return
        self._shared = (version, self._token)
        self._hand_set = None
        self._log.info("dhan.token.shared", version=version, expires_at=_iso(self.expires_at))

    def _save(self, old: str, new: str) -> None:
        write_secret_file(self._store, new + "\n")
        env = Path.cwd() / ENV_FILE
        if old and self._account == DEFAULT_ACCOUNT and env.is_file():
            text = _env_with_token(env.read_text(encoding="utf-8"), old, new)
            if text is not None:
                write_secret_file(env, text)

    def _cannot_renew(self, reason: str) -> None:
        self.last_error = reason
        key = (self._token, reason)
        if self._warned == key:
            return
        self._warned = key
        expires = self.expires_at
        when = f"expires at {expires.astimezone(IST):%Y-%m-%d %H:%M} IST" if expires else "has no known expiry"
        if expires is not None and expires <= self._clock():
            when = f"expired at {expires.astimezone(IST):%Y-%m-%d %H:%M} IST"
        message = (
            f"Dhan account {self._account}: the access token {when} and cannot be renewed ({reason}). "
            f"Fix: `{fix_command(self._account)}` with a new token from web.dhan.co, or set pin and totp_secret "
            "so tvbridge generates one itself."
        )
        self._log.warning("dhan.token.cannot_renew", reason=reason, expires_at=_iso(expires))
        self._notify("token_expiring", message)


def _later(candidate: str, current: str, *, known_only: bool = False) -> bool:
    """True when `candidate` expires after `current` (an unknown expiry counts as older than a known one;
    with `known_only`, True only when both expiries are known)."""
    new, old = token_expiry(candidate), token_expiry(current)
    if known_only and (new is None or old is None):
        return False
    if new is None:
        return not current
    return old is None or new > old


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(IST).isoformat(timespec="seconds") if moment else None
