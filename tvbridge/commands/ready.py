"""`tvbridge ready`: run the pre-open readiness check on the running server now; exit 0 when ready.

It asks the server (`GET /admin/ready` with the admin token), which checks every live account (token, instrument
master, broker reachable, clock, halt switch: `tvbridge/readiness.py`) and records the result for `/status`.
Exit codes: 0 ready, 1 not ready, 2 the server could not be asked. Fit for cron or a systemd timer before the open.
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Final

from tvbridge.commands.status import admin_token, server_url

if TYPE_CHECKING:
    import argparse

    from tvbridge.config import Config

HELP: Final = "check now whether every live account is ready for the open (exit 0 when ready)"
NOT_READY: Final = 503


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("ready", help=HELP, description=HELP)
    parser.add_argument("--url", help="the server's base URL (default: from the config)")
    parser.add_argument("--json", action="store_true", help="the report as JSON")


def fetch(url: str, token: str) -> dict[str, Any]:
    """The report (ready or not); `RuntimeError` with a one-line reason when the server cannot be asked."""
    request = urllib.request.Request(  # noqa: S310 - the operator's own server URL
        url.rstrip("/") + "/admin/ready", headers={"Accept": "application/json", "Authorization": f"Bearer {token}"}
    )
    context = ssl.create_default_context() if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:  # noqa: S310 - same
            report: dict[str, Any] = json.loads(response.read())
            return report
    except urllib.error.HTTPError as e:
        if e.code == NOT_READY:
            not_ready: dict[str, Any] = json.loads(e.read())
            return not_ready
        reason = "the admin token was refused" if e.code == 401 else f"HTTP {e.code}"
        raise RuntimeError(f"{url}: {reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise RuntimeError(f"no answer from {url} ({getattr(e, 'reason', e)}): is tvbridge running?") from None


def render(report: dict[str, Any]) -> str:
    verdict = "READY" if report["ready"] else "NOT READY"
    checked, close = report["checked_at"][:16].replace("T", " "), report["close_at"][11:16]
    lines = [f"{verdict} for the open (checked {checked} IST, close {close})"]
    for account in report["accounts"]:
        for check in account["checks"]:
            mark = "ok " if check["ok"] else "BAD"
            lines.append(f"  {mark} {account['account']:<12} {check['name']:<12} {check['detail']}")
    if not report["accounts"]:
        lines.append("  no live accounts")
    return "\n".join(lines)


def run(args: argparse.Namespace, config: Config) -> int:
    url = args.url or server_url(config)
    try:
        report = fetch(url, admin_token(config))
    except RuntimeError as e:
        print(f"tvbridge: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["ready"] else 1
