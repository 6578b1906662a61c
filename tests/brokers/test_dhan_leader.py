"""Dhan's scheduled work with several instances (issue 20): only the leader renews, generates and refreshes the
master; the others use what it publishes. Two real `DhanBroker`s (the real dhanhq client, one fake Dhan API) share
an in-memory cluster here, so each step is driven by `maintain()` and the clock; tests/test_postgres_dhan.py runs
the same with two `tvbridge serve` processes on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import attrs
import pytest
import structlog
from dhan_support import NOW, request
from fake_dhan import PIN, TOTP_SECRET, FakeDhan, Misbehave, jwt

from tvbridge.broker import BrokerAuthError, BrokerContext, BrokerError, ClusterError, Shared, SharedKeyError
from tvbridge_brokers.dhan import DhanBroker
from tvbridge_brokers.dhan.instruments import sample_master_path
from tvbridge_brokers.dhan.token import token_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable
    from pathlib import Path


@attrs.define
class Board:
    """What the store holds for every instance: the leader's name and the published values."""

    leader: str = "a"
    values: dict[tuple[str, str], Shared] = attrs.Factory(dict)
    secret: set[tuple[str, str]] = attrs.Factory(set)
    before_load: Callable[[str, str], None] | None = None
    """Runs before every load: another instance acting between two looks of this one."""


@attrs.define
class MemoryCluster:
    """One instance's view of the board (`tvbridge.cluster.Cluster`), as the PostgreSQL store gives it."""

    board: Board
    name: str
    shared: bool = True
    poll_s: float = 1.0
    can_share_secrets: bool = True
    key_opens: bool = True
    """False: this instance's shared_secret_key is not the one the secret values were published with."""

    async def is_leader(self) -> bool:
        return self.board.leader == self.name

    async def load(self, account: str, name: str) -> Shared | None:
        if self.board.before_load is not None:
            self.board.before_load(self.name, name)
        if not self.key_opens and (account, name) in self.board.secret:
            raise SharedKeyError(
                f"the shared {name} of account {account} cannot be decrypted: journal.shared_secret_key"
            )
        return self.board.values.get((account, name))

    async def publish(self, account: str, name: str, value: str, *, secret: bool, expected: int | None) -> int | None:
        if secret and not self.can_share_secrets:
            raise ClusterError("no key")
        current = self.board.values.get((account, name))
        version = current.version if current is not None else 0
        if expected is not None and current is not None and version != expected:
            return None
        if secret:
            self.board.secret.add((account, name))
        self.board.values[account, name] = Shared(
            value=value, version=version + 1, published_by=self.name, published_at=""
        )
        return version + 1


class Clock:
    def __init__(self, at: datetime = NOW) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock(fake_dhan: FakeDhan) -> Clock:
    clock = Clock()

    def epoch() -> float:
        return clock.at.timestamp()

    fake_dhan.now = epoch  # the fake's tokens live 24 h from the test's "now"
    return clock


@pytest.fixture
def board() -> Board:
    return Board()


@pytest.fixture
def notes() -> list[tuple[str, str, str]]:
    return []


Build = "Callable[..., Awaitable[DhanBroker]]"


