"""The JSON log lines a collector ingests: one object per line, ISO UTC timestamps, the alert id bound."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import SECRET, ClientFactory, alert, with_accounts

from tvbridge.config import Config
from tvbridge.logsetup import configure_logging


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """Real logging configuration for one test, undone afterwards."""
    path = tmp_path / "webhook_server.log"
    configure_logging(level="info", fmt="json", file=path, secrets=[SECRET], stream=io.StringIO(), cache=False)
    yield path
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    structlog.reset_defaults()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_every_line_of_a_request_is_json_with_its_alert_id(
    log_file: Path, make_client: ClientFactory, config: Config
) -> None:
    client = await make_client(with_accounts(config, {"s": {"broker": "scripted"}}))
    response = await client.post("/webhook", json=alert())
    alert_id = response.headers["X-Request-ID"]
    request_lines = [line for line in lines(log_file) if line.get("alert_id") == alert_id]
    assert [line["event"] for line in request_lines] == [
        "alert.accepted",
        "leg.done",
        "alert.processed",
        "http.request",
    ]
    for line in request_lines:
        assert line["level"] == "info"
        stamp = datetime.fromisoformat(line["timestamp"])
        assert stamp.utcoffset() is not None
        assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]  # checked just above
    done = request_lines[1]
    assert (done["leg"], done["account"], done["broker"], done["status"]) == (1, "s", "scripted", "success")
    assert isinstance(done["latency_ms"], float)


def test_secrets_are_redacted_by_key_and_by_value(log_file: Path) -> None:
    log = structlog.get_logger()
    log.warning("test.event", secret="abc", access_token="tok", note=f"the secret is {SECRET}", nested={"token": "x"})
    (line,) = [x for x in lines(log_file) if x["event"] == "test.event"]
    assert line["secret"] == "[redacted]"
    assert line["access_token"] == "[redacted]"
    assert line["nested"] == {"token": "[redacted]"}
    assert line["note"] == "the secret is [redacted]"
    assert SECRET not in log_file.read_text()


def test_console_format_for_a_terminal_json_otherwise(tmp_path: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    try:
        tty = Tty()
        configure_logging(level="info", fmt="auto", file=None, stream=tty, cache=False)
        structlog.get_logger().info("server.started", port=1)
        assert not tty.getvalue().startswith("{")
        assert "server.started" in tty.getvalue()
        pipe = io.StringIO()
        configure_logging(level="info", fmt="auto", file=None, stream=pipe, cache=False)
        structlog.get_logger().info("server.started", port=1)
        assert json.loads(pipe.getvalue())["event"] == "server.started"
    finally:
        root = logging.getLogger()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        structlog.reset_defaults()


async def test_a_traceback_never_carries_a_secret(log_file: Path, aiohttp_client: Any) -> None:
    """A bug whose frame holds the secret logs its traceback without frame locals, and redacted."""
    from aiohttp import web  # noqa: PLC0415 - only here

    from tvbridge.middlewares.errors import errors  # noqa: PLC0415 - only here
    from tvbridge.middlewares.request_id import request_id  # noqa: PLC0415 - only here

    async def broken(_: web.Request) -> web.Response:
        expected = SECRET
        raise RuntimeError("boom " + expected[:0])

    app = web.Application(middlewares=[request_id(), errors()])
    app.router.add_post("/x", broken)
    client = await aiohttp_client(app)
    assert (await client.post("/x")).status == 500
    (failed,) = [x for x in lines(log_file) if x["event"] == "request.failed"]
    assert failed["exception"][0]["exc_type"] == "RuntimeError"
    assert SECRET not in log_file.read_text()


def test_plugin_secret_keys_are_redacted_by_name(log_file: Path) -> None:
    """Keys a plugin may use for secrets (client_secret, refresh_token, api_key) are redacted too."""
    structlog.get_logger().info("test.keys", client_secret="a", refresh_token="b", api_key="c", dedupe_key="d")
    (line,) = [x for x in lines(log_file) if x["event"] == "test.keys"]
    assert [line[k] for k in ("client_secret", "refresh_token", "api_key")] == ["[redacted]"] * 3
    assert line["dedupe_key"] == "d"
