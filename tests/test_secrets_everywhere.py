"""Every kind of secret, every place it could end up: a real `tvbridge serve` with all of them set, driven through
every endpoint, then searched for each secret in every file of the data directory (the journal and paper
databases and their WAL files read as bytes), every response's headers and body, stdout and stderr, and what
the notification target and the (fake) Dhan API received in their bodies.

Each secret is a distinct random value, searched for as it is and in the encodings a leak would take (URL
encoding, JSON escaping, base64 at each alignment, as HTTP Basic auth carries it). A finding names the secret's
kind and where it was found. The Dhan account is live against the fake Dhan API (tests/support/fake_dhan.py),
so the access token travels the real path: the dhanhq client, its `requests` session, our ledger and logs.

The Dhan PIN and TOTP secret are used, not only configured: after the SIGHUP renewal Dhan drops the token (DH-901)
and the next order makes the account generate a new one from PIN + TOTP (dhanhq's `DhanLogin` against the fake's
auth server), which it stores and then places with. That generated token is a secret too; it is searched for like
the others, except in the one file made to hold it (`dhan-dhan.token`, mode 0600). The PIN and the TOTP code are
query parameters of the generation request on purpose: that request is the one place they may appear.

The log level is `debug`: an operator who turns it up for a bad day must not publish their tokens with it.

With `TVBRIDGE_TEST_STORE=postgresql` (the suite's PostgreSQL pass) the server keeps its store in a PostgreSQL
database, which is searched too (`pg_dump`): the Dhan token the leader shares there is encrypted with
`journal.shared_secret_key`, and that key itself is one more secret that must appear nowhere.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import secrets
import shutil
import signal
import time
from pathlib import Path
from typing import Final
from urllib.parse import quote

import attrs
import pyotp
import pytest
from aiohttp import web
from fake_dhan import CLIENT_ID, FakeDhan
from helpers import alert, leg
from server_process import ServerProcess

from tvbridge_brokers.dhan.instruments import sample_master_path
from tvbridge_brokers.dhan.token import GENERATE_PATH, token_path

NOTIFY_WAIT_S: Final = 20.0
EVENT_WAIT_S: Final = 20.0


def _random() -> str:
    """A value no other secret shares a substring with: `token_hex` keeps it free of characters that a URL, TOML
    or JSON would escape, so the search for its encodings is the search for a leak, not for our own quoting."""
    return secrets.token_hex(20)


def _pin() -> str:
    """A real Dhan PIN is 6 digits, but any 6 digits would turn up in order ids, timestamps and metrics, and a
    search for it would find leaks that are not. A long random digit string keeps the PIN's kind (digits, what
    dhanhq sends in the generation URL) and makes a match a leak."""
    return str(secrets.randbelow(10**30)).zfill(30)


@attrs.frozen
class Response:
    method: str
    path: str
    status: int
    headers: bytes
    body: bytes


@attrs.define
class Receiver:
    """A notification target on loopback: records what apprise's json:// sends it."""

    bodies: list[bytes] = attrs.Factory(list)
    headers: list[dict[str, str]] = attrs.Factory(list)
    arrived: asyncio.Condition = attrs.Factory(asyncio.Condition)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            async with self.arrived:
                self.bodies.append(body)
                self.headers.append(dict(request.headers))
                self.arrived.notify_all()
            return web.json_response({})

        app = web.Application()
        app.router.add_post("/{tail:.*}", receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(NOTIFY_WAIT_S), self.arrived:
            await self.arrived.wait_for(lambda: len(self.bodies) >= count)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def encodings(value: str) -> dict[str, bytes]:
    """The forms a leaked `value` takes: as is, URL-encoded, JSON-escaped, and base64 (standard and URL-safe) at
    each of the three alignments it can have inside a longer encoded text (HTTP Basic's `user:password`)."""
    raw = value.encode()
    forms = {
        "as is": raw,
        "URL-encoded": quote(value, safe="").encode(),
        "JSON-escaped": json.dumps(value)[1:-1].encode(),
    }
    for shift in range(3):
        for name, encode in (("base64", base64.b64encode), ("URL-safe base64", base64.urlsafe_b64encode)):
            encoded = encode(b"\0" * shift + raw)
            # the first group holds the preceding bytes, the last one the following: only the middle is the secret's
            forms[f"{name} (offset {shift})"] = encoded[4 if shift else 0 : -4]
    return forms


def leaks(
    needles: dict[str, str], places: dict[str, bytes], on_purpose: dict[str, frozenset[str]] | None = None
) -> list[str]:
    """Where each needle is found, in any encoding; `on_purpose` names, per kind, the places made to hold it."""
    allowed = on_purpose or {}
    found = []
    for kind, value in needles.items():
        for form, needle in encodings(value).items():
            found += [
                f"{kind} ({form}) in {where}"
                for where, text in places.items()
                if needle in text and where not in allowed.get(kind, frozenset())
            ]
    return found


async def wait_for_event(server: ServerProcess, event: str) -> None:
    deadline = time.monotonic() + EVENT_WAIT_S
    while not any(e.get("event") == event for e in server.events()):
        assert time.monotonic() < deadline, f"no {event} line within {EVENT_WAIT_S} s"
        await asyncio.sleep(0.05)  # polling another process's log, bounded by the deadline


def data_files(data_dir: Path) -> dict[str, bytes]:
    """Every file under the data directory, as bytes: SQLite files with their -wal and -shm, logs, the CSV..."""
    return {
        f"file {path.relative_to(data_dir)}": path.read_bytes()
        for path in sorted(data_dir.rglob("*"))
        if path.is_file()
    }


class Client:
    """Raw HTTP against the server, every response kept (status line, headers and body as received)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.responses: list[Response] = []

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            raw = conn.getresponse()
            response = Response(method, path, raw.status, bytes(raw.headers), raw.read())
        finally:
            conn.close()
        self.responses.append(response)
        return response

    def webhook(self, raw: dict[str, object], path: str = "/webhook") -> Response:
        return self.call("POST", path, json.dumps(raw).encode(), {"Content-Type": "application/json"})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"operator:{password}".encode()).decode()}


def near_misses(value: str) -> list[str]:
    """Guesses an attacker might send: one character more, one less, the last one changed, a prefix."""
    flipped = value[:-1] + ("0" if value[-1] != "0" else "1")
    return [value + "0", value[:-1], flipped, value[:12]]


def drive_strategy(client: Client, secret: str, path_token: str, admin: str) -> None:
    """A `[strategies.momo]` (its own secret and path token, on paper): an alert with each, near misses of both
    (401, as any wrong secret), its halt and resume, and a 503 while halted (issue 19)."""
    mine = alert(leg(symbol="INFY", quantity="3"), secret=secret)
    assert client.webhook(mine).status == 200
    via_path = {k: v for k, v in alert(leg(symbol="INFY", quantity="4")).items() if k != "secret"}
    assert client.webhook(via_path, f"/webhook/{path_token}").status == 200
    for guess in near_misses(secret):
        assert client.webhook(alert(leg(), secret=guess)).status == 401, guess
    for guess in near_misses(path_token):
        assert client.webhook(via_path, f"/webhook/{guess}").status == 401, guess
    halt = json.dumps({"strategy": "momo", "reason": "news"}).encode()
    assert client.call("POST", "/admin/halt", halt, bearer(admin)).status == 200
    assert client.webhook(alert(leg(symbol="INFY", quantity="5"), secret=secret)).status == 503
    assert client.call("POST", "/admin/resume", json.dumps({"strategy": "momo"}).encode(), bearer(admin)).status == 200


def drive(client: Client, secret: str, path_token: str, admin: str) -> list[str]:
    """Every endpoint, the right credentials and wrong ones; returns the alert ids that were accepted."""
    fresh = alert(leg(symbol="RELIANCE", quantity="1"), secret=secret)
    first = client.webhook(fresh)
    assert first.status == 200, first.body
    ids = [json.loads(first.body)["alert_id"]]
    assert client.webhook(fresh).status == 200  # a duplicate, answered from the first
    via_path = alert(leg(symbol="INFY", quantity="2"))
    del via_path["secret"]
    second = client.webhook(via_path, f"/webhook/{path_token}")
    assert second.status == 200, second.body
    ids.append(json.loads(second.body)["alert_id"])
    failing = client.webhook(alert(leg(symbol="RELIANC", quantity="1"), secret=secret))  # not in Dhan's master
    assert failing.status == 200, failing.body
    ids.append(json.loads(failing.body)["alert_id"])
    stale = alert(leg(symbol="TCS", meta={"timenow": "2020-01-01T00:00:00Z"}), secret=secret)
    assert client.webhook(stale).status == 422
    # refused alerts are kept in the journal for the status page (refusal_journal.py): with the body secret and
    # through the path token, neither may be kept with them
    invalid = alert(leg(symbol="TCS", quantity="ten"), secret=secret)
    assert client.webhook(invalid).status == 422
    invalid_via_path = {k: v for k, v in invalid.items() if k != "secret"}
    assert client.webhook(invalid_via_path, f"/webhook/{path_token}").status == 422

    for guess in near_misses(secret):
        assert client.webhook(alert(leg(), secret=guess)).status == 401, guess
    for guess in near_misses(path_token):
        assert client.webhook(via_path, f"/webhook/{guess}").status == 401, guess
    assert client.webhook(alert(leg(), secret=path_token)).status == 401  # the path token is no body secret
    assert client.webhook(alert(leg(), secret=admin)).status == 401

    for alert_id in ids:
        assert client.call("GET", f"/alerts/{alert_id}", headers=bearer(admin)).status == 200
    for guess in [*near_misses(admin), secret]:
        assert client.call("GET", f"/alerts/{ids[0]}", headers=bearer(guess)).status == 401, guess
        assert client.call("GET", "/metrics", headers=bearer(guess)).status == 401, guess
        assert client.call("GET", "/status", headers=basic(guess)).status == 401, guess
    assert client.call("GET", "/metrics", headers=bearer(admin)).status == 200
    assert client.call("GET", "/metrics", headers=basic(admin)).status == 200
    assert client.call("GET", "/status", headers=basic(admin)).status == 200
    for path in ("/", "/health", "/openapi.json", "/market", "/alerts/no-such-alert"):
        client.call("GET", path, headers=bearer(admin))
    assert client.call("GET", "/health").status == 200

    reason = json.dumps({"reason": "lunch"}).encode()
    assert client.call("POST", "/admin/halt", reason, bearer(secret)).status == 401
    assert client.call("POST", "/admin/halt", reason, bearer(admin)).status == 200
    assert client.webhook(alert(leg(symbol="SBIN"), secret=secret)).status == 503  # halted
    assert client.call("POST", "/admin/resume", None, bearer(admin)).status == 200
    client.call("POST", "/admin/flatten", json.dumps({"account": "paper"}).encode(), bearer(admin))
    return ids


KINDS: Final = (
    "webhook secret",
    "path token",
    "admin token",
    "Dhan access token",
    "renewed Dhan access token",
    "notify URL password",
    "notify URL header token",
    "notify URL path token",
    "strategy secret",
    "strategy path token",
)


def write_config(
    path: Path, values: dict[str, str], *, data_dir: Path, dhan: FakeDhan, notify_port: int, database: str = ""
) -> None:
    """Every secret set; the file lives outside the data directory, where it holds them on purpose. A live Dhan
    account and a paper one; debug logs; the lockout after failed authentications out of the way. `database`:
    the store is that PostgreSQL database, with a shared secret key."""
    journal = ""
    if database:
        key = values[SHARED_KEY_KIND]
        journal = f"[journal]\nurl = {json.dumps(database)}\nshared_secret_key = {json.dumps(key)}\n"
    master = path.parent / "master.csv"
    shutil.copyfile(sample_master_path(), master)
    notify_urls = [
        (
            f"json://operator:{values['notify URL password']}@127.0.0.1:{notify_port}"
            f"/hook/{values['notify URL path token']}?+X-Api-Key={values['notify URL header token']}"
        ),
        f"json://127.0.0.1:1/unreachable/{values['notify URL path token']}",  # nothing listens on port 1
    ]
    path.write_text(
        f"""
[server]
data_dir = {json.dumps(str(data_dir))}
admin_token = "{values["admin token"]}"
[auth]
secret = "{values["webhook secret"]}"
path_token = "{values["path token"]}"
[logging]
level = "debug"
[rate_limit]
auth_failures_per_min = 1000
per_ip_burst = 1000
[metrics]
require_token = true
{journal}[notify]
urls = {json.dumps(notify_urls)}
events = ["leg_failed", "halted", "resumed"]
[routing]
accounts = ["dhan", "paper"]
[accounts.dhan]
broker = "dhan"
client_id = "{CLIENT_ID}"
access_token = "{values["Dhan access token"]}"
live = true
base_url = "{dhan.base_url}"
auth_url = "{dhan.auth_url}"
pin = "{values["Dhan PIN"]}"
totp_secret = "{values["Dhan TOTP secret"]}"
instruments_path = {json.dumps(str(master))}
[accounts.paper]
broker = "paper"
prices = {{ RELIANCE = 2900.0, INFY = 1500.0 }}
[strategies.momo]
secret = "{values["strategy secret"]}"
path_token = "{values["strategy path token"]}"
accounts = ["paper"]
"""
    )


def outgoing(client: Client, server: ServerProcess, receiver: Receiver, fake: FakeDhan) -> dict[str, bytes]:
    """Everything the server said or sent: responses (headers and bodies), stdout, stderr, notification bodies
    and the bodies of its requests to Dhan (their headers carry the token on purpose)."""
    places = {}
    for n, response in enumerate(client.responses, start=1):
        path = "/webhook/<token>" if response.path.startswith("/webhook/") else response.path
        what = f"response {n} ({response.method} {path}, {response.status})"
        places[f"headers of {what}"] = response.headers
        places[f"body of {what}"] = response.body
    places["stdout"] = "".join(server.stdout_lines).encode()
    places["stderr"] = server.stderr.encode()
    for n, body in enumerate(receiver.bodies, start=1):
        places[f"body of notification {n}"] = body
    for n, request in enumerate(fake.requests, start=1):
        # for the generation call the fake records the query (dhanClientId, pin, totp) as the body
        places[f"body of request {n} to Dhan ({request.method} {request.path})"] = json.dumps(request.body).encode()
    return places


def generated_and_used(fake: FakeDhan, data_dir: Path, dhan_token: str, renewed: str) -> str:
    """The token generated from PIN + TOTP after Dhan dropped the renewed one, checked to have been used: SBIN
    refused once with DH-901, then placed with the new token, which the account stored (0600)."""
    assert len(fake.issued) == 1, fake.issued  # one generation, no RenewToken
    new_token = fake.issued[0]
    assert [o["securityId"] for o in fake.placed()] == ["2885", "1594", "11536", "3045", "3045"]
    assert sorted(o["securityId"] for o in fake.orders.values()) == ["11536", "1594", "2885", "3045"]
    assert [r.path for r in fake.token_calls()] == [GENERATE_PATH]
    assert {r.token for r in fake.requests if r.path != GENERATE_PATH} == {dhan_token, renewed, new_token}
    assert [r.token for r in fake.requests if r.path == "/v2/orders"][-2:] == [renewed, new_token]
    assert token_path(data_dir, "dhan").read_text().strip() == new_token
    assert token_path(data_dir, "dhan").stat().st_mode & 0o777 == 0o600
    return new_token


def sent_on_purpose(places: dict[str, bytes], data_dir: Path) -> dict[str, frozenset[str]]:
    """The places made to hold a secret: the PIN in the generation request (dhanhq sends it in the URL, as Dhan's
    API wants), the generated token in the account's token store (kept there across restarts, mode 0600)."""
    store = f"file {token_path(data_dir, 'dhan').relative_to(data_dir)}"
    generation = frozenset(where for where in places if where.endswith(f"(POST {GENERATE_PATH})"))
    assert len(generation) == 1, generation
    return {
        "Dhan PIN": generation,
        "Dhan token generated from PIN + TOTP": frozenset({store, f"{store} (while running)"}),
    }


SHARED_KEY_KIND: Final = "journal shared secret key"


def postgres_store(request: pytest.FixtureRequest, values: dict[str, str]) -> str:
    """On the PostgreSQL pass: a new database's URL, and a random `shared_secret_key` among the secrets."""
    if os.environ.get("TVBRIDGE_TEST_STORE") != "postgresql":
        return ""
    values[SHARED_KEY_KIND] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()  # a Fernet key
    url: str = request.getfixturevalue("pg_url")
    return url


def database_place(request: pytest.FixtureRequest, database: str) -> dict[str, bytes]:
    """The whole database as a place to search; it must hold the (encrypted) token the leader shares."""
    dump: str = request.getfixturevalue("pg_cluster").dump(database)
    assert "broker_shared" in dump  # the generated token, shared (encrypted) for other instances
    return {"the PostgreSQL database (pg_dump)": dump.encode()}


async def test_no_secret_of_any_kind_leaves_the_server(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Each configured secret appears nowhere it was not sent to on purpose: not in a data file, a response, the
    console output, a notification's text, or an order sent to the broker; nor does a Dhan token renewed on the
    running server (config file + SIGHUP, the documented way), nor the PIN, the TOTP secret or the token they
    generate when Dhan later rejects the running one."""
    values = {kind: _random() for kind in KINDS} | {"Dhan PIN": _pin(), "Dhan TOTP secret": pyotp.random_base32()}
    database = postgres_store(request, values)
    secret, path_token, admin = (values[k] for k in ("webhook secret", "path token", "admin token"))
    dhan_token, renewed = values["Dhan access token"], values["renewed Dhan access token"]
    fake = FakeDhan()
    await fake.start()
    fake.valid_tokens = {dhan_token}
    fake.pin, fake.totp_secret = values["Dhan PIN"], values["Dhan TOTP secret"]
    receiver = Receiver()
    await receiver.start()
    data_dir = tmp_path / "data"
    config = tmp_path / "config.toml"
    write_config(config, values, data_dir=data_dir, dhan=fake, notify_port=receiver.port, database=database)
    server = ServerProcess(tmp_path, {}, ["--config", str(config), "serve"])
    try:
        await asyncio.to_thread(server.start)
        client = Client(server.port)
        ids = await asyncio.to_thread(drive, client, secret, path_token, admin)
        strategy_secret, strategy_token = values["strategy secret"], values["strategy path token"]
        await asyncio.to_thread(drive_strategy, client, strategy_secret, strategy_token, admin)
        await receiver.wait_for(3)  # leg_failed, halted, resumed
        fake.valid_tokens = {renewed}  # the token expired; the operator renews it
        config.write_text(config.read_text().replace(dhan_token, renewed))
        os.kill(int((data_dir / "tvbridge.pid").read_text()), signal.SIGHUP)
        await wait_for_event(server, "broker.reconfigured")
        after = await asyncio.to_thread(client.webhook, alert(leg(symbol="TCS", quantity="1"), secret=secret))
        assert after.status == 200, after.body
        fake.valid_tokens = set()  # Dhan drops the renewed token: the next order gets DH-901, then PIN + TOTP
        generated = await asyncio.to_thread(client.webhook, alert(leg(symbol="SBIN", quantity="1"), secret=secret))
        assert generated.status == 200, generated.body
        places = {f"{where} (while running)": text for where, text in data_files(data_dir).items()}
    finally:
        code = await asyncio.to_thread(server.stop)
        await fake.close()
        await receiver.close()
    assert code == 0, server.stderr

    # the run did what it was meant to: orders reached Dhan with each token, the notifications arrived
    values["Dhan token generated from PIN + TOTP"] = generated_and_used(fake, data_dir, dhan_token, renewed)
    assert len(receiver.bodies) >= 3, receiver.bodies  # held-back ones may follow at shutdown
    assert all(h["X-Api-Key"] == values["notify URL header token"] for h in receiver.headers)
    if database:
        places |= database_place(request, database)
    else:
        assert any(where.startswith("file tvbridge.sqlite3-wal") for where in places), list(places)
    assert len(ids) == 3

    places |= data_files(data_dir) | outgoing(client, server, receiver, fake)
    assert leaks(values, places, sent_on_purpose(places, data_dir)) == []
    guesses = {
        f"a wrong guess at the {kind}": guess
        for kind, value in (
            ("webhook secret", secret),
            ("path token", path_token),
            ("admin token", admin),
            ("strategy secret", values["strategy secret"]),
            ("strategy path token", values["strategy path token"]),
        )
        for guess in near_misses(value)
    }
    assert leaks(guesses, places) == []  # a refusal is logged without what was sent