@pytest.fixture
async def build(
    *,
    tmp_path: Path,
    clock: Clock,
    board: Board,
    notes: list[tuple[str, str, str]],
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
) -> AsyncIterator[Callable[..., Awaitable[DhanBroker]]]:
    """An instance named `name`: its own data directory and master file, the board shared. The masters are
    stale, so upkeep downloads one: from the fake (never Dhan's public URL, the default)."""
    built: list[DhanBroker] = []
    if not fake_dhan.master:
        fake_dhan.master = sample_master_path().read_bytes()

    async def make(name: str, *, key_opens: bool = True, **changes: object) -> DhanBroker:
        data = tmp_path / name
        data.mkdir(exist_ok=True)
        master = data / "master.csv"
        if not master.exists():
            master.write_bytes(sample_master_path().read_bytes())
            written = (NOW - timedelta(days=1)).timestamp()  # before NOW's 08:30 refresh: stale
            os.utime(master, (written, written))
        context = BrokerContext(
            account="dhan",
            data_dir=data,
            notify=lambda kind, text: notes.append((name, kind, text)),
            cluster=MemoryCluster(board, name, key_opens=key_opens),
        )
        settings = {
            **dhan_settings,
            "instruments_path": str(master),
            "instruments_url": fake_dhan.master_url,
            **changes,
        }
        broker = DhanBroker.from_settings(settings, context, clock=clock)
        built.append(broker)
        await broker.start()
        return broker

    yield make
    for broker in built:
        # a download the background upkeep has under way finishes first (the refresh lock): cancelled in
        # aiofiles' open, it would leave its temporary file open (an unraisable ResourceWarning)
        await broker._refresh_master_if_due()  # noqa: SLF001
        await broker.aclose()


def order_tokens(fake: FakeDhan) -> list[str]:
    return [r.token for r in fake.requests if r.method == "POST" and r.path == "/v2/orders"]


def token_calls(fake: FakeDhan) -> list[str]:
    return [r.path for r in fake.token_calls()]


async def test_the_leader_renews_once_and_the_follower_uses_its_token_after_a_dh901_without_renewing_itself(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan, clock: Clock, board: Board
) -> None:
    """Both hold a token 2 h from expiry. Time moves into the renewal window: the leader renews (Dhan drops the
    old token), the follower does not; its next order gets DH-901, finds the leader's token, and goes through
    with it. One RenewToken call in all, no generation even though the follower could generate (PIN + TOTP)."""
    old = jwt((clock.at + timedelta(hours=2)).timestamp())
    fake_dhan.valid_tokens = {old}
    totp = {"access_token": old, "pin": PIN, "totp_secret": TOTP_SECRET, "auth_url": fake_dhan.auth_url}
    leader = await build("a", **totp)
    follower = await build("b", **totp)
    assert token_calls(fake_dhan) == []
    clock.at += timedelta(minutes=90)  # 30 min left: inside renew_before_s (1 h)
    await follower.maintain()  # first: a follower that looks before the leader renews does nothing
    assert token_calls(fake_dhan) == []
    await leader.maintain()
    assert token_calls(fake_dhan) == ["/v2/RenewToken"]
    [new] = fake_dhan.issued
    assert old not in fake_dhan.valid_tokens
    with structlog.testing.capture_logs() as events:
        result = await follower.place(request(cid="F1-1", alert_id="F1"))  # DH-901 on the old token, then the new
    assert result.order_id
    assert order_tokens(fake_dhan) == [old, new]
    assert any(e["event"] == "dhan.token.adopted" for e in events)
    assert token_calls(fake_dhan) == ["/v2/RenewToken"]
    await leader.place(request(cid="L1-1", alert_id="L1"))
    assert order_tokens(fake_dhan)[-1] == new
    assert follower.token_expires_at == leader.token_expires_at
    assert token_path(follower_dir(follower), "dhan").read_text().strip() == new  # a restart starts with it
    assert board.values["dhan", "access_token"].value == new  # the board holds it (encrypted on PostgreSQL)
    assert new not in str(events)  # no log line does


def follower_dir(broker: DhanBroker) -> Path:
    return broker._context.data_dir  # noqa: SLF001 - where this instance keeps its token file


async def test_a_follower_adopts_the_leaders_token_at_its_next_look_before_any_order(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan, clock: Clock
) -> None:
    old = jwt((clock.at + timedelta(minutes=30)).timestamp())
    fake_dhan.valid_tokens = {old}
    leader = await build("a", access_token=old)  # renews at start
    follower = await build("b", access_token=old)  # finds the leader's token at start
    [new] = fake_dhan.issued
    assert token_calls(fake_dhan) == ["/v2/RenewToken"]
    await follower.place(request())
    assert order_tokens(fake_dhan) == [new]
    assert (await follower.health()).ok
    assert leader.token_expires_at == follower.token_expires_at


