"""`tvbridge status`: the status page's summary in the terminal, from the running server.

It asks the server (`GET /status` with `Accept: application/json` and the admin token), so what it prints is
what the page shows: health, halted or not, today's alerts with their legs, open paper positions. The URL comes
from the config (`server.host`, `server.port`, https when `server.tls_cert` is set) unless `--url` is given; the
token from `server.admin_token` or the generated `admin_token.txt`.
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from tvbridge.secretstore import ADMIN_TOKEN_FILE

if TYPE_CHECKING:
    import argparse

    from tvbridge.config import Config

HELP = "print the running server's status: health, today's alerts and their legs, open positions"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help=HELP, description=HELP)
    parser.add_argument("--url", help="the server's base URL (default: from the config)")
    parser.add_argument("--json", action="store_true", help="the summary as JSON")


def server_url(config: Config) -> str:
    host = config.server.host
    host = "127.0.0.1" if host in {"0.0.0.0", "", "::"} else host  # noqa: S104 - reading a bind address
    scheme = "https" if config.server.tls_cert else "http"
    return f"{scheme}://{host}:{config.server.port}"


def admin_token(config: Config) -> str:
    if config.server.admin_token:
        return config.server.admin_token
    try:
        return config.data_path(ADMIN_TOKEN_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def fetch(url: str, token: str) -> dict[str, Any]:
    """The summary; `RuntimeError` with a one-line reason when the server cannot be asked."""
    request = urllib.request.Request(  # noqa: S310 - the operator's own server URL
        url.rstrip("/") + "/status", headers={"Accept": "application/json", "Authorization": f"Bearer {token}"}
    )
    context = ssl.create_default_context() if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310 - same
            summary: dict[str, Any] = json.loads(response.read())
            return summary
    except urllib.error.HTTPError as e:
        reason = "the admin token was refused" if e.code == 401 else f"HTTP {e.code}"
        raise RuntimeError(f"{url}: {reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise RuntimeError(f"no answer from {url} ({getattr(e, 'reason', e)}): is tvbridge running?") from None


def render(summary: dict[str, Any], url: str) -> str:
    server = summary["server"]
    state = [
        "accepting alerts" if server["accepting"] else "SHUTTING DOWN",
        "HALTED" if server["halted"] else "not halted",
        "journal ok" if server["journal_ok"] else "JOURNAL FAILING",
        f"up since {server['started_at'][:19]}Z",
    ]
    lines = [f"tvbridge {server['version']} at {url}: " + " · ".join(state), "", "Market (IST):"]
    for m in summary.get("market", []):
        when = f"  next open {m['next_open'][:16].replace('T', ' ')}" if m["next_open"] else ""
        lines.append(f"  {m['exchange']:<5} {m['phase']:<9} {m['reason']}{when}")
    lines += ["", "Brokers:"]
    lines += [
        f"  {b['account']:<12} {'ok' if b['ok'] else 'DOWN'}" + (f"  {b['detail']}" if b["detail"] else "")
        for b in summary["brokers"]
    ]
    lines += [
        f"  {t['account']:<12} token expires {(t['expires_at'] or 'at an unknown time')[:16].replace('T', ' ')}"
        for t in summary.get("tokens", [])
    ]
    if (ready := summary.get("readiness")) is not None:
        problems = [f"{a['account']} {c['name']}" for a in ready["accounts"] for c in a["checks"] if not c["ok"]]
        verdict = "READY" if ready["ready"] else "NOT READY: " + ", ".join(problems)
        lines += ["", f"Pre-open readiness ({ready['checked_at'][:16].replace('T', ' ')} IST): {verdict}"]
    lines += ["", f"Today's alerts ({len(summary['alerts'])}):"]
    for alert in summary["alerts"]:
        legs = "; ".join(
            f"{leg['account']} #{leg['leg']} {leg['transaction']} {leg['quantity']} {leg['symbol']}: {leg['state']}"
            + (f" ({leg['order_id']})" if leg["order_id"] else "")
            for leg in alert["legs"]
        )
        when, kind = alert["received_at"][11:19], alert["alert_type"]
        shown = legs or alert.get("reason", "")  # a refused alert has no legs: why it was refused
        lines.append(f"  {when}  {alert['alert_id']}  {kind:<16} {alert['status']:<9} {shown}")
    if not summary["alerts"]:
        lines.append("  none")
    lines += ["", "Open positions:"]
    lines += [
        f"  {p['account']:<12} {p['exchange']} {p['symbol']:<14} {p['net_quantity']:>8}"
        f"  avg {p['average_price'] or '-'}"
        for p in summary["positions"]
    ] or ["  none"]
    return "\n".join(lines)


def run(args: argparse.Namespace, config: Config) -> int:
    url = args.url or server_url(config)
    try:
        summary = fetch(url, admin_token(config))
    except RuntimeError as e:
        print(f"tvbridge: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2) if args.json else render(summary, url))
    return 0
