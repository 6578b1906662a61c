"""Auth through the real server: the secret or the path token, refusals logged without what was sent."""

from __future__ import annotations

import attrs
from helpers import SECRET, ClientFactory, alert
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tvbridge.config import Config

PATH_TOKEN = "path-token-0123456789abcdef"


def with_path_token(config: Config) -> Config:
    return attrs.evolve(config, auth=attrs.evolve(config.auth, path_token=PATH_TOKEN))


async def test_wrong_secret_is_401_and_never_logged(make_client: ClientFactory, config: Config) -> None:
    """A wrong secret: 401 "Invalid webhook secret", one auth.failed line with the source, no secret anywhere."""
    client = await make_client(config)
    guess = "my-guess-at-the-secret"
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post("/webhook", json=alert(secret=guess))
    body = await response.json()
    assert response.status == 401
    assert body["message"] == "Invalid webhook secret"
    [line] = [e for e in events if e["event"] == "auth.failed"]
    assert line["reason"] == "wrong secret"
    assert line["source"] == "127.0.0.1"
    assert line["alert_id"] == body["alert_id"]
    assert guess not in repr(events)
    assert SECRET not in repr(events)
    assert guess not in await response.text()


async def test_missing_secret_is_401(make_client: ClientFactory, config: Config) -> None:
    """An alert without a secret is refused with a message that says so, and its `auth.failed` line gives the reason."""
    client = await make_client(config)
    raw = alert()
    del raw["secret"]
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post("/webhook", json=raw)
    assert response.status == 401
    assert (await response.json())["message"] == "Invalid webhook secret: the alert has no secret"
    [line] = [e for e in events if e["event"] == "auth.failed"]  # the operator sees why, not only that
    assert (line["reason"], line["source"]) == ("no secret in the alert", "127.0.0.1")


async def test_a_secret_that_is_not_a_string_is_refused(make_client: ClientFactory, config: Config) -> None:
    """A number or an object in `secret` is a wrong secret, not a crash."""
    client = await make_client(config)
    for secret in (12345, {"a": 1}, None):
        assert (await client.post("/webhook", json={**alert(), "secret": secret})).status == 401


async def test_path_token_authenticates_without_a_secret(make_client: ClientFactory, config: Config) -> None:
    """On /webhook/<path_token> the alert needs no secret in its body."""
    client = await make_client(with_path_token(config))
    raw = alert()
    del raw["secret"]
    with capture_logs() as events:
        response = await client.post(f"/webhook/{PATH_TOKEN}", json=raw)
    assert response.status == 200
    assert PATH_TOKEN not in repr(events)
    assert {e["path"] for e in events if e["event"] == "http.request"} == {"/webhook/<path_token>"}


async def test_wrong_path_token_is_401_and_not_logged(make_client: ClientFactory, config: Config) -> None:
    """A wrong path token is refused like a wrong secret; neither token appears in the log."""
    client = await make_client(with_path_token(config))
    with capture_logs() as events:
        response = await client.post("/webhook/not-the-token", json=alert())
    assert response.status == 401
    assert "not-the-token" not in repr(events)
    assert PATH_TOKEN not in repr(events)
    [line] = [e for e in events if e["event"] == "auth.failed"]
    assert line["reason"] == "wrong path token"


async def test_path_route_without_a_configured_token_is_404(make_client: ClientFactory, config: Config) -> None:
    """Without auth.path_token there is no /webhook/<anything> route at all."""
    client = await make_client(config)
    assert (await client.post("/webhook/anything", json=alert())).status == 404


async def test_body_that_is_not_json_is_400(make_client: ClientFactory, config: Config) -> None:
    """The secret is inside the body, so a body that is not a JSON object is refused before any compare."""
    client = await make_client(config)
    response = await client.post("/webhook", data=b"BUY RELIANCE")
    assert response.status == 400
    assert (await response.json())["message"].startswith("body is not JSON")


def near_misses(value: str) -> dict[str, str]:
    """What a compare that is almost right would let through: the secret with something after it, one character
    short, its last character changed, only its beginning, and (where a route can carry it) nothing."""
    changed = chr(ord(value[-1]) ^ 1)
    return {
        "one character more": value + "0",
        "anything after it": value + "-and-more",
        "one character less": value[:-1],
        "last character changed": value[:-1] + changed,
        "first character changed": chr(ord(value[0]) ^ 1) + value[1:],
        "only a prefix": value[:8],
        "a single character": value[0],
    }


async def test_a_secret_that_is_almost_right_is_refused(make_client: ClientFactory, config: Config) -> None:
    """Only the exact secret opens /webhook: one character more or less, a changed last character or a prefix
    is a 401 and places nothing; the exact secret, sent right after, is placed."""
    client = await make_client(config)
    for name, guess in {**near_misses(SECRET), "empty": ""}.items():
        response = await client.post("/webhook", json=alert(secret=guess))
        assert response.status == 401, name
        assert (await response.json())["message"] == "Invalid webhook secret", name
    assert not config.data_path("webhook_orders.csv").read_text().splitlines()[1:]  # no row: nothing ran
    assert (await client.post("/webhook", json=alert())).status == 200


async def test_a_path_token_that_is_almost_right_is_refused(make_client: ClientFactory, config: Config) -> None:
    """Only the exact path token opens /webhook/<token>: near misses are a 401, like a wrong secret, and
    nothing runs; the exact token, right after, is placed."""
    client = await make_client(with_path_token(config))
    raw = alert()
    del raw["secret"]
    for name, guess in near_misses(PATH_TOKEN).items():
        response = await client.post(f"/webhook/{guess}", json=raw)
        assert response.status == 401, name
    assert not config.data_path("webhook_orders.csv").read_text().splitlines()[1:]
    assert (await client.post(f"/webhook/{PATH_TOKEN}", json=raw)).status == 200


async def test_a_lone_surrogate_in_the_secret_is_401(make_client: ClientFactory, config: Config) -> None:
    """JSON can spell a lone surrogate (`"\\ud800"`), which is no UTF-8 text: as the secret it is a wrong secret
    (401, nothing placed), never a 500."""
    client = await make_client(config)
    for guess in ("\ud800", SECRET + "\udfff", "\udcff"):
        response = await client.post("/webhook", json=alert(secret=guess))
        assert response.status == 401, ascii(guess)
    assert not config.data_path("webhook_orders.csv").read_text().splitlines()[1:]


async def test_a_secret_that_is_not_utf8_is_compared_not_crashed(make_client: ClientFactory, config: Config) -> None:
    """`WEBHOOK_SECRET` holding bytes that are not UTF-8 reaches tvbridge with lone surrogates (Python decodes the
    environment with `surrogateescape`): an alert carrying the same code points is placed, any other secret is a
    401, never a 500."""
    secret = "webhook-\udcff-secret"  # os.environ's reading of b"webhook-\xff-secret"
    client = await make_client(attrs.evolve(config, auth=attrs.evolve(config.auth, secret=secret)))
    assert (await client.post("/webhook", json=alert(secret="webhook-secret"))).status == 401
    assert (await client.post("/webhook", json=alert(secret=SECRET))).status == 401
    assert (await client.post("/webhook", json=alert(secret=secret))).status == 200