async def test_a_follower_rejected_with_nothing_new_published_fails_fast_and_never_generates(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan, clock: Clock
) -> None:
    """Dhan rejects the token the follower holds and the leader has published nothing newer: the follower
    must not generate (a generation would invalidate the leader's token: the ping-pong). The order fails as
    an auth error; once the leader generates, the follower's next look picks the token up."""
    token = jwt((clock.at + timedelta(hours=10)).timestamp())
    fake_dhan.valid_tokens = {token}
    totp = {"access_token": token, "pin": PIN, "totp_secret": TOTP_SECRET, "auth_url": fake_dhan.auth_url}
    leader = await build("a", **totp)
    follower = await build("b", **totp)
    fake_dhan.valid_tokens = set()  # revoked at Dhan
    with pytest.raises(BrokerAuthError):
        await follower.place(request(cid="F1-1", alert_id="F1"))
    await follower.maintain()
    assert token_calls(fake_dhan) == []
    assert (await leader.place(request(cid="L1-1", alert_id="L1"))).order_id  # the leader generates on its DH-901
    assert token_calls(fake_dhan) == ["/app/generateAccessToken"]
    [generated] = fake_dhan.issued
    await follower.maintain()
    assert (await follower.place(request(cid="F2-1", alert_id="F2"))).order_id
    assert order_tokens(fake_dhan) == [token, token, generated, generated]
    assert token_calls(fake_dhan) == ["/app/generateAccessToken"]


async def test_a_new_leader_takes_the_renewal_over(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan, clock: Clock, board: Board
) -> None:
    old = jwt((clock.at + timedelta(hours=5)).timestamp())
    fake_dhan.valid_tokens = {old}
    await build("a", access_token=old)
    follower = await build("b", access_token=old)
    clock.at += timedelta(hours=4, minutes=30)
    board.leader = "b"  # a died: b holds the lock now
    with structlog.testing.capture_logs() as events:
        await follower.maintain()
    assert token_calls(fake_dhan) == ["/v2/RenewToken"]
    assert [r.token for r in fake_dhan.token_calls()] == [old]
    assert any(e["event"] == "dhan.leadership" and e["leader"] is True for e in events)
    await follower.place(request())
    assert order_tokens(fake_dhan) == fake_dhan.issued


async def test_without_a_shared_key_a_live_account_on_a_shared_store_refuses_to_start(
    tmp_path: Path, board: Board, dhan_settings: dict[str, object]
) -> None:
    cluster = MemoryCluster(board, "a", can_share_secrets=False)
    broker = DhanBroker.from_settings(
        dhan_settings, BrokerContext(account="dhan", data_dir=tmp_path, cluster=cluster), clock=Clock()
    )
    with pytest.raises(BrokerError, match=r"journal\.shared_secret_key is not set"):
        await broker.start()


# the instrument master


def master_of(broker: DhanBroker) -> Path:
    path = broker.settings.instruments_path
    assert path is not None
    return path


def downloads(fake: FakeDhan) -> int:
    return sum(1 for r in fake.requests if r.path == "/api-data/api-scrip-master.csv")


