"""A leg refused before its send has its refusal committed before the executor goes on (`Executor._journal_refusal`).

A remote account's first leg is journaled `sending` with the alert; if its checks then refuse it (here: the kill
switch set between the alert's commit and the checks, by the test broker while the quantity is sized), the
refusal must not wait for the alert's results, or a crash in between leaves a leg recovery sends once the halt is
lifted (the real `kill -9` of that is in test_crash_recovery.py). These tests see the refusal in the journal while
the alert is still unfinished, the write failing cleanly, and no write at all for a leg that is sent.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest
from helpers import alert, leg, with_accounts
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tvbridge.errors import JournalError
from tvbridge.halt import halt_path, read_halt
from tvbridge.keys import JOURNAL

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.config import Config
    from tvbridge.models import LegResult

REASON = "desk says stop"


def future() -> dict[str, Any]:
    """A NIFTY future leg, stamped now (`meta.timenow`: built per test, never stale)."""
    return leg(symbol="NIFTY", instrument="FUT", productType="M")


def halting(config: Config) -> Config:
    """A remote `scripted` account whose derivative legs are sized through `instrument_info()` (the multiplier),
    which sets the kill switch: after the alert's commit, before the leg's checks."""
    settings = {"broker": "scripted", "quantity_multiplier": 2, "lot_size": 1, "halt_when_sizing": REASON}
    return with_accounts(config, {"sim": settings})


def orders(config: Config) -> list[dict[str, Any]]:
    path = config.data_path("scripted-sim.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def lost(*_args: Any, **_kwargs: Any) -> bool:
    """`record_results` as a crash before the results' commit leaves it: nothing written."""
    return False


async def test_the_refusal_is_committed_without_the_alerts_results(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alert's results are lost (as by a crash before their commit): the journal still has the halted first
    leg `failed` with the halt's reason, not `sending`, so recovery keeps it and never sends it."""
    config = halting(config)
    client = await make_client(config)
    journal = client.app[JOURNAL]
    monkeypatch.setattr(journal, "record_results", lambda *args: asyncio.ensure_future(lost(*args)))
    response = await client.post("/webhook", json=alert(future()))
    assert response.status == 200, await response.text()
    answer = await response.json()
    [result] = answer["results"]
    assert (answer["status"], result["status"]) == ("failed", "failed")
    assert REASON in result["message"]
    halt = read_halt(halt_path(config.server.data_dir))
    assert halt is not None
    assert halt.reason == REASON
    record = await journal.get_alert(answer["alert_id"])
    assert record is not None
    assert record["status"] == "accepted"  # the results were never written
    assert [(leg_["state"], REASON in (leg_["message"] or "")) for leg_ in record["legs"]] == [("failed", True)]
    assert orders(config) == []


async def test_a_refusal_the_journal_cannot_take_is_still_refused_and_says_so(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal's write fails (the journal unwritable): the leg is refused all the same (nothing sent), its
    message says the refusal is not journaled, and one `leg.refusal_unjournaled` error line names it."""
    config = halting(config)
    client = await make_client(config)

    async def refused(*_args: Any, **_kwargs: Any) -> None:
        raise JournalError("journal unwritable")

    monkeypatch.setattr(client.app[JOURNAL], "record_leg", refused)
    with capture_logs(processors=[merge_contextvars]) as logs:
        response = await client.post("/webhook", json=alert(future()))
        assert response.status == 200, await response.text()
        answer = await response.json()
    [result] = answer["results"]
    assert result["status"] == "failed"
    assert result["message"].endswith(
        f"({REASON}): nothing was sent; the refusal could not be journaled: journal unwritable"
    )
    [line] = [e for e in logs if e["event"] == "leg.refusal_unjournaled"]
    assert {k: line[k] for k in ("log_level", "alert_id", "leg", "account", "error")} == {
        "log_level": "error",
        "alert_id": answer["alert_id"],
        "leg": 1,
        "account": "sim",
        "error": "journal unwritable",
    }
    assert orders(config) == []


async def test_a_sent_leg_pays_no_refusal_write(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a refusal costs the extra commit: a leg that is sent writes no refusal."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "quantity_multiplier": 2, "lot_size": 1}})
    client = await make_client(config)
    journal = client.app[JOURNAL]
    written: list[LegResult] = []
    record_leg = journal.record_leg

    async def spy(alert_id: str, result: LegResult) -> None:
        written.append(result)
        await record_leg(alert_id, result)

    monkeypatch.setattr(journal, "record_leg", spy)
    response = await client.post("/webhook", json=alert(future()))
    assert response.status == 200, await response.text()
    assert (await response.json())["status"] == "success"
    assert [o["quantity"] for o in orders(config)] == [20]
    assert written == []
