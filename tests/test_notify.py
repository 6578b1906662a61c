"""Notifications: a JSON-webhook target (apprise's `json://`) on a loopback sink the test runs.

What the operator gets: a message per failed leg, never a secret, never a slower answer to TradingView (the sink
is slow on purpose), and a storm of failures folded into one message with a count.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestServer
from helpers import SECRET, ClientFactory, alert, leg, with_accounts
from notify_sink import Sink, running_sink

from tvbridge.config import Config, NotifyConfig
from tvbridge.errors import ConfigError
from tvbridge.keys import JOURNAL
from tvbridge.notify import Notifier, url_secrets

SINK_DELAY_S = 1.0
WAIT_S = 20.0


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    """A slow chat API: it takes a second to answer each message."""
    async with running_sink(SINK_DELAY_S) as running:
        yield running


def notifying(config: Config, sink: Sink, min_interval_s: float) -> Config:
    config = with_accounts(config, {"s": {"broker": "scripted", "reject_symbols": ["BAD"]}})
    return attrs.evolve(config, notify=NotifyConfig(urls=(sink.url,), min_interval_s=min_interval_s))


async def test_a_failed_leg_notifies_without_delaying_the_answer(make_client: ClientFactory, config: Config) -> None:
    """The webhook answers while the target still holds the message unanswered (apprise told to wait a minute for
    it: a notification awaited on the answer's path would hold the answer past WAIT_S); the message names the
    account, the leg, the broker's reason and the alert id, and holds no secret. A placed leg notifies nothing."""
    answer_held = asyncio.Event()
    async with running_sink(hold=answer_held) as held_sink:
        patient = NotifyConfig(urls=(f"{held_sink.url}?rto=60",), min_interval_s=60)
        client = await make_client(attrs.evolve(notifying(config, held_sink, 60), notify=patient))
        assert (await client.post("/webhook", json=alert())).status == 200
        async with asyncio.timeout(WAIT_S):
            response = await client.post("/webhook", json=alert(leg(symbol="BAD")))
        assert response.status == 200
        (message,) = await held_sink.wait_for(1)
        answer_held.set()
        alert_id = (await response.json())["alert_id"]
        assert message["title"] == "tvbridge: order leg failed"
        assert "s leg 1 (B 10 BAD): BAD is not tradeable here" in message["message"]
        assert alert_id in message["message"]
        assert SECRET not in str(message)


@attrs.define
class StoppedClock:
    """A monotonic clock that moves only when the test moves it."""

    at: float = 1000.0

    def __call__(self) -> float:
        return self.at


async def test_a_storm_of_failures_is_one_message_with_a_count(sink: Sink) -> None:
    """Eight failures within `min_interval_s` (by the injected clock, however slowly the machine runs): the
    first is sent at once; once the interval is over the other seven go as one message saying so, and nothing
    more is sent when the notifier stops."""
    clock = StoppedClock()
    notifier = Notifier(NotifyConfig(urls=(sink.url,), min_interval_s=0.5), clock=clock)
    await notifier.start()
    try:
        for n in range(8):  # while the clock stands still, a timer that fires finds the interval not over
            notifier.event("leg_failed", f"s leg 1 (B {n + 1} BAD): BAD is not tradeable here")
        (first,) = await sink.wait_for(1)
        assert first["title"] == "tvbridge: order leg failed"
        clock.at += 0.5  # the interval is over: the held-back timer sends the rest when it next fires
        first, summary = await sink.wait_for(2)
    finally:
        await notifier.close()
    assert summary["title"] == "tvbridge: order leg failed (7 more)"
    assert summary["message"].startswith("7 more since the last message. The latest: s leg 1 (B 8 BAD)")
    assert len(sink.received) == 2


async def test_a_secret_in_a_message_reaches_the_chat_redacted(sink: Sink) -> None:
    """A message that carries a configured secret (a plugin echoing its token in a refusal, which
    docs/plugins.md forbids, or a trader's symbol) reaches the chat with `[redacted]` in its place: the first
    message and the folded one after it alike."""
    clock = StoppedClock()
    token = "plugin-token-5f0c9a1e27d84b36"
    notifier = Notifier(NotifyConfig(urls=(sink.url,), min_interval_s=0.5), secrets=[SECRET, token], clock=clock)
    await notifier.start()
    try:
        notifier.event("leg_failed", f"s leg 1 (B 1 INFY): refused, token {token} expired")
        (first,) = await sink.wait_for(1)
        notifier.event("leg_failed", f"s leg 1 (B 2 INFY): refused, token {token} expired")
        notifier.event("leg_failed", f"s leg 1 (B 3 {SECRET}): not tradeable here")
        clock.at += 0.5
        _, folded = await sink.wait_for(2)
    finally:
        await notifier.close()
    assert first["message"] == "s leg 1 (B 1 INFY): refused, token [redacted] expired"
    assert folded["message"] == (
        "2 more since the last message. The latest: s leg 1 (B 3 [redacted]): not tradeable here"
    )
    assert token not in str(sink.received)
    assert SECRET not in str(sink.received)


async def test_held_back_failures_are_sent_at_shutdown(config: Config, sink: Sink, converter: Any) -> None:
    """Failures folded into a later message are not lost when the server stops first."""
    from tvbridge.app import create_app  # noqa: PLC0415 - a server stopped by hand here
    from tvbridge.secretstore import resolve_credentials  # noqa: PLC0415 - same

    app = create_app(notifying(config, sink, 3600), converter, resolve_credentials(config))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    from aiohttp import ClientSession  # noqa: PLC0415 - only here

    async with ClientSession() as session:
        for n in range(3):
            bad = alert(leg(symbol="BAD", quantity=str(n + 1)))
            async with session.post(server.make_url("/webhook"), json=bad) as response:
                assert response.status == 200
    await server.close()
    titles = [m["title"] for m in await sink.wait_for(2)]
    assert titles == ["tvbridge: order leg failed", "tvbridge: order leg failed (2 more)"]


def test_an_unknown_event_kind_is_a_config_error(config: Config, converter: Any) -> None:
    """A typo in notify.events stops the start, naming the known kinds."""
    from tvbridge.config import load_config  # noqa: PLC0415 - only here

    with pytest.raises(ConfigError, match="unknown event 'leg_faild'"):
        load_config(None, converter, {"TVBRIDGE_NOTIFY__EVENTS": '["leg_faild"]'}, config.server.data_dir)


def test_urls_are_secrets_and_a_bad_one_stops_the_start(config: Config, converter: Any) -> None:
    """`tvbridge check-config` masks notify.urls (they carry bot tokens); a URL apprise does not know is a
    config error that does not echo the URL."""
    from tvbridge.config import effective_settings  # noqa: PLC0415 - only here

    secret_url = "tgram://123456:SECRET-BOT-TOKEN/987"
    shown = effective_settings(attrs.evolve(config, notify=NotifyConfig(urls=(secret_url,))), converter)
    assert shown["notify"]["urls"] == "********"
    with pytest.raises(ConfigError) as raised:
        Notifier(NotifyConfig(urls=("nosuchscheme://x-SECRET",)))
    assert "SECRET" not in str(raised.value)


async def test_halt_and_resume_notify(make_client: ClientFactory, config: Config, sink: Sink) -> None:
    """POST /admin/halt and /admin/resume each send a message (the kill switch is news for the operator)."""
    from tvbridge.keys import CREDENTIALS  # noqa: PLC0415 - only here

    client = await make_client(notifying(config, sink, 60))
    assert client.app is not None
    auth = {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}
    assert (await client.post("/admin/halt", json={"reason": "news"}, headers=auth)).status == 200
    assert (await client.post("/admin/resume", headers=auth)).status == 200
    halted, resumed = await sink.wait_for(2)
    assert (halted["title"], halted["message"]) == (
        "tvbridge: trading halted",
        "trading halted through the admin API: news",
    )
    assert resumed["title"] == "tvbridge: trading resumed"


@pytest.mark.parametrize(
    ("url", "secret_parts", "kept"),
    [
        ("tgram://123456789:AAbbCCddEEffGGhh/-1001234567890", ["AAbbCCddEEffGGhh", "-1001234567890"], []),
        ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", ["4174216298", "JHMHI8qBe7bk2ZwO5U711o3dV_js"], []),
        ("mailtos://me:pass%2Fword99@mail.example.com", ["pass%2Fword99", "pass/word99"], ["mail.example.com"]),
        ("json://127.0.0.1:8080/hook/tok3n-in-path?+X-Key=header-token-1", ["tok3n-in-path", "header-token-1"], []),
        ("json://localhost:8080/hook", [], ["localhost", "hook"]),
    ],
    ids=["bot token in the host", "token in the path", "password", "path and header", "no token"],
)
def test_every_token_part_of_a_notification_url_is_a_secret(url: str, secret_parts: list[str], kept: list[str]) -> None:
    """apprise logs at debug level the URL it posts to, without the rest of the apprise URL: the parts that can
    be tokens are redacted on their own, while a host name or a short path segment stays readable."""
    found = url_secrets([url])
    assert url in found
    assert set(secret_parts) <= set(found)
    assert not set(kept) & set(found)


async def test_results_the_journal_cannot_take_are_a_journal_trouble_message(
    make_client: ClientFactory, config: Config, sink: Sink, store_env: dict[str, str]
) -> None:
    """The alert is placed and answered, but its final state cannot be written (the database refuses the alert's
    finishing update): the operator gets one `journal trouble` message naming the alert, and no other."""
    if store_env:
        pytest.skip("breaks the SQLite journal's own database (a trigger through `Journal.database`)")
    client = await make_client(notifying(config, sink, 0))
    journal: Any = client.app[JOURNAL]  # the SQLite journal, whose database the test breaks for the results
    await journal.database.write(
        lambda conn: conn.execute(
            "CREATE TRIGGER refuse_results BEFORE UPDATE OF status ON alerts WHEN NEW.status != 'accepted'"
            " BEGIN SELECT RAISE(ABORT, 'disk gone'); END"
        )
    )
    response = await client.post("/webhook", json=alert())
    body = await response.json()
    assert body["status"] == "success"
    (message,) = await sink.wait_for(1)
    assert message["title"] == "tvbridge: journal trouble"
    assert f"alert {body['alert_id']}: its final state could not be journaled" in message["message"]