async def test_only_the_leader_refreshes_the_master_on_schedule_and_the_follower_follows_its_publication(
    build: Callable[..., Awaitable[DhanBroker]],
    fake_dhan: FakeDhan,
    notes: list[tuple[str, str, str]],
) -> None:
    """Both masters are stale at NOW (10:00, after the 08:30 refresh). The leader's download fails first: it
    notifies, and the follower downloads nothing and notifies nothing. When the leader's retry works, the
    follower's next look downloads the same file into its own directory."""
    fake_dhan.master = sample_master_path().read_bytes()
    url = {"instruments_url": fake_dhan.master_url}
    fake_dhan.next_reply("master", Misbehave.error("DH-905"))
    leader = await build("a", **url)  # its first round of upkeep (at start) tries the due refresh
    follower = await build("b", **url)
    leader_file, follower_file = master_of(leader), master_of(follower)
    await leader.maintain()
    await follower.maintain()
    assert downloads(fake_dhan) == 1  # the leader's failed try only
    assert [(who, kind) for who, kind, _ in notes] == [("a", "instruments_refresh_failed")]
    leader._refresher._retry_at = None  # noqa: SLF001 - the retry's time has come
    await leader.maintain()
    assert downloads(fake_dhan) == 2
    assert leader_file.read_bytes() == fake_dhan.master
    await follower.maintain()
    assert downloads(fake_dhan) == 3
    assert follower_file.read_bytes() == fake_dhan.master
    await follower.maintain()
    await leader.maintain()
    assert downloads(fake_dhan) == 3  # both fresh: nothing more today
    assert len(notes) == 1


async def test_a_follower_whose_own_newer_token_is_rejected_falls_back_to_the_leaders(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan, clock: Clock
) -> None:
    """The follower was given a token of its own that outlives the leader's (set by hand on that instance), so
    it kept it. When Dhan rejects it, the leader's published token is the way out: used at once, no generation."""
    leaders = jwt((clock.at + timedelta(hours=5)).timestamp())
    own = jwt((clock.at + timedelta(hours=20)).timestamp())
    fake_dhan.valid_tokens = {leaders, own}
    totp = {"pin": PIN, "totp_secret": TOTP_SECRET, "auth_url": fake_dhan.auth_url}
    await build("a", access_token=leaders, **totp)
    follower = await build("b", access_token=own, **totp)
    await follower.place(request(cid="F1-1", alert_id="F1"))
    fake_dhan.valid_tokens = {leaders}  # the follower's own token is revoked
    assert (await follower.place(request(cid="F2-1", alert_id="F2"))).order_id
    assert order_tokens(fake_dhan) == [own, own, leaders]
    assert token_calls(fake_dhan) == []


async def test_after_a_dh901_the_leader_generates_rather_than_go_back_to_the_older_token_the_row_still_holds(
    build: Callable[..., Awaitable[DhanBroker]],
    fake_dhan: FakeDhan,
    clock: Clock,
    board: Board,
    dhan_settings: dict[str, object],
) -> None:
    """The row holds the leader's first token; a SIGHUP gives the leader a second one (not published yet) and
    Dhan rejects it. The row's token is one the leader has seen and replaced: taking it back would fail the
    order again. The leader generates, the order goes through, and the new token is what it keeps and shares."""
    first = jwt((clock.at + timedelta(hours=10)).timestamp())
    second = jwt((clock.at + timedelta(hours=20)).timestamp())
    fake_dhan.valid_tokens = {first, second}
    totp = {"pin": PIN, "totp_secret": TOTP_SECRET, "auth_url": fake_dhan.auth_url}
    leader = await build("a", access_token=first, **totp)
    assert board.values["dhan", "access_token"].value == first
    await leader.reconfigure(
        {
            **dhan_settings,
            "instruments_path": str(master_of(leader)),
            "instruments_url": fake_dhan.master_url,
            **totp,
            "access_token": second,
        }
    )
    fake_dhan.valid_tokens = set()  # Dhan rejects both
    assert (await leader.place(request(cid="L1-1", alert_id="L1"))).order_id
    [generated] = fake_dhan.issued
    assert order_tokens(fake_dhan) == [second, generated]
    assert token_calls(fake_dhan) == ["/app/generateAccessToken"]
    assert token_path(follower_dir(leader), "dhan").read_text().strip() == generated
    assert board.values["dhan", "access_token"].value == generated


def cluster_of(broker: DhanBroker) -> MemoryCluster:
    cluster = broker._context.cluster  # noqa: SLF001 - the instance's view of the board
    assert isinstance(cluster, MemoryCluster)
    return cluster


