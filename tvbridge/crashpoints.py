"""Test-only: die abruptly at a named point of the send path, so crash recovery can be tested for real.

Set `TVBRIDGE_TEST_CRASH_AT=<point>` (or `<point>:<n>` for the n-th time the point is reached) in the
environment of a test server; when the point is reached the process sends itself SIGKILL: no cleanup, no
flush, exactly like `kill -9` or the OOM killer. Unset (always, in production) `crash_point()` is one string
comparison. This is the only place the variable is read; it is documented in `docs/durability.md`.

Points, in the order an alert reaches them:
  in_join        the alert's rows and a joined broker's order (the paper book's, `alerts/joined.py`) are written
                 in the journal's transaction, not committed: after the crash neither exists
  after_record   the alert and its pending legs are committed (with a joined broker's order); no answer sent yet,
                 nothing sent to a remote broker
  after_refusal  a leg refused, before its send (a halt, a risk limit, sizing, capabilities) or by the broker
                 (nothing placed), has its refusal committed (`failed`); the alert's results not journaled yet
  before_send    a leg's `sending` mark is committed; the broker has not been called
  after_send     the broker answered; the leg's result is not journaled yet
  before_finish  every leg is done; the alert's final status is not journaled yet
  before_order_log  every leg is done, no order log row written; for an alert settled in its own commit (a
                 one-leg paper alert: `alerts/joined.py`) the final status IS journaled, marked "row pending"
  after_claim    the closed-market queue's scheduler committed its claim (rows `sending`); nothing handed over
  after_order_log  the legs' order log rows are written; the alert's final status is not journaled yet (or,
                 settled in its own commit, it is, and its "row pending" mark is not cleared yet)
"""

from __future__ import annotations

import os
import signal
from typing import Final

POINTS: Final = frozenset(
    {
        "in_join",
        "after_record",
        "after_refusal",
        "before_send",
        "after_send",
        "before_finish",
        "before_order_log",
        "after_claim",
        "after_order_log",
    }
)
_SETTING: Final = os.environ.get("TVBRIDGE_TEST_CRASH_AT", "")
_POINT, _, _NTH = _SETTING.partition(":")
_HITS: Final[dict[str, int]] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process if the test-only setting names this point (and this is the n-th hit)."""
    if name != _POINT:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    if _HITS[name] >= int(_NTH or "1"):
        os.kill(os.getpid(), signal.SIGKILL)