async def test_an_instance_whose_shared_secret_key_cannot_open_the_shared_token_refuses_to_start(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan, clock: Clock
) -> None:
    token = jwt((clock.at + timedelta(hours=10)).timestamp())
    fake_dhan.valid_tokens = {token}
    await build("a", access_token=token)
    with pytest.raises(BrokerError, match=r"journal\.shared_secret_key") as refused:
        await build("b", access_token=token, key_opens=False)
    assert token not in str(refused.value)


async def test_a_key_that_stops_opening_the_shared_token_makes_the_follower_unhealthy_and_the_leader_renew_nothing(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan, clock: Clock, board: Board
) -> None:
    """A rotated key on one instance (or a leader whose key differs from the row's): the follower reports it on
    /health and in the pre-open check instead of trading on until the leader's next renewal strands it; the
    leader does not renew a token it could not hand over (Dhan would invalidate the one the others hold)."""
    token = jwt((clock.at + timedelta(hours=2)).timestamp())
    fake_dhan.valid_tokens = {token}
    leader = await build("a", access_token=token)
    follower = await build("b", access_token=token)
    assert (await follower.health()).ok
    cluster_of(follower).key_opens = False
    with structlog.testing.capture_logs() as events:
        await follower.maintain()
    health = await follower.health()
    assert not health.ok
    assert "journal.shared_secret_key" in health.detail
    checks = {c.name: c for c in await follower.readiness(close_at=clock.at + timedelta(hours=5))}
    assert not checks["token"].ok
    assert "journal.shared_secret_key" in checks["token"].detail
    assert [e["event"] for e in events if e["log_level"] == "error"] == ["dhan.token.share_failed"]
    assert token not in str([events, health, checks])
    cluster_of(leader).key_opens = False
    clock.at += timedelta(minutes=90)  # inside the renewal window
    await leader.maintain()
    assert token_calls(fake_dhan) == []
    assert board.values["dhan", "access_token"].version == 1
    assert not (await leader.health()).ok
    cluster_of(leader).key_opens = True  # the operator gave it the right key: it renews at its next look
    await leader.maintain()
    assert token_calls(fake_dhan) == ["/v2/RenewToken"]
    assert (await leader.health()).ok


async def test_a_token_set_by_hand_on_a_follower_is_published_and_the_leader_uses_it(
    build: Callable[..., Awaitable[DhanBroker]],
    fake_dhan: FakeDhan,
    clock: Clock,
    board: Board,
    dhan_settings: dict[str, object],
) -> None:
    """The leader cannot renew (no PIN + TOTP) and Dhan dropped its token; an operator sets a new one on the
    follower (`tvbridge dhan token set` + SIGHUP). The follower publishes it (compare-and-set on the version) and
    the leader takes it at its next look: its orders go through. /health says which instance leads."""
    old = jwt((clock.at + timedelta(hours=5)).timestamp())
    fake_dhan.valid_tokens = {old}
    leader = await build("a", access_token=old)
    follower = await build("b", access_token=old)
    assert "this instance leads the Dhan upkeep" in (await leader.health()).detail
    assert "follows the leader's token" in (await follower.health()).detail
    hand = jwt((clock.at + timedelta(hours=24)).timestamp())
    fake_dhan.valid_tokens = {hand}  # a token made on web.dhan.co: the old one no longer works
    await follower.reconfigure(
        {
            **dhan_settings,
            "instruments_path": str(master_of(follower)),
            "instruments_url": fake_dhan.master_url,
            "access_token": hand,
        }
    )
    await follower.maintain()
    shared = board.values["dhan", "access_token"]
    assert (shared.value, shared.published_by, shared.version) == (hand, "b", 2)
    await leader.maintain()
    assert (await leader.place(request(cid="L1-1", alert_id="L1"))).order_id
    assert (await follower.place(request(cid="F1-1", alert_id="F1"))).order_id
    assert order_tokens(fake_dhan) == [hand, hand]
    assert token_path(follower_dir(leader), "dhan").read_text().strip() == hand
    await follower.maintain()
    assert board.values["dhan", "access_token"].version == 2  # published once


async def test_a_follower_whose_own_download_of_the_leaders_master_fails_notifies_once_and_is_not_ready(
    build: Callable[..., Awaitable[DhanBroker]],
    fake_dhan: FakeDhan,
    clock: Clock,
    notes: list[tuple[str, str, str]],
) -> None:
    """The leader refreshes the stale master and publishes; the follower's own download of it fails. Only the
    follower trades on yesterday's file, so it tells the operator itself: once for that refresh, however
    often it retries, and its pre-open check fails on the master."""
    leader = await build("a")
    await leader.maintain()  # refreshed (at start or now) and published
    assert master_of(leader).read_bytes() == fake_dhan.master
    fake_dhan.next_reply("master", *[Misbehave.error("DH-905")] * 3)
    follower = await build("b")
    await follower.maintain()
    follower._refresher._retry_at = None  # noqa: SLF001 - the retry's time has come
    await follower.maintain()
    assert [(who, kind) for who, kind, _ in notes] == [("b", "instruments_refresh_failed")]
    checks = {c.name: c for c in await follower.readiness(close_at=clock.at + timedelta(hours=5))}
    assert not checks["instruments"].ok
    assert checks["instruments"].local


async def test_a_follower_rejected_while_the_leader_renews_waits_briefly_for_the_new_token(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan, clock: Clock, board: Board
) -> None:
    """Dhan drops the old token while the leader's RenewToken runs; the follower's order is rejected a moment
    before the leader publishes the new one. The follower looks again for a short bounded while and the order
    goes through with the new token; no generation. The next rejection of that token fails fast."""
    old = jwt((clock.at + timedelta(hours=10)).timestamp())
    fake_dhan.valid_tokens = {old}
    totp = {"access_token": old, "pin": PIN, "totp_secret": TOTP_SECRET, "auth_url": fake_dhan.auth_url}
    await build("a", **totp)
    follower = await build("b", **totp)
    new = jwt((clock.at + timedelta(hours=24)).timestamp())
    fake_dhan.valid_tokens = {new}  # renewed at Dhan, not published yet
    looks = 0

    def published_on_the_second_look(instance: str, name: str) -> None:
        nonlocal looks
        if instance != "b" or name != "access_token" or order_tokens(fake_dhan) != [old]:
            return
        looks += 1  # the follower's looks after the rejection
        if looks == 2:  # the leader commits while the follower waits
            board.values["dhan", "access_token"] = Shared(value=new, version=2, published_by="a", published_at="")

    board.before_load = published_on_the_second_look
    assert (await follower.place(request(cid="F1-1", alert_id="F1"))).order_id
    assert order_tokens(fake_dhan) == [old, new]
    assert token_calls(fake_dhan) == []


async def test_a_new_leader_does_not_republish_the_master_it_followed(
    build: Callable[..., Awaitable[DhanBroker]], fake_dhan: FakeDhan, clock: Clock, board: Board
) -> None:
    """The follower downloads the leader's master a minute after the leader did. When it becomes the leader it
    holds the same file: publishing again (its own download time) would make every follower download it again."""
    leader = await build("a")
    await leader.maintain()
    published = board.values["dhan", "instruments"]
    clock.at += timedelta(minutes=1)
    follower = await build("b")
    await follower.maintain()
    assert master_of(follower).read_bytes() == fake_dhan.master
    board.leader = "b"
    await follower.maintain()
    assert board.values["dhan", "instruments"] == published
    checks = {c.name: c for c in await follower.readiness(close_at=clock.at + timedelta(hours=5))}
    assert checks["instruments"].ok  # the leader's moment: fresh today
